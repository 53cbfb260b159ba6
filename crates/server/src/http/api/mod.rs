//! The server API, as Centrifugo's: `POST /api/<method>` with a JSON body and the key in
//! `X-API-Key` (or `Authorization: apikey <key>`); answers `{"result": {...}}`. The gRPC
//! API (`grpc/`) calls the same [`dispatch`]: one implementation of every method.
//!
//! Order of checks, so that a caller without the key costs next to nothing: the key is
//! checked from the headers before a byte of the body is read (a wrong key is answered
//! 401 at once and the connection closed by hyper, the body unread); then a slot among
//! `api_max_in_flight` calls is taken (503 when none is free); then the body is read
//! within `api_body_timeout_secs` (408) and `API_MAX_BODY` bytes (413). Replies are
//! serialized straight from the stored raw JSON (never through `serde_json::Value`, which
//! would parse it again), and CPU-heavy work (the `channels` pattern scan) runs on the
//! blocking pool, off the runtime's workers.
//!
//! - `mod.rs` (this file): keys, slots, body limits, the method table;
//! - `publish.rs`: `publish`, `broadcast`;
//! - `users.rs`: what acts on a user's connections (`subscribe`, `unsubscribe`,
//!   `disconnect`, `refresh`), on every node through the bus;
//! - `reads.rs`: `history`, `presence`, `presence_stats`, `channels`, `info`;
//! - `batch.rs`: `batch`, several of the above in one call.
//!
//! Request bodies: fields roomcast does not know are ignored, as Centrifugo does (its API
//! grows fields every release). Fields it knows and does not act on are listed in the
//! README ("Server API") with the reason.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::node::Node;

mod batch;
mod publish;
mod reads;
mod users;

/// Largest request body of a server API call (HTTP and gRPC alike).
pub const API_MAX_BODY: usize = 2 << 20;

/// What the API routes share: the node, and the slots of calls in flight.
#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
    /// `api_max_in_flight` permits: one per call reading its body or working, HTTP and
    /// gRPC together.
    slots: Arc<Semaphore>,
}

impl Api {
    pub fn new(node: Arc<Node>) -> Api {
        let slots = Arc::new(Semaphore::new(node.config.api_max_in_flight));
        Api { node, slots }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// A slot for one call, or `Busy` when `api_max_in_flight` are running.
    pub fn slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy)
    }

    /// Whether `given` is the API key (none configured: nothing is).
    pub fn is_key(&self, given: &str) -> bool {
        self.node
            .config
            .api_key
            .as_deref()
            .is_some_and(|key| same_secret(given, key))
    }
}

/// The serialized JSON of a method's result (what goes under `"result"`).
#[derive(Debug)]
pub struct Answer(pub Vec<u8>);

impl Answer {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A method's result, serialized once (raw JSON in it is copied, not parsed).
pub(in crate::http) fn ok<T: Serialize>(result: T) -> Answer {
    Answer(serde_json::to_vec(&result).expect("API results serialize"))
}

pub(in crate::http) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))
}

/// The API key of an HTTP request: `X-API-Key`, or `Authorization: apikey <key>`.
fn given_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("apikey "))
        })
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

pub async fn call(
    State(api): State<Api>,
    Path(method): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    // The key first: nothing of the body is read for a caller without it.
    if !given_key(req.headers()).is_some_and(|k| api.is_key(k)) {
        return Err(ApiError::Unauthorized);
    }
    let _slot = api.slot()?;
    let node = api.node;
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
    let answer = dispatch(&node, &method, &body).await?;
    let out = if method == "batch" {
        // As Centrifugo answers a batch: `{"replies": [...]}`, not under "result".
        answer.0
    } else {
        // `{"result": ...}` around the serialized result, without parsing it again.
        let mut out = Vec::with_capacity(answer.0.len() + 11);
        out.extend_from_slice(b"{\"result\":");
        out.extend_from_slice(&answer.0);
        out.push(b'}');
        out
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(out),
    )
        .into_response())
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

/// Runs one server API method on a JSON body: every method but `batch`, which runs
/// several of these.
pub async fn dispatch(node: &Arc<Node>, method: &str, body: &[u8]) -> Result<Answer, ApiError> {
    if method == "batch" {
        return batch::run(node, body).await;
    }
    run_one(node, method, body).await
}

/// Every method but `batch`.
async fn run_one(node: &Arc<Node>, method: &str, body: &[u8]) -> Result<Answer, ApiError> {
    match method {
        "publish" => publish::publish(node, parse(body)?).await,
        "broadcast" => publish::broadcast(node, parse(body)?).await,
        "subscribe" => users::subscribe(node, parse(body)?).await,
        "unsubscribe" => users::unsubscribe(node, parse(body)?).await,
        "disconnect" => users::disconnect(node, parse(body)?).await,
        "refresh" => users::refresh(node, parse(body)?).await,
        "history" => reads::history(node, parse(body)?).await,
        "presence" => reads::presence(node, parse(body)?).await,
        "presence_stats" => reads::presence_stats(node, parse(body)?).await,
        "channels" => reads::channels(node, parse(body)?).await,
        "info" => reads::info(node, parse(body)?).await,
        m if super::personal::METHODS.contains(&m) => super::personal::run(node, m, body).await,
        "connections" => super::connections::run(node, body).await,
        m if super::history::METHODS.contains(&m) => super::history::run(node, m, body).await,
        other => match super::chat::run(node, other, body).await {
            Some(r) => r,
            None => Err(ApiError::UnknownMethod(other.to_owned())),
        },
    }
}

/// A user or client id, or an idempotency key, given as `""` means "not given" (gRPC has
/// no absent strings).
pub(in crate::http) fn given(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// JSON given as is, or in base64 (`field` names the latter in errors).
pub(super) fn json_or_b64(
    json: Option<Box<RawValue>>,
    b64: Option<&str>,
    field: &str,
) -> Result<Option<Box<RawValue>>, ApiError> {
    match (json, b64) {
        (Some(j), _) => Ok(Some(j)),
        (None, Some(b)) if !b.is_empty() => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| ApiError::BadBody(format!("{field}: not base64: {e}")))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| ApiError::BadBody(format!("{field}: not UTF-8 JSON")))?;
            RawValue::from_string(text)
                .map(Some)
                .map_err(|e| ApiError::BadBody(format!("{field}: roomcast keeps JSON: {e}")))
        }
        _ => Ok(None),
    }
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
