//! The socket-level protocol fuzzer: one node (SQLite), many connections sending
//! malformed, truncated, oversized, fragmented and out-of-order WebSocket frames and JSON
//! commands ([`gen`]), while
//! - a canary client subscribed to its own room must receive every publication a publisher
//!   sends through the server API, each offset once and in order;
//! - a probe connects and pings every two seconds, and every API publish must be answered
//!   within 5 s (no hang);
//! - the node must stay up, write no `panicked` line, and keep its RSS (from
//!   `/proc/PID/status`) under a bound;
//! - on a quarter as many checked connections again ([`replies`]), every command with an id
//!   gets its reply within 5 s, or the connection is closed with a documented code.
//!
//! Any of these is a finding; the run exits non-zero on one.

mod gen;
mod replies;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastrand::Rng;
use roomcast_testkit::{token, try_api, Client, Event, Node};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

const CANARY: &str = "canary";
/// The rooms fuzzing connections use (the canary's room is not one of them: deeply
/// nested data published there would be the fuzzer's doing, not the server's).
const ROOMS: &[&str] = &["fuzz", "fuzz-b", "fuzz:x", "", "$private", "fuzz-deep"];

pub(crate) struct Options {
    pub seconds: u64,
    pub seed: u64,
    pub connections: usize,
    pub max_rss_mib: u64,
}

#[derive(Default)]
struct Shared {
    findings: Mutex<Vec<String>>,
    stop: AtomicBool,
    frames: AtomicU64,
    sessions: AtomicU64,
    /// Commands with an id the reply check waited for, and those answered in time.
    checked: AtomicU64,
    answered: AtomicU64,
}

impl Shared {
    fn finding(&self, what: String) {
        eprintln!("FINDING: {what}");
        let mut f = self.findings.lock().unwrap();
        if f.len() < 100 {
            f.push(what);
        }
    }
}

/// Runs the fuzzer; returns whether it found anything.
pub(crate) async fn run(o: Options) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[default_namespace]\nallow_publish_for_client = true\n",
    )
    .unwrap();
    let node = tokio::task::block_in_place(|| Node::builder().arg("--config").arg(&config).start());
    let shared = Arc::new(Shared::default());
    let url = node.ws_url();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(o.seconds);

    let acked = Arc::new(AtomicU64::new(0));
    let canary_last = Arc::new(AtomicU64::new(0));
    let canary = tokio::spawn(canary(url.clone(), shared.clone(), canary_last.clone()));
    sleep(Duration::from_millis(500)).await;
    let publisher = tokio::spawn(publisher(node.addr, shared.clone(), acked.clone()));
    let probe = tokio::spawn(probe(url.clone(), shared.clone()));
    let mut fuzzers = Vec::new();
    for i in 0..o.connections {
        let seed = o.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        fuzzers.push(tokio::spawn(fuzzer(node.addr, seed, shared.clone())));
    }
    for i in 0..(o.connections / 4).max(1) {
        let seed = o.seed.wrapping_mul(1_000_033).wrapping_add(i as u64);
        fuzzers.push(tokio::spawn(checker(node.addr, seed, shared.clone())));
    }

    let mut max_rss = 0;
    let mut log_lines = 0u64;
    while Instant::now() < deadline && !shared.stop.load(Ordering::Relaxed) {
        watch(&node, &o, &shared, &mut max_rss, &mut log_lines);
        sleep(Duration::from_millis(500)).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    for f in fuzzers {
        let _ = f.await;
    }
    let _ = publisher.await;
    let _ = probe.await;
    // The canary must reach the last acknowledged offset.
    let last = acked.load(Ordering::Relaxed);
    let wait = Instant::now() + Duration::from_secs(10);
    while canary_last.load(Ordering::Relaxed) < last && Instant::now() < wait {
        sleep(Duration::from_millis(100)).await;
    }
    let got = canary_last.load(Ordering::Relaxed);
    if got < last {
        shared.finding(format!(
            "canary at offset {got}, publisher acked up to {last}"
        ));
    }
    canary.abort();
    watch(&node, &o, &shared, &mut max_rss, &mut log_lines);

    let findings = shared.findings.lock().unwrap().clone();
    println!(
        "roomcast fuzz: seed {}, {} s, {} connections, {} sessions, {} frames/messages sent, \
         canary received {got} of {last} publications, {} of {} commands with an id answered \
         (the others closed with a documented code), max RSS {} MiB (bound {}), load average {}",
        o.seed,
        o.seconds,
        o.connections,
        shared.sessions.load(Ordering::Relaxed),
        shared.frames.load(Ordering::Relaxed),
        shared.answered.load(Ordering::Relaxed),
        shared.checked.load(Ordering::Relaxed),
        max_rss / 1024,
        o.max_rss_mib,
        crate::run::load_average(),
    );
    println!("findings: {}", findings.len());
    for f in &findings {
        println!("  {f}");
    }
    !findings.is_empty()
}

