//! One publisher per room: sends the bench payload with sequence numbers 1, 2, 3, ... at a paced rate
//! (or as fast as its window of unacknowledged publishes allows), and times each acknowledgement.
//!
//! Over a WebSocket (roomcast client `publish`, Socket.IO event with ack, limit server) publishes are
//! pipelined up to `window`; over HTTP (roomcast server API, Sockudo REST) they are one at a time on a
//! keep-alive connection, because parallel HTTP requests would reorder the stream. A `proto=1`
//! roomcast target's publishers speak the protobuf format over their WebSocket.

use crate::http::{self, HttpConn};
use crate::stats::{self, Buckets};
use crate::target::{Kind, Target};
use crate::wire::{self, Incoming};
use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

/// Events per Pusher batch request (the protocol's maximum).
const PUSHER_BATCH: u64 = 10;

/// How long a stopping publisher waits for its last acks before declaring them unknown.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub(crate) struct PubJob {
    pub target: Target,
    pub room: u32,
    /// Messages per second; None = as fast as the window allows.
    pub rate: Option<f64>,
    pub window: usize,
    pub payload_size: usize,
    /// roomcast only: publish through `POST /api/publish` instead of the client protocol.
    pub via_http: bool,
    /// Publish this many, wait for their acks and end (storm); None: until `stop`.
    pub count: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct PubResult {
    pub room: u32,
    /// Highest sequence number sent.
    pub sent: u64,
    pub acked: u64,
    /// Refused publishes, or sent ones whose ack never came (connection lost, drain timeout).
    pub failed: Vec<u64>,
    /// Send-to-ack latency, µs.
    pub ack_us: Buckets,
    /// Why the publisher stopped early, if it did.
    pub error: Option<String>,
}

/// Runs until `stop` turns true, then drains acks and returns what happened.
pub(crate) async fn run(job: PubJob, stop: watch::Receiver<bool>) -> PubResult {
    let mut res = PubResult {
        room: job.room,
        ..Default::default()
    };
    let mut hist = stats::histogram();
    let outcome = if job.via_http || job.target.kind == Kind::Pusher {
        run_http(&job, stop, &mut res, &mut hist).await
    } else {
        run_ws(&job, stop, &mut res, &mut hist).await
    };
    if let Err(e) = outcome {
        res.error = Some(format!("{e:#}"));
    }
    res.ack_us = stats::to_buckets(&hist);
    res
}

/// How many publishes are due `elapsed` into the run.
fn due(rate: Option<f64>, elapsed: Duration) -> u64 {
    rate.map_or(u64::MAX, |r| (elapsed.as_secs_f64() * r) as u64)
}

async fn run_ws(
    job: &PubJob,
    mut stop: watch::Receiver<bool>,
    res: &mut PubResult,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> Result<()> {
    let t = &job.target;
    let mut ws = wire::open(
        Ipv4Addr::LOCALHOST,
        t.addr(),
        &wire::path(t, job.room, true),
    )
    .await?;
    wire::hello(&mut ws, t, &format!("p{}", job.room)).await?;
    // (sequence, send instant) of unacknowledged publishes, oldest first.
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let t0 = Instant::now();
    let mut stopping: Option<Instant> = None;
    let mut out = Vec::new();
    let all_sent = |sent: u64| job.count.is_some_and(|c| sent >= c);
    loop {
        if (stopping.is_some() || all_sent(res.sent)) && inflight.is_empty() {
            return Ok(());
        }
        tokio::select! {
            _ = tick.tick(), if stopping.is_none() => {
                let due = due(job.rate, t0.elapsed());
                let mut n = 0;
                while res.sent < due && inflight.len() < job.window && !all_sent(res.sent) {
                    res.sent += 1;
                    let body = wire::payload(job.room, res.sent, job.payload_size);
                    let frame = if t.proto {
                        crate::pb::publish_frame(job.room, res.sent, &body)
                    } else {
                        Message::text(wire::publish_frame(t.kind, job.room, res.sent, &body))
                    };
                    ws.feed(frame).await?;
                    inflight.push_back((res.sent, Instant::now()));
                    n += 1;
                }
                if n > 0 {
                    ws.flush().await?;
                }
            }
            m = ws.next() => {
                out.clear();
                match m {
                    Some(Ok(Message::Text(x))) => wire::decode(t.kind, x.as_str(), &mut out),
                    // roomcast in the protobuf format (`proto=1`).
                    Some(Ok(Message::Binary(b))) if t.proto => crate::pb::decode(&b, &mut out),
                    Some(Ok(Message::Close(frame))) => {
                        res.failed.extend(inflight.iter().map(|(s, _)| *s));
                        let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                        anyhow::bail!("server closed the publisher connection: {why}");
                    }
                    Some(Ok(_)) => continue,
                    other => {
                        res.failed.extend(inflight.iter().map(|(s, _)| *s));
                        anyhow::bail!("publisher connection ended: {other:?}");
                    }
                }
                for m in out.drain(..) {
                    match m {
                        Incoming::Ack { id, ok } => {
                            let at = match id {
                                None => Some(0),
                                Some(id) => inflight.iter().position(|(s, _)| *s == id),
                            };
                            if let Some((seq, sent_at)) = at.and_then(|i| inflight.remove(i)) {
                                hist.saturating_record((sent_at.elapsed().as_micros() as u64).max(1));
                                if ok { res.acked += 1 } else { res.failed.push(seq) }
                            }
                        }
                        Incoming::Ping(_) if t.proto => ws.send(crate::pb::pong()).await?,
                        Incoming::Ping(p) => ws.send(Message::text(p)).await?,
                        _ => {}
                    }
                }
            }
            _ = stop.changed(), if stopping.is_none() => stopping = Some(Instant::now()),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(stopping.unwrap_or(t0) + DRAIN)), if stopping.is_some() => {
                res.failed.extend(inflight.iter().map(|(s, _)| *s));
                anyhow::bail!("{} publishes unacknowledged {DRAIN:?} after stop", inflight.len());
            }
        }
    }
}

