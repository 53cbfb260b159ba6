//! `roomcast-bench notify`: offline notifications per second delivered to a local webhook
//! receiver, beside the seed example's deliveries per second, in one run.
//!
//! The node under test must be started with its webhook pointing at this command's
//! receiver (`--receiver`, default `127.0.0.1:18190`) and a namespace with
//! `notify_offline` (`--namespace`, default `notify`); see BENCHMARKS.md for the config.
//! Two phases, same shape (the seed's example: a room of `--online` subscribers, 500 by
//! default, published to at `--rate` publications/s, 1,000 by default, through the API):
//!
//! - **off**: a room of the default namespace (no notifications), members = the online
//!   subscribers: the seed example as it is;
//! - **on**: a room of `--namespace` with the same subscribers plus `--offline` members
//!   that never connect, so each publication is POSTed for those.
//!
//! Each phase reports publications/s, deliveries/s (publications x subscribers, counted
//! by the subscribers' sockets) and, in the on phase, notified users/s and requests/s
//! counted by the receiver (signatures checked against `--webhook-secret` when given),
//! from the first publication until everything expected has arrived (at most 60 s of tail).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

use crate::http::HttpConn;
use crate::wire::jwt;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The node's HTTP address.
    #[arg(long, default_value = "127.0.0.1:18100")]
    addr: SocketAddr,
    #[arg(long)]
    api_key: String,
    /// HS256 secret of the connection tokens.
    #[arg(long)]
    secret: String,
    /// Where the built-in webhook receiver listens (the node's `notify_webhook_url`).
    #[arg(long, default_value = "127.0.0.1:18190")]
    receiver: SocketAddr,
    /// `notify_webhook_secret` of the node: when given, every signature is checked.
    #[arg(long)]
    webhook_secret: Option<String>,
    /// The namespace with `notify_offline`.
    #[arg(long, default_value = "notify")]
    namespace: String,
    #[arg(long, default_value_t = 500)]
    online: u32,
    #[arg(long, default_value_t = 500)]
    offline: u32,
    /// Publications per second through the API.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds of publishing per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// HTTP connections publishing (the rate is shared between them). Each waits for its
    /// publish's durable commit before the next, so 4 reached only ~512/s of the 1,000 asked.
    #[arg(long, default_value_t = 32)]
    publishers: u32,
}

/// What the receiver counts.
#[derive(Default)]
struct Received {
    requests: AtomicU64,
    users: AtomicU64,
    bad_signatures: AtomicU64,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Starts the receiver: counts requests, the users they name, bad signatures.
async fn receiver(a: &Args) -> Result<Arc<Received>> {
    let got = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind(a.receiver)
        .await
        .with_context(|| format!("receiver on {}", a.receiver))?;
    let (g, secret) = (got.clone(), a.webhook_secret.clone());
    let on: crate::backend::OnRequest = Arc::new(move |headers, body| {
        if let Some(secret) = &secret {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
            mac.update(body);
            let want = format!("sha256={}", hex(&mac.finalize().into_bytes()));
            let sig = headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("x-roomcast-signature"));
            if sig.is_none_or(|h| h.value != want.as_bytes()) {
                g.bad_signatures.fetch_add(1, Relaxed);
            }
        }
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let users = v["users"].as_array().map_or(0, Vec::len);
        g.users.fetch_add(users as u64, Relaxed);
        g.requests.fetch_add(1, Relaxed);
    });
    tokio::spawn(async move {
        if let Err(e) = crate::backend::serve_on(listener, on).await {
            eprintln!("notify receiver: {e:#}");
        }
    });
    Ok(got)
}

