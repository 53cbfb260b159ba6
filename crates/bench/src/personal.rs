//! `roomcast-bench user-publish`: send-to-user deliveries/s across the nodes of a cluster.
//!
//! `--users` users each connect `--conns-per-user` times, connection `i` of user `u` on node
//! `(u + i) % nodes`, so every user is spread over several nodes. `--publishers` HTTP clients then call
//! `POST /api/user_publish` for `--duration` (publisher `p` on node `p % nodes`, users round-robin),
//! each waiting for its reply. Every connection checks that its personal channel's offsets arrive
//! contiguous; the run reports publications/s, deliveries/s (publications x connections reached) and
//! how many deliveries were missing or out of order once the tail has drained.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::http::HttpConn;
use crate::wire::jwt;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The nodes' HTTP addresses (`127.0.0.1:8000,127.0.0.1:8001,...`).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<SocketAddr>,
    #[arg(long)]
    api_key: String,
    /// HS256 secret of the connection tokens.
    #[arg(long)]
    secret: String,
    #[arg(long, default_value_t = 300)]
    users: u32,
    #[arg(long, default_value_t = 2)]
    conns_per_user: u32,
    #[arg(long, default_value_t = 8)]
    publishers: u32,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Bytes of each publication's payload.
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

/// What every connection adds up.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    out_of_order: AtomicU64,
}

pub(crate) async fn run(a: Args) -> Result<bool> {
    let counts = Arc::new(Counts::default());
    let n = a.nodes.len() as u32;
    let run_id = std::process::id();
    let mut readers = Vec::new();
    for u in 0..a.users {
        for i in 0..a.conns_per_user {
            let node = a.nodes[((u + i) % n) as usize];
            let user = format!("bench-{run_id}-{u}");
            let token = jwt(&a.secret, &user);
            let (ws, _) =
                tokio_tungstenite::connect_async(format!("ws://{node}/connection/websocket"))
                    .await
                    .with_context(|| format!("connect to {node}"))?;
            let (mut tx, mut rx) = ws.split();
            let connect = serde_json::json!({"id": 1, "connect": {"token": token}}).to_string();
            tx.send(Message::text(connect)).await?;
            let counts = counts.clone();
            readers.push(tokio::spawn(async move {
                let mut last = 0u64;
                while let Some(Ok(msg)) = rx.next().await {
                    let Message::Text(text) = msg else { continue };
                    for line in text.as_str().lines() {
                        if line == "{}" {
                            let _ = tx.send(Message::text("{}")).await; // pong
                            continue;
                        }
                        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                        if let Some(o) = v["push"]["pub"]["offset"].as_u64() {
                            if o != last + 1 {
                                counts.out_of_order.fetch_add(1, Relaxed);
                            }
                            last = o;
                            counts.delivered.fetch_add(1, Relaxed);
                        }
                    }
                }
            }));
        }
    }
    // Let every connect reply and registry entry land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.duration);
    let data = "x".repeat(a.payload);
    let started = Instant::now();
    let mut pubs = Vec::new();
    for p in 0..a.publishers {
        let addr = a.nodes[(p % n) as usize];
        let (key, data, published) = (a.api_key.clone(), data.clone(), published.clone());
        let (users, step) = (a.users, a.publishers);
        pubs.push(tokio::spawn(async move {
            let mut http = HttpConn::connect(addr).await?;
            let mut u = p % users;
            while Instant::now() < deadline {
                let body = serde_json::json!({"user": format!("bench-{run_id}-{u}"), "data": data});
                let (status, reply) = http
                    .post(
                        "/api/user_publish",
                        &[("X-API-Key", &key)],
                        &body.to_string(),
                    )
                    .await?;
                if status != 200 || reply.windows(8).any(|w| w == b"\"error\":") {
                    bail!(
                        "user_publish: HTTP {status}: {}",
                        String::from_utf8_lossy(&reply)
                    );
                }
                published.fetch_add(1, Relaxed);
                u = (u + step) % users;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for p in pubs {
        p.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let published = published.load(Relaxed);
    let expected = published * u64::from(a.conns_per_user);
    // The tail: wait (at most 10 s) until every delivery arrived.
    let tail = Instant::now();
    while counts.delivered.load(Relaxed) < expected && tail.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = counts.delivered.load(Relaxed);
    let disorder = counts.out_of_order.load(Relaxed);
    println!(
        "user_publish: {} nodes, {} users x {} connections, {} publishers, {:.1} s",
        n, a.users, a.conns_per_user, a.publishers, secs
    );
    println!(
        "  publications {published} ({:.0}/s), deliveries {delivered} of {expected} ({:.0}/s), out of order {disorder}, tail {:.2} s",
        published as f64 / secs,
        delivered as f64 / secs,
        tail.elapsed().as_secs_f64()
    );
    for r in readers {
        r.abort();
    }
    Ok(delivered == expected && disorder == 0)
}
