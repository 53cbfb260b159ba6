//! One subscribed client ("member"): joins its room, counts and times every delivery, answers pings,
//! and on a storm (or a server-side disconnect) reconnects and recovers from its last offset when the
//! protocol allows it. It returns its `Tracker` when told to stop, for the missing-count.

use crate::stats::{Hists, Live};
use crate::target::Target;
use crate::tracker::{Seen, Tracker};
use crate::wire::{self, Incoming, Position, Ws};
use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// How many times a member tries to (re)join before giving up; bounded so a dead server ends the run.
const JOIN_ATTEMPTS: u32 = 6;

/// What the group tells its members; a watch channel, so late readers still see the latest order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmd {
    Run,
    /// Storm number n: drop the connection now and reconnect with recovery.
    Drop(u32),
    Stop,
}

/// Everything the members of a group share.
pub(crate) struct Shared {
    pub target: Target,
    pub live: Live,
    pub hists: Hists,
    /// Wall-clock ns of the latest storm, to time each member's recovery from it.
    pub drop_at_ns: AtomicU64,
    /// Bounds concurrent handshakes so the server's accept backlog is not overrun.
    pub join_gate: Semaphore,
}

pub(crate) struct Member {
    pub idx: u32,
    pub room: u32,
    pub src: Ipv4Addr,
}

/// Runs one member until `Cmd::Stop`, then returns what it received.
pub(crate) async fn run(shared: Arc<Shared>, me: Member, mut cmd: watch::Receiver<Cmd>) -> Tracker {
    let mut tracker = Tracker::default();
    let mut pos: Option<Position> = None;
    let mut first = true;
    // Set when this (re)join follows a storm, so its recovery gets timed.
    let mut after_storm = false;
    loop {
        let joined = join_with_retries(&shared, &me, pos.as_ref()).await;
        let mut ws = match joined {
            Ok((ws, j)) => {
                if first {
                    shared.live.joined.fetch_add(1, Relaxed);
                    shared.live.last_join_ns.fetch_max(wire::now_ns(), Relaxed);
                    tracker.joined = true;
                    first = false;
                }
                if let Some(r) = j.recovered {
                    if r {
                        shared.live.recovered.fetch_add(1, Relaxed);
                    } else {
                        shared.live.recover_failed.fetch_add(1, Relaxed);
                    }
                    if after_storm {
                        let ms = wire::now_ns().saturating_sub(shared.drop_at_ns.load(Relaxed))
                            / 1_000_000;
                        shared
                            .hists
                            .recover
                            .lock()
                            .unwrap()
                            .saturating_record(ms.max(1));
                    }
                }
                if j.position.is_some() {
                    pos = j.position;
                }
                for d in j.backlog {
                    on_delivery(&shared, &me, &mut tracker, &mut pos, d, false);
                }
                ws
            }
            Err(_) => {
                let c = if first {
                    &shared.live.join_failed
                } else {
                    &shared.live.lost
                };
                c.fetch_add(1, Relaxed);
                wait_stop(&mut cmd).await;
                return tracker;
            }
        };
        after_storm = false;
        // Receive until stopped, dropped by a storm, or disconnected.
        loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let mut out = Vec::new();
                        wire::decode(shared.target.kind, t.as_str(), &mut out);
                        for m in out {
                            match m {
                                Incoming::Delivery(d) => on_delivery(&shared, &me, &mut tracker, &mut pos, d, true),
                                Incoming::Ping(p) => { let _ = ws.send(Message::text(p)).await; }
                                _ => {}
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    // Closed by the server (e.g. slow-consumer disconnect) or the socket failed.
                    _ => {
                        if shared.target.recovers() {
                            shared.live.reconnects.fetch_add(1, Relaxed);
                            break;
                        }
                        shared.live.lost.fetch_add(1, Relaxed);
                        wait_stop(&mut cmd).await;
                        return tracker;
                    }
                },
                changed = cmd.changed() => {
                    let c = *cmd.borrow_and_update();
                    match (changed, c) {
                        (Err(_), _) | (_, Cmd::Stop) => {
                            let _ = ws.close(None).await;
                            return tracker;
                        }
                        (_, Cmd::Drop(_)) => {
                            // Abrupt drop: no close handshake, like a phone losing its network.
                            drop(ws);
                            shared.live.reconnects.fetch_add(1, Relaxed);
                            after_storm = true;
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

fn on_delivery(
    shared: &Shared,
    me: &Member,
    tracker: &mut Tracker,
    pos: &mut Option<Position>,
    d: wire::Delivery,
    live: bool,
) {
    if d.payload.r != me.room {
        shared.live.misrouted.fetch_add(1, Relaxed);
        return;
    }
    if let (Some(o), Some(p)) = (d.offset, pos.as_mut()) {
        p.offset = p.offset.max(o);
    }
    if tracker.record(d.payload.s) == Seen::Duplicate {
        return;
    }
    let now = wire::now_ns();
    shared.live.delivered.fetch_add(1, Relaxed);
    shared.live.last_delivery_ns.fetch_max(now, Relaxed);
    // Recovered publications are late by design; they are counted, not timed.
    if live {
        let us = now.saturating_sub(d.payload.t) / 1000;
        shared
            .hists
            .latency
            .lock()
            .unwrap()
            .saturating_record(us.max(1));
    }
}

async fn wait_stop(cmd: &mut watch::Receiver<Cmd>) {
    while *cmd.borrow_and_update() != Cmd::Stop {
        if cmd.changed().await.is_err() {
            return;
        }
    }
}

async fn join_with_retries(
    shared: &Shared,
    me: &Member,
    pos: Option<&Position>,
) -> Result<(Ws, wire::Joined)> {
    let mut last = None;
    for attempt in 0..JOIN_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
        }
        let _permit = shared.join_gate.acquire().await.expect("gate never closed");
        let t0 = Instant::now();
        match join_once(shared, me, pos).await {
            Ok(ok) => {
                let us = t0.elapsed().as_micros() as u64;
                shared
                    .hists
                    .join
                    .lock()
                    .unwrap()
                    .saturating_record(us.max(1));
                return Ok(ok);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

async fn join_once(
    shared: &Shared,
    me: &Member,
    pos: Option<&Position>,
) -> Result<(Ws, wire::Joined)> {
    let t = &shared.target;
    let mut ws = wire::open(me.src, t.addr(), &wire::path(t, me.room, false)).await?;
    let user = format!("m{}", me.idx);
    let j = wire::join(&mut ws, t, me.room, &user, pos).await?;
    Ok((ws, j))
}
