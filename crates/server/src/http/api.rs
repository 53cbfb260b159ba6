//! The server HTTP API, as Centrifugo's: `POST /api/<method>` with a JSON body and the
//! key in `X-API-Key` (or `Authorization: apikey <key>`); answers `{"result": {...}}`.
//!
//! Order of checks, so that a caller without the key costs next to nothing: the key is
//! checked from the headers before a byte of the body is read (a wrong key is answered
//! 401 at once and the connection closed by hyper, the body unread); then a slot among
//! `api_max_in_flight` calls is taken (503 when none is free); then the body is read
//! within `api_body_timeout_secs` (408) and `API_MAX_BODY` bytes (413). Replies are
//! serialized straight from the stored raw JSON (never through `serde_json::Value`, which
//! would parse it again), and CPU-heavy work (the `channels` pattern scan) runs on the
//! blocking pool, off the runtime's workers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use roomcast_proto::{Disconnect, ErrorCode, HistoryResult, PresenceResult, StreamPosition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::bus::UserOp;
use crate::channel::{glob, Channel, MAX_PATTERN_LEN};
use crate::node::{internal, Node};
use crate::presence::Members;

/// Largest request body of a server API call.
pub const API_MAX_BODY: usize = 2 << 20;

/// What the API routes share: the node, and the slots of calls in flight.
#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
    /// `api_max_in_flight` permits: one per call reading its body or working.
    slots: Arc<Semaphore>,
}

impl Api {
    pub fn new(node: Arc<Node>) -> Api {
        let slots = Arc::new(Semaphore::new(node.config.api_max_in_flight));
        Api { node, slots }
    }
}

// Request bodies: fields roomcast does not know are ignored, as Centrifugo does (its API
// grows fields every release). Fields it knows and does not act on are listed in the
// README ("Server API") with the reason.

#[derive(Deserialize)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct BroadcastBody {
    channels: Vec<String>,
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct ChannelBody {
    channel: String,
}

#[derive(Deserialize)]
struct HistoryBody {
    channel: String,
    #[serde(default)]
    limit: i64,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize, Default)]
struct ChannelsBody {
    #[serde(default)]
    pattern: String,
}

#[derive(Deserialize)]
struct DisconnectCode {
    code: u16,
    reason: String,
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    disconnect: Option<DisconnectCode>,
    /// Client ids of the user to leave connected.
    #[serde(default)]
    whitelist: Vec<String>,
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    user: String,
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

fn authorized(node: &Node, headers: &HeaderMap) -> bool {
    let Some(key) = node.config.api_key.as_deref() else {
        return false;
    };
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("apikey "))
        });
    given.is_some_and(|g| same_secret(g, key))
}

/// Constant-time comparison of a secret, its length included: the SHA-256 digests of both
/// (fixed size whatever was sent) are compared byte for byte without an early exit.
fn same_secret(given: &str, key: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(key));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))
}

/// `{"result": ...}`, serialized straight from `result` (raw JSON is copied, not parsed).
#[derive(Serialize)]
struct Reply<T> {
    result: T,
}

pub(super) fn ok<T: Serialize>(result: T) -> Response {
    Json(Reply { result }).into_response()
}

fn check_data(node: &Node, data: &RawValue) -> Result<(), ApiError> {
    node.check_data(data)
        .map_err(|e| ApiError::BadBody(format!("data: {e}")))
}

pub async fn call(
    State(api): State<Api>,
    Path(method): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let node = api.node;
    // The key first: nothing of the body is read for a caller without it.
    if !authorized(&node, req.headers()) {
        return Err(ApiError::Unauthorized);
    }
    let _slot = api.slots.try_acquire_owned().map_err(|_| ApiError::Busy)?;
    let timeout = Duration::from_secs(node.config.api_body_timeout_secs);
    let body =
        match tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), API_MAX_BODY))
            .await
        {
            Err(_) => return Err(ApiError::BodyTimeout),
            Ok(Err(e)) => {
                return Err(if is_too_large(&e) {
                    ApiError::BodyTooLarge(API_MAX_BODY)
                } else {
                    ApiError::BadBody(e.to_string())
                })
            }
            Ok(Ok(b)) => b,
        };
    run(&node, &method, &body).await
}

/// Whether reading the body failed on the size limit (rather than the connection).
fn is_too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A publish result: the offset and epoch, or `{}` for an ephemeral room (not stored).
fn publish_result(r: &crate::store::Appended) -> Value {
    if r.offset == 0 {
        json!({})
    } else {
        json!({ "offset": r.offset, "epoch": r.epoch })
    }
}

