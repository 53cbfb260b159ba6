//! HTTP surface of a node: the WebSocket endpoint, the server API and a health check.

use std::sync::Arc;

use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::{any, get, post};
use axum::Router;

use crate::node::Node;

pub mod api;
pub mod error;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/connection/websocket", any(websocket))
        .route("/api/{method}", post(api::call))
        .route("/health", get(|| async { "ok" }))
        .with_state(node)
}

async fn websocket(State(node): State<Arc<Node>>, ws: WebSocketUpgrade) -> Response {
    // The upgraded connection runs in a task axum spawns; the tracker token keeps the
    // node's drain waiting for it.
    let token = node.tasks.token();
    let max = node.config.max_message_size;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            let _token = token;
            crate::gateway::serve(node, socket).await;
        })
}
