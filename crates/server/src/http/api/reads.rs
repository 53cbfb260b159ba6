//! The API's reads: `history`, `presence`, `presence_stats`, `channels`, `info`. Each
//! is bounded as the client protocol's are (`history_max_limit` and `history_max_bytes`,
//! `presence_max_entries`, `MAX_PATTERN_LEN`).

use std::collections::HashMap;
use std::sync::Arc;

use roomcast_proto::{ErrorCode, HistoryResult, PresenceResult, StreamPosition};
use serde::Deserialize;
use serde_json::json;

use super::{ok, Answer};
use crate::channel::{glob, Channel, MAX_PATTERN_LEN};
use crate::http::error::ApiError;
use crate::node::Node;
use crate::presence::Members;

#[derive(Deserialize)]
pub(super) struct ChannelBody {
    channel: String,
}

#[derive(Deserialize)]
pub(super) struct HistoryBody {
    channel: String,
    #[serde(default)]
    limit: i64,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize, Default)]
pub(super) struct ChannelsBody {
    #[serde(default)]
    pattern: String,
}

/// `info` takes no fields (any given are ignored).
#[derive(Deserialize, Default)]
pub(super) struct InfoBody {}

pub(super) async fn history(node: &Arc<Node>, b: HistoryBody) -> Result<Answer, ApiError> {
    Channel::resolve(&node.config, &b.channel)?;
    let (msgs, pos) = node
        .history(&b.channel, b.limit, b.since.as_ref(), b.reverse)
        .await?;
    Ok(ok(HistoryResult {
        publications: msgs
            .iter()
            .map(crate::store::Message::publication)
            .collect(),
        epoch: pos.epoch,
        offset: pos.offset,
    }))
}

/// The channel's `presence_max_entries`, if its namespace tracks presence.
fn presence_max(node: &Node, channel: &str) -> Result<usize, ApiError> {
    let options = Channel::resolve(&node.config, channel)?.options;
    if !options.presence {
        return Err(ErrorCode::NOT_AVAILABLE.into());
    }
    Ok(options.presence_max_entries)
}

pub(super) async fn presence(node: &Arc<Node>, b: ChannelBody) -> Result<Answer, ApiError> {
    let max = presence_max(node, &b.channel)?;
    match node.presence.get(&b.channel, max).await {
        Members::Listed(presence) => Ok(ok(PresenceResult { presence })),
        Members::TooMany { clients } => Err(ApiError::RefusedWith(
            ErrorCode::LIMIT_EXCEEDED,
            format!(
                "{clients} clients, more than presence_max_entries ({max}): use presence_stats"
            ),
        )),
    }
}

pub(super) async fn presence_stats(node: &Arc<Node>, b: ChannelBody) -> Result<Answer, ApiError> {
    presence_max(node, &b.channel)?;
    let (clients, users) = node.presence.stats(&b.channel).await;
    Ok(ok(json!({ "num_clients": clients, "num_users": users })))
}

pub(super) async fn channels(node: &Arc<Node>, b: ChannelsBody) -> Result<Answer, ApiError> {
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
    // Matching is O(pattern x name) per channel: over many channels that is CPU work,
    // done on the blocking pool so WebSocket pings and other calls go on. Personal
    // channels (one per connected user) are not listed: rooms are.
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

pub(super) async fn info(node: &Arc<Node>, _: InfoBody) -> Result<Answer, ApiError> {
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
