//! The heartbeat: liveness probes, heartbeats on the control channel, the node list and
//! this node's registry entry (see `ingest/mod.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Inbound, Queued, Shared};
use crate::bus::broker::Channel;
use crate::bus::envelope::Envelope;

/// Probe period (the subscriber presumes a stall after `subscriber::STALL` of silence).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Heartbeat period; a node unheard of for `NODE_TTL` is gone from the node list.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const NODE_TTL: Duration = Duration::from_secs(10);

/// Probes, heartbeats and the registry, until `stop` (or the drain's `leaving`).
pub(super) async fn run(
    shared: Arc<Shared>,
    out: mpsc::Sender<Queued>,
    inbox: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
    let mut tick = interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_beat: Option<Instant> = None;
    let own = Channel::Node(shared.node.as_str().into());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if shared.leaving.load(Relaxed) {
            // Nothing after the leave announcement.
            return;
        }
        let probe = Envelope::Probe {
            n: shared.node.clone(),
        };
        let _ = out.try_send(Queued::plain(own.clone(), &probe));
        if last_beat.is_some_and(|t| t.elapsed() < HEARTBEAT_EVERY) {
            continue;
        }
        last_beat = Some(Instant::now());
        let mut gone = false;
        shared
            .nodes
            .lock()
            .expect("nodes lock")
            .retain(|id, (_, seen)| {
                let alive = seen.elapsed() < NODE_TTL;
                if !alive {
                    tracing::warn!(node = %id, "node went silent; catching up from the store");
                    gone = true;
                }
                alive
            });
        // A node that died between a commit and its publish left publications only the
        // store has; if nothing is published after them, no gap would reveal them.
        if gone && inbox.send(Inbound::Resync(None)).await.is_err() {
            return;
        }
        let beat = Envelope::Heartbeat {
            n: shared.node.clone(),
            s: shared.stats(),
        };
        let _ = out.try_send(Queued::plain(Channel::Control, &beat));
        // The registry: this node's channels and users, gone a TTL after it stops.
        let channels: HashMap<String, usize> = shared.hub.channels().into_iter().collect();
        let users: HashMap<String, usize> = shared.hub.users().into_iter().collect();
        shared
            .registry
            .refresh(&shared.node, &channels, &users)
            .await;
    }
}