async fn run(node: &Arc<Node>, method: &str, body: &Bytes) -> Result<Response, ApiError> {
    match method {
        "publish" => {
            let b: PublishBody = parse(body)?;
            let channel = Channel::resolve(&node.config, &b.channel)?;
            check_data(node, &b.data)?;
            node.check_room_rate(&b.channel, channel.options)?;
            let r = node
                .publish(&b.channel, b.data, None, b.idempotency_key)
                .await
                .map_err(internal)?;
            Ok(ok(publish_result(&r)))
        }
        "broadcast" => {
            let b: BroadcastBody = parse(body)?;
            check_data(node, &b.data)?;
            let mut responses = Vec::with_capacity(b.channels.len());
            for channel in &b.channels {
                let allowed = Channel::resolve(&node.config, channel)
                    .and_then(|c| node.check_room_rate(channel, c.options));
                let r = match allowed {
                    Err(e) => json!({ "error": { "code": e.code, "message": e.message } }),
                    Ok(()) => match node
                        .publish(channel, b.data.clone(), None, b.idempotency_key.clone())
                        .await
                    {
                        Ok(r) => json!({ "result": publish_result(&r) }),
                        Err(e) => {
                            let e = internal(e);
                            json!({ "error": { "code": e.code, "message": e.message } })
                        }
                    },
                };
                responses.push(r);
            }
            Ok(ok(json!({ "responses": responses })))
        }
        "history" => {
            let b: HistoryBody = parse(body)?;
            Channel::resolve(&node.config, &b.channel)?;
            let (msgs, pos) = node
                .history(&b.channel, b.limit, b.since.as_ref(), b.reverse)
                .await?;
            Ok(ok(HistoryResult {
                publications: msgs
                    .iter()
                    .map(super::super::store::Message::publication)
                    .collect(),
                epoch: pos.epoch,
                offset: pos.offset,
            }))
        }
        "presence" | "presence_stats" => {
            let b: ChannelBody = parse(body)?;
            let channel = Channel::resolve(&node.config, &b.channel)?;
            if !channel.options.presence {
                return Err(ErrorCode::NOT_AVAILABLE.into());
            }
            if method == "presence" {
                let max = channel.options.presence_max_entries;
                match node.presence.get(&b.channel, max).await {
                    Members::Listed(presence) => Ok(ok(PresenceResult { presence })),
                    Members::TooMany { clients } => Err(ApiError::RefusedWith(
                        ErrorCode::LIMIT_EXCEEDED,
                        format!(
                            "{clients} clients, more than presence_max_entries ({max}): use presence_stats"
                        ),
                    )),
                }
            } else {
                let (clients, users) = node.presence.stats(&b.channel).await;
                Ok(ok(json!({ "num_clients": clients, "num_users": users })))
            }
        }
        "channels" => {
            let b: ChannelsBody = parse(body)?;
            if b.pattern.len() > MAX_PATTERN_LEN {
                return Err(ApiError::RefusedWith(
                    ErrorCode::BAD_REQUEST,
                    format!("pattern longer than {MAX_PATTERN_LEN} bytes"),
                ));
            }
            // Cluster-wide when the bus knows other nodes, else this node's hub.
            let counts = match node.bus.channels().await {
                Some(all) => all.into_iter().collect::<Vec<_>>(),
                None => node
                    .hub
                    .channels()
                    .into_iter()
                    .map(|(name, n)| (name, n as u64))
                    .collect(),
            };
            // Matching is O(pattern x name) per channel: over many channels that is CPU
            // work, done on the blocking pool so WebSocket pings and other calls go on.
            // Personal channels (one per connected user) are not listed: rooms are.
            let pattern = b.pattern;
            let personal = node.config.personal_channels();
            let channels = tokio::task::spawn_blocking(move || {
                counts
                    .into_iter()
                    .filter(|(name, _)| personal.user_of(name).is_none())
                    .filter(|(name, _)| pattern.is_empty() || glob(&pattern, name))
                    .map(|(name, n)| (name, json!({ "num_clients": n })))
                    .collect::<HashMap<_, _>>()
            })
            .await
            .map_err(|_| ErrorCode::INTERNAL)?;
            Ok(ok(json!({ "channels": channels })))
        }
        "info" => {
            parse::<Value>(body)?;
            let nodes = node.bus.nodes().await;
            if !nodes.is_empty() {
                return Ok(ok(json!({ "nodes": nodes })));
            }
            let (clients, users) = node.hub.counts();
            Ok(ok(json!({ "nodes": [{
                "uid": node.id,
                "name": node.id,
                "version": crate::VERSION,
                "num_clients": clients,
                "num_users": users,
                "num_channels": node.hub.channels().len(),
                "uptime": node.started.elapsed().as_secs(),
            }] })))
        }
        "disconnect" => {
            let b: DisconnectBody = parse(body)?;
            let why = match &b.disconnect {
                None => Disconnect::FORCE_NO_RECONNECT,
                Some(d) => custom_disconnect(d)?,
            };
            // Every node applies it to its connections of the user.
            node.bus
                .user_op(UserOp::Disconnect {
                    user: b.user,
                    client: b.client,
                    keep: b.whitelist,
                    why,
                })
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "disconnect not sent to the cluster");
                    ErrorCode::INTERNAL
                })?;
            Ok(ok(json!({})))
        }
        "unsubscribe" => {
            let b: UnsubscribeBody = parse(body)?;
            Channel::resolve(&node.config, &b.channel)?;
            node.bus
                .user_op(UserOp::Unsubscribe {
                    user: b.user,
                    channel: b.channel,
                    client: b.client,
                })
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "unsubscribe not sent to the cluster");
                    ErrorCode::INTERNAL
                })?;
            Ok(ok(json!({})))
        }
        m if super::personal::METHODS.contains(&m) => super::personal::run(node, m, body).await,
        m if super::history::METHODS.contains(&m) => super::history::run(node, m, body).await,
        other => match super::chat::run(node, other, body).await {
            Some(r) => r,
            None => Err(ApiError::UnknownMethod(other.to_owned())),
        },
    }
}

/// A disconnect code given through the API: one the protocol defines for operators (its
/// reason is the protocol's); any other code is refused.
fn custom_disconnect(d: &DisconnectCode) -> Result<Disconnect, ApiError> {
    Disconnect::operator(d.code).ok_or_else(|| {
        let known: Vec<String> = Disconnect::OPERATOR
            .iter()
            .map(|k| k.code.to_string())
            .collect();
        ApiError::RefusedWith(
            ErrorCode::BAD_REQUEST,
            format!(
                "disconnect code {} ({}) is not one roomcast sends; use one of {}",
                d.code,
                d.reason,
                known.join(", ")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_by_digest() {
        assert!(same_secret("key", "key"));
        assert!(!same_secret("key", "kez"));
        assert!(!same_secret("ke", "key"));
        assert!(!same_secret("", "key"));
    }
}
