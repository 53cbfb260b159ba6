//! One subscribed client ("member"): joins its room, counts and times every delivery, answers pings,
//! and on a server-side disconnect reconnects and recovers from its last offset when the protocol
//! allows it. In a storm it drops its connection abruptly on `Cmd::Drop`, stays away while its room
//! moves on, and on `Cmd::Reconnect` joins again with recovery; it checks that the recovery brought
//! exactly the publications it missed, in order. It returns its `Tracker` when told to stop, for the
//! missing-count. A digest member (`SubOpts::digest_live`) subscribes with `data: {"digest": true}`
//! and keeps a `DigestTrack` instead: gaps and the newest, not every publication.

use crate::digest::{DigestTrack, SubOpts};
use crate::stats::{Hists, Live};
use crate::stream::StreamConn;
use crate::target::{Kind, Target, Transport};
use crate::tracker::{Seen, Tracker};
use crate::wire::{self, Ask, Incoming, Position, Ws};
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

/// Chat targets: how often a member moves its read cursor to the newest offset it has received.
const READ_EVERY: Duration = Duration::from_secs(1);

/// A member's connection: a WebSocket (JSON or protobuf), or a stream with its emulation
/// requests.
enum Conn {
    Ws(Box<Ws>),
    /// A WebSocket in the protobuf format (`proto=1`): binary messages.
    Pb(Box<Ws>),
    Stream(Box<StreamConn>),
}

impl Conn {
    /// What the next message means; `None` when the connection ended or failed.
    async fn next(&mut self, kind: Kind) -> Option<Vec<Incoming>> {
        let mut out = Vec::new();
        if let Conn::Pb(ws) = self {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        crate::pb::decode(&b, &mut out);
                        return Some(out);
                    }
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        }
        let t = self.next_text().await?;
        wire::decode(kind, &t, &mut out);
        Some(out)
    }

    /// Answers a server ping (`p` is the JSON answer).
    async fn pong(&mut self, p: &str) {
        match self {
            Conn::Pb(ws) => {
                let _ = ws.send(crate::pb::pong()).await;
            }
            _ => self.send(p).await,
        }
    }

    /// Chat targets: moves this member's read cursor in `room` to `offset` (`rpc roomcast.read`).
    async fn read(&mut self, id: u64, room: u32, offset: u64) {
        if let Conn::Pb(ws) = self {
            let _ = ws.send(crate::pb::read_frame(id, room, offset)).await;
            return;
        }
        let cmd = serde_json::json!({"id": id, "rpc": {"method": "roomcast.read",
            "data": {"channel": wire::channel(room), "offset": offset}}});
        self.send(&cmd.to_string()).await;
    }

    /// The next text message (WebSocket) or frame (stream); `None` when the connection ended
    /// or failed.
    async fn next_text(&mut self) -> Option<String> {
        match self {
            Conn::Ws(ws) | Conn::Pb(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Some(t.as_str().to_owned()),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            },
            Conn::Stream(s) => s.next_text().await.ok().flatten(),
        }
    }

    async fn send(&mut self, text: &str) {
        match self {
            Conn::Ws(ws) | Conn::Pb(ws) => {
                let _ = ws.send(Message::text(text.to_owned())).await;
            }
            Conn::Stream(s) => {
                let _ = s.send(text).await;
            }
        }
    }

    async fn close(self) {
        if let Conn::Ws(mut ws) | Conn::Pb(mut ws) = self {
            let _ = Ws::close(&mut ws, None).await;
        }
    }
}

/// What the group tells its members; a watch channel, so late readers still see the latest order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmd {
    Run,
    /// Storm number n: drop the connection now (no close handshake) and stay offline.
    Drop(u32),
    /// Storm number n: everyone back at once, recovering from the last offset seen.
    Reconnect(u32),
    Stop,
}

/// Everything the members of a group share.
pub(crate) struct Shared {
    pub target: Target,
    pub live: Live,
    pub hists: Hists,
    /// Wall-clock ns of the latest storm's reconnect order, to time each member's recovery from it.
    pub reconnect_at_ns: AtomicU64,
    /// Bounds concurrent handshakes so the server's accept backlog is not overrun.
    pub join_gate: Semaphore,
    /// Bounds concurrent handshakes of a storm's reconnect burst (wider than `join_gate`: all at once,
    /// as far as the server's accept queue allows).
    pub storm_gate: Semaphore,
    /// Storm: publications each member's room gets while it is away; a recovery must bring exactly
    /// these (0: nothing is published meanwhile, as for targets without recovery).
    pub behind: u64,
    /// Storm: reconnect delays are spread over 0..jitter (SDK-style), zero: all at once.
    pub jitter: Duration,
    /// How members subscribe: join/leave asked, which of them get a digest.
    pub opts: SubOpts,
}

