//! The router: events of personal channels (`personal/`) go to the nodes that hold the
//! user's connections, on those nodes' own channels, never on a broker channel per user
//! (see `ingest/mod.rs`).
//!
//! It takes what is queued (up to `PIPELINE` events), finds every user's nodes in one
//! directory lookup per user (pipelined: one round trip for the batch), and queues one
//! envelope per (event, node) for the publisher, in the order received: each receiving
//! node sees a user's publications in commit order, and its reorder holds or fills any
//! gap as for a room. This node's own subscribers got the events already, through the
//! receiver. When the lookup fails the batch is not sent: the store has it, and the
//! users' other nodes read it on their next gap, resync or reconnect.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Queued, Shared, PIPELINE};
use crate::bus::broker::{Channel, Outgoing};
use crate::bus::envelope::Envelope;
use crate::hub::RoomEvent;
use crate::personal::{Directory, PersonalChannels};

/// What the cluster bus needs to route personal channels.
#[derive(Clone)]
pub struct Personal {
    pub channels: PersonalChannels,
    pub directory: Arc<dyn Directory>,
}

pub(super) async fn run(
    shared: Arc<Shared>,
    directory: Arc<dyn Directory>,
    channels: PersonalChannels,
    mut rx: mpsc::Receiver<RoomEvent>,
    out: mpsc::Sender<Queued>,
    stop: CancellationToken,
) {
    let mut batch: Vec<RoomEvent> = Vec::with_capacity(PIPELINE);
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            e = rx.recv() => match e { Some(e) => e, None => return },
        };
        batch.push(first);
        while batch.len() < PIPELINE {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut users: Vec<String> = batch
            .iter()
            .filter_map(|e| channels.user_of(e.room()).map(str::to_owned))
            .collect();
        users.sort_unstable();
        users.dedup();
        let nodes: HashMap<String, Vec<String>> = match directory.lookup(&users).await {
            Ok(entries) => users
                .into_iter()
                .zip(entries)
                .map(|(u, e)| (u, e.nodes))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "personal routing lookup failed");
                shared.dropped.fetch_add(batch.len() as u64, Relaxed);
                shared.routing.fetch_sub(batch.len() as u64, Relaxed);
                batch.clear();
                continue;
            }
        };
        let routed = batch.len() as u64;
        for e in batch.drain(..) {
            let Some(targets) = channels.user_of(e.room()).and_then(|u| nodes.get(u)) else {
                continue;
            };
            let mut payload = None;
            for node in targets.iter().filter(|n| **n != shared.node) {
                let payload = payload
                    .get_or_insert_with(|| Envelope::from_event(&shared.node, &e).encode())
                    .clone();
                let item = Queued {
                    out: Outgoing {
                        channel: Channel::Node(node.as_str().into()),
                        payload,
                    },
                    offset: None,
                    flushed: None,
                };
                if out.send(item).await.is_err() {
                    return;
                }
            }
        }
        shared.routing.fetch_sub(routed, Relaxed);
    }
}