async fn api(http: &mut HttpConn, key: &str, method: &str, body: serde_json::Value) -> Result<()> {
    let (status, reply) = http
        .post(
            &format!("/api/{method}"),
            &[("X-API-Key", key)],
            &body.to_string(),
        )
        .await?;
    if status != 200 || reply.windows(8).any(|w| w == b"\"error\":") {
        bail!(
            "{method}: HTTP {status}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    Ok(())
}

/// Subscribers of `room` counting publications; returns their reader tasks.
async fn subscribers(
    a: &Args,
    room: &str,
    users: &[String],
    delivered: &Arc<AtomicU64>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut readers = Vec::new();
    for user in users {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/connection/websocket", a.addr))
                .await
                .with_context(|| format!("connect to {}", a.addr))?;
        let (mut tx, mut rx) = ws.split();
        let connect = serde_json::json!({"id": 1, "connect": {"token": jwt(&a.secret, user)}});
        let subscribe = serde_json::json!({"id": 2, "subscribe": {"channel": room}});
        tx.send(Message::text(format!("{connect}\n{subscribe}")))
            .await?;
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                let Message::Text(text) = msg else { continue };
                for line in text.as_str().lines() {
                    if line == "{}" {
                        let _ = tx.send(Message::text("{}")).await; // pong
                    } else if line.contains("\"pub\"") {
                        delivered.fetch_add(1, Relaxed);
                    }
                }
            }
        }));
    }
    Ok(readers)
}

/// One phase; returns whether everything expected arrived.
async fn phase(a: &Args, on: bool, got: &Received) -> Result<bool> {
    let run = std::process::id();
    let name = if on { "on" } else { "off" };
    let room = if on {
        format!("{}:bench-{run}", a.namespace)
    } else {
        format!("bench-notify-{run}")
    };
    let online: Vec<String> = (0..a.online).map(|i| format!("on-{run}-{i}")).collect();
    let offline: Vec<String> = if on {
        (0..a.offline).map(|i| format!("off-{run}-{i}")).collect()
    } else {
        Vec::new()
    };
    let mut http = HttpConn::connect(a.addr).await?;
    for chunk in online.chunks(1000).chain(offline.chunks(1000)) {
        let body = serde_json::json!({"channel": room, "users": chunk});
        api(&mut http, &a.api_key, "add_members", body).await?;
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let readers = subscribers(a, &room, &online, &delivered).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (users0, requests0) = (got.users.load(Relaxed), got.requests.load(Relaxed));
    let published = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.duration);
    let every = Duration::from_secs_f64(f64::from(a.publishers.max(1)) / f64::from(a.rate.max(1)));
    let mut pubs = Vec::new();
    for _ in 0..a.publishers.max(1) {
        let (key, room, published, addr) =
            (a.api_key.clone(), room.clone(), published.clone(), a.addr);
        pubs.push(tokio::spawn(async move {
            let mut http = HttpConn::connect(addr).await?;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while Instant::now() < deadline {
                tick.tick().await;
                let body = serde_json::json!({"channel": room, "data": {"t": "x"}});
                api(&mut http, &key, "publish", body).await?;
                published.fetch_add(1, Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for p in pubs {
        p.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let published = published.load(Relaxed);
    let want_deliveries = published * u64::from(a.online);
    let want_users = published * offline.len() as u64;
    let tail = Instant::now();
    let users = || got.users.load(Relaxed) - users0;
    while (delivered.load(Relaxed) < want_deliveries || users() < want_users)
        && tail.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = started.elapsed().as_secs_f64();
    let (delivered, users) = (delivered.load(Relaxed), users());
    let requests = got.requests.load(Relaxed) - requests0;
    println!(
        "notify {name}: room of {} online + {} offline members, {published} publications in {secs:.1} s ({:.0}/s)",
        a.online,
        offline.len(),
        published as f64 / secs
    );
    println!(
        "  deliveries {delivered} of {want_deliveries} ({:.0}/s); notified users {users} of {want_users} ({:.0}/s) in {requests} requests ({:.0}/s); tail {:.2} s",
        delivered as f64 / secs,
        users as f64 / all,
        requests as f64 / all,
        tail.elapsed().as_secs_f64()
    );
    for r in readers {
        r.abort();
    }
    Ok(delivered == want_deliveries && users >= want_users)
}

pub(crate) async fn run(a: Args) -> Result<bool> {
    let got = receiver(&a).await?;
    let off = phase(&a, false, &got).await?;
    let on = phase(&a, true, &got).await?;
    let bad = got.bad_signatures.load(Relaxed);
    if bad > 0 {
        println!("  {bad} requests with a bad signature");
    }
    Ok(off && on && bad == 0)
}