pub(crate) struct Member {
    pub idx: u32,
    pub room: u32,
    pub src: Ipv4Addr,
    /// Subscribed for a digest (`data: {"digest": true}`), not every publication.
    pub digest: bool,
}

/// What a member received, returned when it stops.
pub(crate) struct Outcome {
    /// Every publication, for a live member (a digest member's stays empty).
    pub tracker: Tracker,
    /// A digest member's deliveries.
    pub digest: DigestTrack,
}

/// Runs one member until `Cmd::Stop`, then returns what it received.
pub(crate) async fn run(shared: Arc<Shared>, me: Member, mut cmd: watch::Receiver<Cmd>) -> Outcome {
    let mut tracker = Tracker::default();
    let mut digest = DigestTrack::default();
    let mut pos: Option<Position> = None;
    let mut first = true;
    // Set when this (re)join follows a storm, so its recovery gets timed and checked.
    let mut after_storm = false;
    loop {
        let gate = if after_storm {
            &shared.storm_gate
        } else {
            &shared.join_gate
        };
        // Highest sequence seen before this join: a storm's recovery must continue right after it.
        let before = tracker.max_seen();
        let joined = join_with_retries(&shared, gate, &me, pos.as_ref()).await;
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
                }
                if after_storm {
                    storm_rejoined(&shared, before, &j.backlog);
                }
                if j.position.is_some() {
                    pos = j.position;
                }
                for d in j.backlog {
                    on_delivery(
                        &shared,
                        &me,
                        (&mut tracker, &mut digest),
                        &mut pos,
                        d,
                        false,
                    );
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
                return Outcome { tracker, digest };
            }
        };
        after_storm = false;
        // Chat targets: the newest offset this member has read, as its cursor; moved once a second.
        let mut read_tick = tokio::time::interval(READ_EVERY);
        let mut cursor = pos.as_ref().map_or(0, |p| p.offset);
        let mut read_id = 1_000u64;
        // Receive until stopped, dropped by a storm, or disconnected.
        loop {
            tokio::select! {
                _ = read_tick.tick(), if shared.target.chat => {
                    let newest = pos.as_ref().map_or(0, |p| p.offset);
                    if newest > cursor {
                        cursor = newest;
                        read_id += 1;
                        ws.read(read_id, me.room, newest).await;
                    }
                }
                msg = ws.next(shared.target.kind) => match msg {
                    Some(out) => {
                        for m in out {
                            match m {
                                Incoming::Delivery(d) => on_delivery(&shared, &me, (&mut tracker, &mut digest), &mut pos, d, true),
                                Incoming::Ping(p) => ws.pong(p).await,
                                Incoming::JoinLeave => { shared.live.join_leave_pushes.fetch_add(1, Relaxed); }
                                // A member sends no publishes: a refused command is its cursor read.
                                Incoming::Reply { ok } | Incoming::Ack { ok, .. } => {
                                    let c = if ok { &shared.live.reads } else { &shared.live.read_failed };
                                    c.fetch_add(1, Relaxed);
                                }
                                _ => {}
                            }
                        }
                    }
                    // Closed by the server (e.g. slow-consumer disconnect) or the socket failed.
                    None => {
                        if shared.target.recovers() {
                            shared.live.reconnects.fetch_add(1, Relaxed);
                            break;
                        }
                        shared.live.lost.fetch_add(1, Relaxed);
                        wait_stop(&mut cmd).await;
                        return Outcome { tracker, digest };
                    }
                },
                changed = cmd.changed() => {
                    let c = *cmd.borrow_and_update();
                    match (changed, c) {
                        (Err(_), _) | (_, Cmd::Stop) => {
                            ws.close().await;
                            return Outcome { tracker, digest };
                        }
                        (_, Cmd::Drop(_) | Cmd::Reconnect(_)) => {
                            // Abrupt drop: no close handshake, like a phone losing its network.
                            drop(ws);
                            shared.live.offline.fetch_add(1, Relaxed);
                            if !wait_reconnect(&mut cmd).await {
                                return Outcome { tracker, digest };
                            }
                            tokio::time::sleep(spread(me.idx, shared.jitter)).await;
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

/// Times a storm rejoin from the reconnect order and checks what the recovery brought: exactly the
/// `behind` publications after `before`, in order (deliveries are counted apart, by the tracker).
fn storm_rejoined(shared: &Shared, before: u64, backlog: &[wire::Delivery]) {
    let ms = wire::now_ns().saturating_sub(shared.reconnect_at_ns.load(Relaxed)) / 1_000_000;
    shared
        .hists
        .recover
        .lock()
        .unwrap()
        .saturating_record(ms.max(1));
    shared.live.rejoined.fetch_add(1, Relaxed);
    let seqs = backlog.iter().map(|d| d.payload.s);
    if !exact_recovery(before, shared.behind, seqs) {
        shared.live.recover_wrong.fetch_add(1, Relaxed);
    }
}

/// Whether a recovery brought exactly `behind` publications, the ones right after sequence
/// `before`, in order.
fn exact_recovery(before: u64, behind: u64, mut seqs: impl Iterator<Item = u64>) -> bool {
    (before + 1..=before + behind).all(|want| seqs.next() == Some(want)) && seqs.next().is_none()
}

/// Member `idx`'s share of `jitter`: a multiplicative hash of the index, so delays are spread
/// evenly over 0..jitter and the same in every run.
fn spread(idx: u32, jitter: Duration) -> Duration {
    let frac = u64::from(idx.wrapping_mul(2_654_435_761));
    jitter.mul_f64(frac as f64 / f64::from(u32::MAX))
}

/// Waits offline for the storm's reconnect order; false when told to stop instead.
async fn wait_reconnect(cmd: &mut watch::Receiver<Cmd>) -> bool {
    loop {
        match *cmd.borrow_and_update() {
            Cmd::Reconnect(_) => return true,
            Cmd::Stop => return false,
            _ => {}
        }
        if cmd.changed().await.is_err() {
            return false;
        }
    }
}

fn on_delivery(
    shared: &Shared,
    me: &Member,
    (tracker, digest): (&mut Tracker, &mut DigestTrack),
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
    let now = wire::now_ns();
    if me.digest {
        // Counted apart: `delivered` and the latencies are the live members' figures.
        digest.record(d.payload.s, now, shared.opts.min_gap());
        return;
    }
    if tracker.record(d.payload.s) == Seen::Duplicate {
        return;
    }
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
            .record(me.room, d.payload.s, us);
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
    gate: &Semaphore,
    me: &Member,
    pos: Option<&Position>,
) -> Result<(Conn, wire::Joined)> {
    let mut last = None;
    for attempt in 0..JOIN_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
        }
        let _permit = gate.acquire().await.expect("gate never closed");
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
) -> Result<(Conn, wire::Joined)> {
    let t = &shared.target;
    let user = format!("m{}", me.idx);
    if t.transport != Transport::Websocket {
        // Stream members ask for neither join/leave nor digests.
        let (s, j) = crate::stream::join(me.src, t, me.room, &user, pos).await?;
        return Ok((Conn::Stream(Box::new(s)), j));
    }
    let addr = t.member_addr(me.idx);
    let mut ws = wire::open(me.src, addr, &wire::path(t, me.room, false)).await?;
    let ask = Ask {
        join_leave: shared.opts.join_leave,
        digest: me.digest,
    };
    let j = wire::join(&mut ws, t, me.room, &user, pos, ask).await?;
    let ws = Box::new(ws);
    Ok((if t.proto { Conn::Pb(ws) } else { Conn::Ws(ws) }, j))
}

#[cfg(test)]
mod tests {
    use super::exact_recovery;

    #[test]
    fn a_recovery_is_exact_only_with_every_missed_publication_in_order() {
        assert!(exact_recovery(5, 3, [6, 7, 8].into_iter()));
        assert!(exact_recovery(0, 0, std::iter::empty()));
        assert!(!exact_recovery(5, 3, [6, 8, 7].into_iter()));
        assert!(!exact_recovery(5, 3, [6, 7].into_iter()));
        assert!(!exact_recovery(5, 3, [6, 7, 8, 9].into_iter()));
        assert!(!exact_recovery(5, 3, [7, 8, 9].into_iter()));
        assert!(!exact_recovery(5, 3, [6, 6, 7].into_iter()));
    }
}