async fn run_http(
    job: &PubJob,
    stop: watch::Receiver<bool>,
    res: &mut PubResult,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> Result<()> {
    let t = &job.target;
    let mut conn = HttpConn::connect(t.addr()).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let t0 = Instant::now();
    let due_at = |elapsed| due(job.rate, elapsed).min(job.count.unwrap_or(u64::MAX));
    while !*stop.borrow() && res.sent < job.count.unwrap_or(u64::MAX) {
        tick.tick().await;
        while res.sent < due_at(t0.elapsed()) && !*stop.borrow() {
            // Pusher's REST API takes up to 10 events per batch request, delivered in order; that is
            // how a Pusher backend publishes at high rates. roomcast's API publishes one at a time.
            let room_max = if t.kind == Kind::Pusher {
                PUSHER_BATCH
            } else {
                1
            };
            let due_now = due_at(t0.elapsed())
                .saturating_sub(res.sent)
                .clamp(1, room_max);
            let first = res.sent + 1;
            let bodies: Vec<String> = (first..first + due_now)
                .map(|seq| wire::payload(job.room, seq, job.payload_size))
                .collect();
            res.sent += due_now;
            let sent_at = Instant::now();
            let outcome = match t.kind {
                Kind::Pusher => {
                    let ch = wire::channel(job.room);
                    let (path, req) = if bodies.len() == 1 {
                        (
                            "events",
                            serde_json::json!({"name":"m","channels":[ch],"data":bodies[0]}),
                        )
                    } else {
                        let batch: Vec<_> = bodies
                            .iter()
                            .map(|b| serde_json::json!({"name":"m","channel":ch,"data":b}))
                            .collect();
                        ("batch_events", serde_json::json!({ "batch": batch }))
                    };
                    let req = req.to_string();
                    let secs = wire::now_ns() / 1_000_000_000;
                    let (id, key, secret) = (
                        t.app_id.as_deref().unwrap_or_default(),
                        t.app_key.as_deref().unwrap_or_default(),
                        t.secret.as_deref().unwrap_or_default(),
                    );
                    let path = http::pusher_path(path, id, key, secret, &req, secs);
                    conn.post(&path, &[], &req).await
                }
                _ => {
                    let req = format!(
                        "{{\"channel\":\"{}\",\"data\":{}}}",
                        wire::channel(job.room),
                        bodies[0]
                    );
                    let key = t.api_key.as_deref().unwrap_or_default();
                    conn.post("/api/publish", &[("X-API-Key", key)], &req).await
                }
            };
            let (status, reply) = match outcome {
                Ok(r) => r,
                Err(e) => {
                    res.failed.extend(first..=res.sent);
                    return Err(e);
                }
            };
            let us = (sent_at.elapsed().as_micros() as u64).max(1);
            hist.saturating_record_n(us, due_now);
            // The Centrifugo-style API answers 200 with {"error":...} for refused publishes.
            let refused = status != 200 || reply.windows(8).any(|w| w == b"\"error\":");
            if refused {
                if res.failed.is_empty() {
                    eprintln!(
                        "publish refused ({status}): {}",
                        String::from_utf8_lossy(&reply)
                    );
                }
                res.failed.extend(first..=res.sent);
            } else {
                res.acked += due_now;
            }
        }
    }
    Ok(())
}
