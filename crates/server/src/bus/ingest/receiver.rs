//! The receiver: the per-room reorder (`bus/reorder.rs`) between the broker and the hub,
//! with gap fills and resync sweeps read from the store (see `ingest/mod.rs`).

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{interval, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Inbound, Shared};
use crate::bus::reorder::Reorder;
use crate::hub::RoomEvent;
use crate::store::{Message, Range};

/// Pages (of `SWEEP_PAGE`) a sweep reads per room at most.
const SWEEP_PAGES: usize = 20;
const SWEEP_PAGE: usize = 1000;

pub(super) async fn run(
    shared: Arc<Shared>,
    mut inbox: mpsc::Receiver<Inbound>,
    stop: CancellationToken,
) {
    let mut order = Reorder::default();
    let mut tick = interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deliver = |msgs: Vec<Arc<Message>>| {
        for m in msgs {
            shared.hub.dispatch(&RoomEvent::Publication(m));
        }
    };
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = inbox.recv() => match item { Some(i) => i, None => return },
            _ = tick.tick() => {
                let now = Instant::now();
                for f in order.due(now) {
                    let range = Range { since: Some(f.after), limit: f.limit, reverse: false };
                    match shared.store.range(&f.room, range).await {
                        Ok((msgs, _)) => {
                            shared.gap_fills.fetch_add(msgs.len() as u64, Relaxed);
                            let msgs = msgs.into_iter().map(Arc::new).collect();
                            deliver(order.fill(&f.room, msgs, Instant::now()));
                        }
                        Err(e) => tracing::warn!(room = %f.room, error = %e, "gap fetch failed"),
                    }
                }
                continue;
            }
        };
        let now = Instant::now();
        match item {
            Inbound::Events(events) => {
                for e in events {
                    match e {
                        // Unpositioned (ephemeral, deletion notices): nothing to order.
                        RoomEvent::Publication(m) if m.offset == 0 => {
                            shared.hub.dispatch(&RoomEvent::Publication(m));
                        }
                        RoomEvent::Publication(m) => deliver(order.publication(m, now)),
                        other => shared.hub.dispatch(&other),
                    }
                }
                shared.early.store(order.early, Relaxed);
            }
            Inbound::Hint(room, top) => order.hint(&room, top, now),
            Inbound::Baseline(room, offset) => {
                if shared.is_watched(&room) {
                    deliver(order.baseline(&room, offset, now));
                }
            }
            Inbound::Forget(room) => {
                if !shared.is_watched(&room) {
                    order.forget(&room);
                }
            }
            Inbound::Resync(only) => {
                shared.resyncs.fetch_add(1, Relaxed);
                let mut swept = 0usize;
                let mut rooms = order.positions();
                if let Some(only) = only {
                    let only: HashSet<Arc<str>> = only.into_iter().collect();
                    rooms.retain(|(r, _)| only.contains(r));
                }
                for (room, after) in rooms {
                    let mut after = after;
                    for _ in 0..SWEEP_PAGES {
                        let range = Range {
                            since: Some(after),
                            limit: SWEEP_PAGE,
                            reverse: false,
                        };
                        match shared.store.range(&room, range).await {
                            Ok((msgs, _)) => {
                                let n = msgs.len();
                                if let Some(last) = msgs.last() {
                                    after = last.offset;
                                }
                                swept += n;
                                let msgs = msgs.into_iter().map(Arc::new).collect();
                                deliver(order.fill(&room, msgs, Instant::now()));
                                if n < SWEEP_PAGE {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(%room, error = %e, "resync read failed");
                                break;
                            }
                        }
                    }
                }
                tracing::info!(swept, "bus resync: caught up from the store");
            }
        }
    }
}
