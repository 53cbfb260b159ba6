//! The server HTTP API, as Centrifugo's: `POST /api/<method>` with a JSON body and the
//! key in `X-API-Key` (or `Authorization: apikey <key>`); answers `{"result": {...}}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use roomcast_proto::{Disconnect, ErrorCode, StreamPosition};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::bus::UserOp;
use crate::channel::Channel;
use crate::node::{internal, Node};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: String,
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    channels: Vec<String>,
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    disconnect: Option<DisconnectCode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    // Constant-time comparison: the key is a secret.
    given.is_some_and(|g| {
        g.len() == key.len()
            && g.bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))
}

fn ok(result: Value) -> Json<Value> {
    Json(json!({ "result": result }))
}

pub async fn call(
    State(node): State<Arc<Node>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if !authorized(&node, &headers) {
        return Err(ApiError::Unauthorized);
    }
    match method.as_str() {
        "publish" => {
            let b: PublishBody = parse(&body)?;
            let channel = Channel::resolve(&node.config, &b.channel)?;
            node.check_room_rate(&b.channel, channel.options)?;
            let r = node
                .publish(&b.channel, b.data, None, b.idempotency_key)
                .await
                .map_err(internal)?;
            Ok(ok(json!({ "offset": r.offset, "epoch": r.epoch })))
        }
        "broadcast" => {
            let b: BroadcastBody = parse(&body)?;
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
                        Ok(r) => json!({ "result": { "offset": r.offset, "epoch": r.epoch } }),
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
            let b: HistoryBody = parse(&body)?;
            Channel::resolve(&node.config, &b.channel)?;
            let (msgs, pos) = node
                .history(&b.channel, b.limit, b.since.as_ref(), b.reverse)
                .await?;
            let pubs: Vec<_> = msgs.iter().map(|m| m.publication()).collect();
            Ok(ok(
                json!({ "publications": pubs, "offset": pos.offset, "epoch": pos.epoch }),
            ))
        }
        "presence" | "presence_stats" => {
            let b: ChannelBody = parse(&body)?;
            let channel = Channel::resolve(&node.config, &b.channel)?;
            if !channel.options.presence {
                return Err(ErrorCode::NOT_AVAILABLE.into());
            }
            if method == "presence" {
                Ok(ok(
                    json!({ "presence": node.presence.get(&b.channel).await }),
                ))
            } else {
                let (clients, users) = node.presence.stats(&b.channel).await;
                Ok(ok(json!({ "num_clients": clients, "num_users": users })))
            }
        }
        "channels" => {
            let b: ChannelsBody = parse(&body)?;
            let mut channels = HashMap::new();
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
            for (name, n) in counts {
                if b.pattern.is_empty() || glob(&b.pattern, &name) {
                    channels.insert(name, json!({ "num_clients": n }));
                }
            }
            Ok(ok(json!({ "channels": channels })))
        }
        "info" => {
            parse::<Value>(&body)?;
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
            let b: DisconnectBody = parse(&body)?;
            let why = match &b.disconnect {
                None => Disconnect::FORCE_NO_RECONNECT,
                Some(d) => custom_disconnect(d)?,
            };
            // Every node applies it to its connections of the user.
            node.bus
                .user_op(UserOp::Disconnect {
                    user: b.user,
                    client: b.client,
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
            let b: UnsubscribeBody = parse(&body)?;
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
        other => Err(ApiError::UnknownMethod(other.to_owned())),
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

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len()).any(|i| {
                    name.is_char_boundary(head.len() + i) && glob(rest, &name[head.len() + i..])
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_patterns() {
        assert!(glob("chat:*", "chat:1"));
        assert!(glob("*", "x"));
        assert!(glob("a*c", "abbc"));
        assert!(!glob("a*c", "abb"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exac"));
    }
}