/// The node's health: alive, no panic in its log, RSS (KiB) under the bound.
fn watch(node: &Node, o: &Options, shared: &Shared, max_rss: &mut u64, lines: &mut u64) {
    for line in node.logs().try_iter() {
        *lines += 1;
        if line.contains("panicked") {
            shared.finding(format!("panic in the node log: {line}"));
        }
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
    };
    if field("State:").is_none_or(|s| s.starts_with('Z') || s.starts_with('X')) {
        shared.finding("the node exited".into());
        shared.stop.store(true, Ordering::Relaxed);
        return;
    }
    let rss: u64 = field("VmRSS:")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    *max_rss = (*max_rss).max(rss);
    if rss > o.max_rss_mib * 1024 {
        shared.finding(format!(
            "node RSS {} MiB over the bound {} MiB",
            rss / 1024,
            o.max_rss_mib
        ));
        shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Publishes to the canary's room through the API every 20 ms; an answer must come
/// within 5 s.
async fn publisher(addr: SocketAddr, shared: Arc<Shared>, acked: Arc<AtomicU64>) {
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let body = json!({"channel": CANARY, "data": {"n": n}});
        match try_api(addr, "publish", &body, Duration::from_secs(5)).await {
            Ok(v) => match v["result"]["offset"].as_u64() {
                Some(o) => acked.fetch_max(o, Ordering::Relaxed),
                None => {
                    shared.finding(format!("canary publish {n} refused: {v}"));
                    0
                }
            },
            Err(e) => {
                shared.finding(format!("canary publish {n}: {e}"));
                0
            }
        };
        sleep(Duration::from_millis(20)).await;
    }
}

/// The canary: every offset of its room, once, in order; a close is a finding (then it
/// recovers and goes on checking).
async fn canary(url: String, shared: Arc<Shared>, last: Arc<AtomicU64>) {
    let mut epoch = String::new();
    let mut first = true;
    loop {
        let mut c = match Client::try_connect(&url, "canary", Duration::from_secs(5)).await {
            Ok(c) => c,
            Err(e) => {
                shared.finding(format!("canary cannot connect: {e}"));
                sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let at = last.load(Ordering::Relaxed);
        let cmd = if first {
            json!({"subscribe": {"channel": CANARY}})
        } else {
            json!({"subscribe": {"channel": CANARY, "recover": true, "offset": at, "epoch": epoch}})
        };
        let r = match c.try_call(cmd, Duration::from_secs(5)).await {
            Ok(r) => r,
            Err(e) => {
                shared.finding(format!("canary subscribe: {e}"));
                continue;
            }
        };
        let s = &r["subscribe"];
        epoch = s["epoch"].as_str().unwrap_or_default().to_owned();
        if first {
            last.store(s["offset"].as_u64().unwrap_or(0), Ordering::Relaxed);
            first = false;
        } else if s["recovered"] != true {
            shared.finding(format!("canary recovery refused: {r}"));
        }
        for p in s["publications"].as_array().into_iter().flatten() {
            check_offset(p["offset"].as_u64(), &last, &shared);
        }
        loop {
            match c.try_next(Duration::from_secs(10)).await {
                Ok(Event::Frame(v)) if v["push"]["channel"] == CANARY => {
                    if v["push"].get("pub").is_some() {
                        check_offset(v["push"]["pub"]["offset"].as_u64(), &last, &shared);
                    }
                }
                Ok(Event::Frame(_)) => {}
                Ok(Event::Closed(code)) => {
                    shared.finding(format!("canary closed by the server ({code:?})"));
                    break;
                }
                Err(e) => {
                    if !shared.stop.load(Ordering::Relaxed) {
                        shared.finding(format!("canary: {e}"));
                    }
                    break;
                }
            }
        }
    }
}

fn check_offset(offset: Option<u64>, last: &AtomicU64, shared: &Shared) {
    let Some(o) = offset else {
        shared.finding("canary publication without an offset".into());
        return;
    };
    let prev = last.load(Ordering::Relaxed);
    if o != prev + 1 {
        shared.finding(format!("canary got offset {o} after {prev}"));
    }
    last.store(prev.max(o), Ordering::Relaxed);
}

/// Connects and pings every 2 s; each must be answered within 5 s.
async fn probe(url: String, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let ok = match Client::try_connect(&url, "probe", Duration::from_secs(5)).await {
            Ok(mut c) => c
                .try_call(json!({"ping": {}}), Duration::from_secs(5))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = ok {
            shared.finding(format!("probe after {:?}: {e}", t.elapsed()));
        }
        sleep(Duration::from_secs(2)).await;
    }
}

/// One fuzzing connection after another until the run stops.
async fn fuzzer(addr: SocketAddr, seed: u64, shared: Arc<Shared>) {
    let mut rng = Rng::with_seed(seed);
    while !shared.stop.load(Ordering::Relaxed) {
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        let _ = timeout(Duration::from_secs(20), session(addr, &mut rng, &shared)).await;
    }
}

/// One reply-checked connection after another until the run stops.
async fn checker(addr: SocketAddr, seed: u64, shared: Arc<Shared>) {
    let mut rng = Rng::with_seed(seed);
    while !shared.stop.load(Ordering::Relaxed) {
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        let run = timeout(
            Duration::from_secs(30),
            replies::session(addr, &mut rng, &shared),
        );
        if run.await.is_err() {
            shared.finding("reply check: a checked session took over 30 s".into());
        }
    }
}

/// One connection: an upgrade (sometimes broken), then a burst of frames, then an end
/// (abrupt, a close frame, or half a frame).
async fn session(addr: SocketAddr, rng: &mut Rng, shared: &Shared) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let (req, valid) = gen::upgrade(rng, &addr.to_string());
    s.write_all(&req).await?;
    let mut buf = vec![0u8; 64 << 10];
    if !valid {
        let _ = timeout(Duration::from_millis(500), s.read(&mut buf)).await;
        return Ok(());
    }
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Ok(());
    }
    let user = format!("fuzz{}", rng.u32(0..50));
    let tok = token(&user);
    if rng.u8(0..4) > 0 {
        // Usually connected first, so the commands reach past the connect check.
        let connect = json!({"id": 1, "connect": {"token": tok}}).to_string();
        s.write_all(&gen::text(rng, &connect)).await?;
    }
    let reads = rng.u8(0..4) > 0; // a quarter of the connections never read
    for _ in 0..rng.usize(1..40) {
        let room = ROOMS[rng.usize(0..ROOMS.len())];
        let bytes = step(rng, &tok, room);
        shared.frames.fetch_add(1, Ordering::Relaxed);
        timeout(Duration::from_secs(2), s.write_all(&bytes)).await??;
        if reads {
            while let Ok(Ok(n)) = timeout(Duration::from_millis(5), s.read(&mut buf)).await {
                if n == 0 {
                    return Ok(());
                }
            }
        }
    }
    match rng.u8(0..3) {
        0 => {
            let close = gen::frame(rng, true, 0, gen::CLOSE, &1000u16.to_be_bytes(), true);
            s.write_all(&close).await?;
        }
        1 => s.write_all(&[0x81, 0xFE, 0x10]).await?, // half a header
        _ => {}
    }
    Ok(())
}

/// One thing to send: a frame, a few, or bytes that are not a frame at all.
fn step(rng: &mut Rng, tok: &str, room: &str) -> Vec<u8> {
    let cmd = |rng: &mut Rng| gen::command(rng, tok, room);
    match rng.u8(0..16) {
        0..=4 => {
            let c = cmd(rng);
            gen::text(rng, &c)
        }
        5 => {
            let many: Vec<String> = (0..rng.usize(2..20)).map(|_| cmd(rng)).collect();
            let sep = if rng.bool() { "\n" } else { "\n\n" };
            gen::text(rng, &many.join(sep))
        }
        6 => {
            let c = cmd(rng);
            fragmented(rng, &c)
        }
        7 => gen::random_bytes(rng, 300),
        8 => {
            let b = gen::random_bytes(rng, 300);
            gen::frame(rng, true, 0, gen::TEXT, &b, true)
        }
        9 => gen::lying_length(rng),
        10 => {
            let big = format!(
                r#"{{"id":9,"publish":{{"channel":"fuzz","data":"{}"}}}}"#,
                "y".repeat(rng.usize(60_000..400_000))
            );
            gen::text(rng, &big)
        }
        11 => {
            let c = cmd(rng);
            let (rsv, op, masked) = match rng.u8(0..3) {
                0 => (0, gen::TEXT, false),
                1 => (rng.u8(1..8), gen::TEXT, true),
                _ => ([3, 4, 5, 6, 7, 0xB, 0xC, 0xF][rng.usize(0..8)], 0, true),
            };
            let op = if op == 0 { rsv } else { op };
            let rsv = if op == rsv { 0 } else { rsv };
            gen::frame(rng, true, rsv, op, c.as_bytes(), masked)
        }
        12 => {
            let mut p = match rng.u8(0..4) {
                0 => vec![],
                1 => vec![0x03],
                2 => rng.u16(..).to_be_bytes().to_vec(),
                _ => [&[0x03, 0xE8][..], &gen::random_bytes(rng, 200)].concat(),
            };
            p.truncate(if rng.bool() { 125 } else { 400 });
            gen::frame(rng, true, 0, gen::CLOSE, &p, true)
        }
        13 => {
            let p = gen::random_bytes(rng, 300);
            let op = if rng.bool() { gen::PING } else { gen::PONG };
            let fin = rng.bool();
            gen::frame(rng, fin, 0, op, &p, true)
        }
        14 => {
            let b = gen::random_bytes(rng, 100);
            gen::frame(rng, true, 0, gen::BINARY, &b, true)
        }
        _ => {
            let c = cmd(rng);
            gen::frame(rng, true, 0, gen::CONT, c.as_bytes(), true)
        }
    }
}

/// A text message in pieces, sometimes with a control frame, a new data frame or a close
/// between them, or without its first or last piece.
fn fragmented(rng: &mut Rng, msg: &str) -> Vec<u8> {
    let bytes = msg.as_bytes();
    let pieces = rng.usize(2..6).min(bytes.len().max(2));
    let chunk = bytes.len().div_ceil(pieces).max(1);
    let parts: Vec<&[u8]> = bytes.chunks(chunk).collect();
    let skip_first = rng.u8(0..8) == 0;
    let skip_last = rng.u8(0..8) == 0;
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if (i == 0 && skip_first) || (last && skip_last) {
            continue;
        }
        let op = if i == 0 { gen::TEXT } else { gen::CONT };
        out.extend(gen::frame(rng, last, 0, op, part, true));
        match rng.u8(0..8) {
            0 => out.extend(gen::frame(rng, true, 0, gen::PING, b"p", true)),
            1 => out.extend(gen::frame(
                rng,
                true,
                0,
                gen::CLOSE,
                &1000u16.to_be_bytes(),
                true,
            )),
            2 => out.extend(gen::text(rng, r#"{"id":5,"ping":{}}"#)),
            _ => {}
        }
    }
    out
}
