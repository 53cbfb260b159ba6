//! The server API's `connections` method (Centrifugo PRO has one of the name; roomcast's
//! is smaller): a user's connections, for the admin page's "look up a user" and for
//! operators deciding whom to `disconnect`.
//!
//! `{"user": "alice"}` -> `{"user", "nodes": [node ids], "connections": [{"client",
//! "node", "queued_bytes"}]}`: `nodes` are every node of the cluster holding a connection
//! of the user (the user directory: Redis in a cluster), `connections` those on the node
//! that answers (client ids are known where the connection lives; ask another node's API
//! for its own). At most `MAX_LISTED` connections are listed (`max_connections_per_user`
//! bounds them anyway); `truncated` says when there were more.

use serde::{Deserialize, Serialize};

use super::api::{ok, parse, Answer};
use super::error::ApiError;
use crate::node::Node;

/// Most connections one reply lists.
const MAX_LISTED: usize = 1000;

#[derive(Deserialize)]
struct ConnectionsBody {
    user: String,
}

#[derive(Serialize)]
struct Connection {
    client: String,
    node: String,
    /// Bytes queued for the connection, not yet taken by its socket.
    queued_bytes: usize,
}

#[derive(Serialize)]
struct ConnectionsResult {
    user: String,
    nodes: Vec<String>,
    connections: Vec<Connection>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

pub(super) async fn run(node: &Node, body: &[u8]) -> Result<Answer, ApiError> {
    let b: ConnectionsBody = parse(body)?;
    crate::personal::check_user(&b.user)?;
    let mut nodes = node
        .directory
        .lookup(std::slice::from_ref(&b.user))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "connections: user directory lookup failed");
            roomcast_proto::ErrorCode::INTERNAL
        })?
        .pop()
        .map(|e| e.nodes)
        .unwrap_or_default();
    nodes.sort();
    let local = node.hub.user_conns(&b.user);
    let truncated = local.len() > MAX_LISTED;
    let mut connections: Vec<Connection> = local
        .into_iter()
        .take(MAX_LISTED)
        .map(|c| Connection {
            client: c.client.to_string(),
            node: node.id.clone(),
            queued_bytes: c.outbox.queued_bytes(),
        })
        .collect();
    connections.sort_by(|a, b| a.client.cmp(&b.client));
    Ok(ok(ConnectionsResult {
        user: b.user,
        nodes,
        connections,
        truncated,
    }))
}
