//! The clients of the run: writers that publish with acknowledgements (over WebSocket and
//! over the server API) and members that read with recovery, as an SDK does. Every one of
//! them survives its node going away: errors are recorded, never fatal.
//!
//! A publication's data is `{"w": writer, "s": seq, "p": padding}`: the checker finds every
//! publication by its (writer, seq). Each writer sends one publish at a time and waits
//! for its outcome (acked, or failed: an error, a closed connection or no answer within
//! [`OP_TIMEOUT`]) before the next, so its acked publications are in real-time order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomcast_testkit::{try_api, Client, Event};
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use crate::checker::{Op, PubId};

/// The room every client of the run uses.
pub(crate) const ROOM: &str = "chaos";
/// How long one publish, connect or subscribe may take before it counts as failed.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Padding in every publication, so slow readers fill their outbox within seconds.
const PADDING: usize = 200;

/// What every client shares: the run's clock, the stop flags and the recorded ops.
pub(crate) struct Shared {
    pub start: Instant,
    /// Writers stop when set.
    pub stop_writing: AtomicBool,
    /// Members stop when set (after they reached the head, or the wait ran out).
    pub stop_reading: AtomicBool,
    pub ops: Mutex<Vec<Op>>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            start: Instant::now(),
            stop_writing: AtomicBool::new(false),
            stop_reading: AtomicBool::new(false),
            ops: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

fn data(id: PubId) -> Value {
    json!({"w": id.writer, "s": id.seq, "p": "x".repeat(PADDING)})
}

/// The (writer, seq) in a publication's data, if it is ours.
pub(crate) fn pub_id(data: &Value) -> Option<PubId> {
    Some(PubId {
        writer: data["w"].as_u64()? as u32,
        seq: data["s"].as_u64()?,
    })
}

/// Publishes over one WebSocket connection to `url` (reconnecting when it fails) until
/// told to stop, pausing `pace` between publishes.
pub(crate) async fn ws_writer(shared: Arc<Shared>, writer: u32, url: String, pace: Duration) {
    let mut client: Option<Client> = None;
    let mut seq = 0;
    while !shared.stop_writing.load(Ordering::Relaxed) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::try_connect(&url, &format!("writer{writer}"), OP_TIMEOUT).await {
                Ok(c) => client.insert(c),
                Err(_) => {
                    sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        seq += 1;
        let id = PubId { writer, seq };
        let sent_us = shared.now_us();
        let cmd = json!({"publish": {"channel": ROOM, "data": data(id)}});
        let acked = match c.try_call(cmd, OP_TIMEOUT).await {
            Ok(reply) => reply.get("publish").is_some(),
            Err(_) => {
                client = None; // closed, broken or silent: a new connection
                false
            }
        };
        record(&shared, id, acked, sent_us, None);
        sleep(pace).await;
    }
}

/// Publishes through the server API of `addr` with an idempotency key per publication,
/// retrying a failed attempt (same key) up to twice: a retry must never store it twice.
pub(crate) async fn api_writer(shared: Arc<Shared>, writer: u32, addr: SocketAddr, pace: Duration) {
    let mut seq = 0;
    while !shared.stop_writing.load(Ordering::Relaxed) {
        seq += 1;
        let id = PubId { writer, seq };
        let body = json!({"channel": ROOM, "data": data(id), "idempotency_key": id.to_string()});
        let sent_us = shared.now_us();
        let mut offset = None;
        for attempt in 0..3 {
            if attempt > 0 {
                sleep(Duration::from_millis(300)).await;
            }
            if let Ok(v) = try_api(addr, "publish", &body, OP_TIMEOUT).await {
                if let Some(o) = v["result"]["offset"].as_u64() {
                    offset = Some(o);
                    break;
                }
            }
        }
        record(&shared, id, offset.is_some(), sent_us, offset);
        sleep(pace).await;
    }
}

fn record(shared: &Shared, id: PubId, acked: bool, sent_us: u64, offset: Option<u64>) {
    let done_us = shared.now_us();
    shared.ops.lock().unwrap().push(Op {
        id,
        acked,
        sent_us,
        done_us,
        offset,
    });
}

/// What a member has received, readable by the run while it reads.
#[derive(Default)]
pub(crate) struct MemberState {
    /// Set by the first successful subscribe.
    pub subscribed: bool,
    pub start: u64,
    /// `(offset, publication, arrival in ms on the run's clock)`.
    pub pubs: Vec<(u64, Option<PubId>, u64)>,
    pub reconnects: u32,
    pub unrecovered: u32,
    /// Epoch changes seen on resubscribe: a stream that restarted (history lost).
    pub epoch_changes: u32,
}

/// A member on one node: subscribes, reads every publication push and, whenever its
/// connection fails, reconnects and recovers from its last offset and epoch; when the
/// server cannot recover (`recovered: false`) it pages history up to the position the
/// subscribe reply named, as an application does. It stops reading (stalls, without
/// closing) while `slow_until_ms` is in the future: a slow reader.
pub(crate) struct Member {
    pub name: String,
    pub url: String,
    pub state: Mutex<MemberState>,
    pub slow_until_ms: AtomicU64,
}

impl Member {
    pub(crate) async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let mut client: Option<Client> = None;
        let mut epoch = String::new();
        let mut subscribed_once = false;
        while !shared.stop_reading.load(Ordering::Relaxed) {
            let now_ms = shared.start.elapsed().as_millis() as u64;
            let slow = self.slow_until_ms.load(Ordering::Relaxed);
            if slow > now_ms {
                sleep(Duration::from_millis((slow - now_ms).min(500))).await;
                continue;
            }
            let Some(c) = client.as_mut() else {
                match self.subscribe(&shared, &mut epoch, subscribed_once).await {
                    Ok(c) => {
                        client = Some(c);
                        subscribed_once = true;
                    }
                    Err(_) => sleep(Duration::from_millis(300)).await,
                }
                continue;
            };
            match c.try_next(Duration::from_millis(500)).await {
                Ok(Event::Frame(v)) => {
                    let p = &v["push"]["pub"];
                    if v["push"]["channel"] == ROOM {
                        if let Some(o) = p["offset"].as_u64() {
                            let at = shared.start.elapsed().as_millis() as u64;
                            self.state
                                .lock()
                                .unwrap()
                                .pubs
                                .push((o, pub_id(&p["data"]), at));
                        }
                    }
                }
                Ok(Event::Closed(_)) => client = None,
                Err(e) if e.starts_with("no frame") => {}
                Err(_) => client = None,
            }
        }
    }

    fn last(&self) -> u64 {
        let s = self.state.lock().unwrap();
        s.pubs.iter().map(|p| p.0).max().unwrap_or(s.start)
    }

    /// Connects and subscribes (first time) or recovers (after that).
    async fn subscribe(
        &self,
        shared: &Shared,
        epoch: &mut String,
        recover: bool,
    ) -> Result<Client, String> {
        let mut c = Client::try_connect(&self.url, &self.name, OP_TIMEOUT).await?;
        let last = self.last();
        let cmd = if recover {
            self.state.lock().unwrap().reconnects += 1;
            json!({"subscribe": {"channel": ROOM, "recover": true, "offset": last, "epoch": epoch}})
        } else {
            json!({"subscribe": {"channel": ROOM}})
        };
        let r = c.try_call(cmd, OP_TIMEOUT).await?;
        let s = r
            .get("subscribe")
            .ok_or_else(|| format!("subscribe refused: {r}"))?;
        let reply_epoch = s["epoch"].as_str().unwrap_or_default().to_owned();
        let head = s["offset"].as_u64().unwrap_or(0);
        let at = shared.start.elapsed().as_millis() as u64;
        {
            let mut st = self.state.lock().unwrap();
            if !recover {
                st.start = head;
                st.subscribed = true;
                *epoch = reply_epoch;
                return Ok(c);
            }
            if reply_epoch != *epoch {
                st.epoch_changes += 1;
                *epoch = reply_epoch;
            }
            if s["recovered"] == true {
                for p in s["publications"].as_array().into_iter().flatten() {
                    if let Some(o) = p["offset"].as_u64() {
                        st.pubs.push((o, pub_id(&p["data"]), at));
                    }
                }
                return Ok(c);
            }
            st.unrecovered += 1;
        }
        self.page_history(&mut c, shared, epoch, last, head).await?;
        Ok(c)
    }

    /// Reads history after `from` up to `head` (inclusive) into the view.
    async fn page_history(
        &self,
        c: &mut Client,
        shared: &Shared,
        epoch: &str,
        mut from: u64,
        head: u64,
    ) -> Result<(), String> {
        while from < head {
            let cmd = json!({"history": {"channel": ROOM, "limit": 500,
                "since": {"offset": from, "epoch": epoch}}});
            let r = c.try_call(cmd, OP_TIMEOUT).await?;
            let pubs = r["history"]["publications"]
                .as_array()
                .ok_or_else(|| format!("history failed: {r}"))?;
            if pubs.is_empty() {
                return Err(format!("history after {from} is empty below {head}"));
            }
            let at = shared.start.elapsed().as_millis() as u64;
            let mut st = self.state.lock().unwrap();
            for p in pubs {
                let o = p["offset"].as_u64().unwrap_or(0);
                if o <= head {
                    st.pubs.push((o, pub_id(&p["data"]), at));
                }
                from = from.max(o);
            }
        }
        Ok(())
    }
}
