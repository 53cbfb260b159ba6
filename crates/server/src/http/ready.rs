//! `/health` and `/ready`: what a load balancer or an orchestrator asks a node.
//!
//! - `GET /health`: the process is up and serving HTTP (always `200 ok` when it answers).
//! - `GET /ready`: the node can serve new connections now: not draining, its store takes
//!   writes (the writer runs and the database answers as writable), and in a cluster the
//!   bus carries this node's own probe (back within the last 1.8 s) and presence answers
//!   Redis's PING. `200 {"ready":true}` or `503 {"ready":false,"problems":[...]}`, each
//!   problem a short reason; every check is bounded by `CHECK_TIMEOUT`, so the answer
//!   comes within about a second whatever is down.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::time::timeout;

use crate::node::Node;

/// Longest wait for one check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) async fn health() -> &'static str {
    "ok"
}

pub(super) async fn ready(State(node): State<Arc<Node>>) -> Response {
    let problems = problems(&node).await;
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": problems.is_empty(), "problems": problems})),
    )
        .into_response()
}

/// Why the node cannot serve now; empty when it can.
pub async fn problems(node: &Node) -> Vec<String> {
    let mut problems = Vec::new();
    if node.shutdown.is_cancelled() {
        problems.push("draining: the node is shutting down".to_owned());
    }
    let (store, presence) = tokio::join!(
        timeout(CHECK_TIMEOUT, node.store.ready()),
        timeout(CHECK_TIMEOUT, node.presence.ready()),
    );
    match store {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("store: {e}")),
        Err(_) => problems.push("store: no answer within 1 s".to_owned()),
    }
    match presence {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(e),
        Err(_) => problems.push("presence: no answer within 1 s".to_owned()),
    }
    if let Err(e) = node.bus.ready() {
        problems.push(format!("bus: {e}"));
    }
    problems
}
