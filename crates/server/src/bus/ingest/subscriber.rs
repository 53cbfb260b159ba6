//! The subscriber: owns the broker subscription (subscribe, reconcile, liveness, replace)
//! and decodes what arrives (see `ingest/mod.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, sleep, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Inbound, Shared, COMMAND_TIMEOUT};
use crate::bus::broker::{Channel, Subscription};
use crate::bus::envelope::{Decoded, Envelope};

/// The silence after which the subscription is presumed stalled (probes go every second).
const STALL: Duration = Duration::from_secs(3);
/// How often the subscriber checks its subscriptions against the watched rooms.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// Rooms per subscribe/unsubscribe request.
const CHUNK: usize = 500;

fn rooms(rooms: &[Arc<str>]) -> Vec<Channel> {
    rooms.iter().map(|r| Channel::Room(r.clone())).collect()
}

async fn bounded(
    f: impl std::future::Future<Output = Result<(), crate::bus::BusError>>,
) -> Result<(), ()> {
    match timeout(COMMAND_TIMEOUT, f).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Owns the subscription: subscriptions, liveness, reconnects.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<(Arc<str>, oneshot::Sender<()>)>,
    inbox: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
    let name = shared.broker.name();
    let fixed = [Channel::Node(shared.node.as_str().into()), Channel::Control];
    let mut backoff = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut subs = match timeout(COMMAND_TIMEOUT, shared.broker.subscription()).await {
            Ok(Ok(p)) => p,
            failed => {
                match failed {
                    Ok(Err(e)) => {
                        tracing::warn!(broker = name, error = %e, "bus subscribe connection failed");
                    }
                    _ => tracing::warn!(broker = name, "bus subscribe connection timed out"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Subscribe the fixed channels and every watched room.
        let watched = shared.broker_rooms();
        let mut subscribed: HashSet<Arc<str>> = HashSet::new();
        let mut ok = bounded(subs.subscribe(&fixed)).await.is_ok();
        for chunk in watched.chunks(CHUNK) {
            if !ok {
                break;
            }
            ok = bounded(subs.subscribe(&rooms(chunk))).await.is_ok();
            subscribed.extend(chunk.iter().cloned());
        }
        if !ok {
            tracing::warn!(broker = name, "bus resubscribe failed; reconnecting");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(backoff) => {}
            }
            continue;
        }
        backoff = Duration::from_millis(100);
        tracing::info!(broker = name, rooms = subscribed.len(), "bus subscribed");
        // Anything published while the subscription was down is in the store.
        if inbox.send(Inbound::Resync(None)).await.is_err() {
            return;
        }
        let mut last_probe = Instant::now();
        let mut last_reconcile = Instant::now();
        let mut tick = interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                            _ = stop.cancelled() => return,
                            cmd = commands.recv() => {
                                let Some((room, ack)) = cmd else { return };
                                let want = shared.is_watched(&room) && !shared.is_personal(&room);
                                let has = subscribed.contains(&room);
                                let one = [Channel::Room(room.clone())];
                                let result = if want && !has {
                                    subscribed.insert(room.clone());
                                    bounded(subs.subscribe(&one)).await
                                } else if !want && has {
                                    subscribed.remove(&room);
                                    bounded(subs.unsubscribe(&one)).await
                                } else {
                                    Ok(())
                                };
                                if result.is_err() {
                                    tracing::warn!(broker = name, %room, "bus (un)subscribe failed; reconnecting");
                                    break;
                                }
                                let _ = ack.send(());
                            }
                            msg = subs.next() => {
                                let Some(payload) = msg else {
                                    tracing::warn!(broker = name, "bus subscription lost; reconnecting");
                                    break;
                                };
                                if let Some(m) = crate::metrics::get() {
             m.bus_received.inc();
            }
                                match Envelope::decode(&payload) {
                                    Ok(Envelope::Probe { n }) if n == shared.node => {
                                        last_probe = Instant::now();
                                        shared.probe_back();
                                    }
                                    Ok(env) => {
                                        if !handle(&shared, &inbox, env).await {
                                            return;
                                        }
                                    }
                                    Err(e) => tracing::warn!(broker = name, error = %e, "undecodable bus message"),
                                }
                            }
                            _ = tick.tick() => {
                                if last_probe.elapsed() > STALL {
                                    tracing::warn!(broker = name, "no probe came back through the broker; resubscribing");
                                    break;
                                }
                                if last_reconcile.elapsed() >= RECONCILE_EVERY {
                                    last_reconcile = Instant::now();
                                    match reconcile(&shared, subs.as_mut(), &mut subscribed).await {
                                        Ok(added) if added.is_empty() => {}
                                        Ok(added) => {
                                            // Subscribed late (a watch command timed out): read what
                                            // those rooms may have missed.
                                            if inbox.send(Inbound::Resync(Some(added))).await.is_err() {
                                                return;
                                            }
                                        }
                                        Err(()) => {
                                            tracing::warn!(broker = name, "bus reconcile failed; reconnecting");
                                            break;
                                        }
                                    }
                                }
                            }
                        }
        }
    }
}

/// Makes the subscriptions match the watched rooms (a safety net behind the per-watch
/// commands). Returns the rooms it subscribed.
async fn reconcile(
    shared: &Shared,
    subs: &mut dyn Subscription,
    subscribed: &mut HashSet<Arc<str>>,
) -> Result<Vec<Arc<str>>, ()> {
    let watched: HashSet<Arc<str>> = shared.broker_rooms().into_iter().collect();
    let added: Vec<Arc<str>> = watched.difference(subscribed).cloned().collect();
    let removed: Vec<Arc<str>> = subscribed.difference(&watched).cloned().collect();
    for chunk in added.chunks(CHUNK) {
        bounded(subs.subscribe(&rooms(chunk))).await?;
        subscribed.extend(chunk.iter().cloned());
    }
    for chunk in removed.chunks(CHUNK) {
        bounded(subs.unsubscribe(&rooms(chunk))).await?;
        for r in chunk {
            subscribed.remove(r);
        }
    }
    Ok(added)
}

/// Handles one decoded envelope. Returns false when the node is stopping.
async fn handle(shared: &Shared, inbox: &mpsc::Sender<Inbound>, env: Envelope) -> bool {
    match env.into_decoded(&shared.node) {
        Decoded::Event(event) => inbox.send(Inbound::Events(vec![event])).await.is_ok(),
        Decoded::Hint(room, top) => inbox.send(Inbound::Hint(room, top)).await.is_ok(),
        Decoded::UserOp(op) => {
            op.apply(&shared.hub);
            true
        }
        Decoded::Heartbeat(n, s) => {
            shared
                .nodes
                .lock()
                .expect("nodes lock")
                .insert(n, (s, Instant::now()));
            true
        }
        Decoded::Gone(n) => {
            let known = shared
                .nodes
                .lock()
                .expect("nodes lock")
                .remove(&n)
                .is_some();
            tracing::info!(node = %n, "node left the cluster");
            // Everything it committed was published before this announcement; one more
            // sweep covers what the broker may have dropped on the way.
            !known || inbox.send(Inbound::Resync(None)).await.is_ok()
        }
        Decoded::Nothing => true,
    }
}
