//! `roomcast-bench chat-cost`: the cost of the chat layer's reads for one user in many rooms,
//! against a running roomcast node: the latency of `roomcast.read` (a cursor that moves, so
//! each one also publishes the user's cursor event) and of a full `roomcast.rooms` listing
//! (every page), over one WebSocket, one call at a time (latency, not throughput).
//!
//! Setup through the server API: the user becomes a member of `rooms` rooms, each with one
//! publication. Figures are printed as microsecond percentiles.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::http::HttpConn;
use crate::target::Target;
use crate::wire::{self, Ws};

#[derive(clap::Args)]
pub(crate) struct ChatArgs {
    /// A roomcast node's address.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    api_key: String,
    /// The node's `--token-hmac-secret`.
    #[arg(long)]
    secret: String,
    /// Rooms the user is a member of.
    #[arg(long, default_value_t = 1000)]
    rooms: u32,
    /// Full room listings to time.
    #[arg(long, default_value_t = 50)]
    listings: u32,
}

async fn api(http: &mut HttpConn, key: &str, method: &str, body: Value) -> Result<Value> {
    let (status, body) = http
        .post(
            &format!("/api/{method}"),
            &[("X-API-Key", key)],
            &body.to_string(),
        )
        .await?;
    let v: Value = serde_json::from_slice(&body)?;
    if status != 200 || v.get("error").is_some() {
        bail!("{method}: HTTP {status}: {v}");
    }
    Ok(v)
}

/// Chat targets (`chat=1`): makes every member `m<idx>` of the fleet (room `idx % rooms`) and each
/// room's publisher `p<room>` a member of its room, up to the server's 1,000 users per call.
pub(crate) async fn add_fleet_members(target: &Target, members: u32, rooms: u32) -> Result<()> {
    let key = target
        .api_key
        .as_deref()
        .context("chat target without api_key")?;
    let mut http = HttpConn::connect(target.addr()).await?;
    let rooms = rooms.max(1);
    for room in 0..rooms {
        let mut users: Vec<String> = (room..members)
            .step_by(rooms as usize)
            .map(|i| format!("m{i}"))
            .collect();
        users.push(format!("p{room}"));
        for chunk in users.chunks(1000) {
            api(
                &mut http,
                key,
                "add_members",
                json!({"channel": wire::channel(room), "users": chunk}),
            )
            .await?;
        }
    }
    Ok(())
}

/// One command, its reply (pushes before it are skipped).
async fn call(ws: &mut Ws, id: u32, mut cmd: Value) -> Result<Value> {
    cmd["id"] = json!(id);
    ws.send(Message::text(cmd.to_string())).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            for line in t.as_str().split('\n') {
                let v: Value = serde_json::from_str(line)?;
                if v["id"] == json!(id) {
                    if v.get("error").is_some() {
                        bail!("command failed: {v}");
                    }
                    return Ok(v);
                }
            }
        }
    }
    bail!("connection closed")
}

fn report(what: &str, h: &Histogram<u64>) {
    println!(
        "{what}: n={} p50={}us p90={}us p99={}us max={}us mean={:.0}us",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max(),
        h.mean()
    );
}

pub(crate) async fn run(a: ChatArgs) -> Result<bool> {
    let user = format!("bench-chat-{}", wire::now_ns() % 1_000_000_007);
    let room = |i: u32| format!("{user}-room-{i}");
    let mut http = HttpConn::connect(a.addr).await?;
    eprintln!("setup: {} rooms, one publication each", a.rooms);
    for i in 0..a.rooms {
        api(
            &mut http,
            &a.api_key,
            "add_members",
            json!({"channel": room(i), "users": [user]}),
        )
        .await?;
        api(
            &mut http,
            &a.api_key,
            "publish",
            json!({"channel": room(i), "data": {"text": "hello", "i": i}}),
        )
        .await?;
    }
    let mut ws = wire::open(Ipv4Addr::LOCALHOST, a.addr, "/connection/websocket").await?;
    let token = wire::jwt(&a.secret, &user);
    call(&mut ws, 1, json!({"connect": {"token": token}}))
        .await
        .context("connect")?;
    let mut id = 1;
    let mut next_id = || {
        id += 1;
        id
    };

    let mut listing = Histogram::<u64>::new(3)?;
    let mut page = Histogram::<u64>::new(3)?;
    for _ in 0..a.listings {
        let started = Instant::now();
        let mut after: Option<String> = None;
        let mut seen = 0;
        loop {
            let mut data = json!({"limit": 200});
            if let Some(n) = &after {
                data["after"] = json!(n);
            }
            let t = Instant::now();
            let r = call(
                &mut ws,
                next_id(),
                json!({"rpc": {"method": "roomcast.rooms", "data": data}}),
            )
            .await?;
            page.record(t.elapsed().as_micros() as u64)?;
            let d = &r["rpc"]["data"];
            seen += d["rooms"].as_array().map_or(0, Vec::len);
            match d["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => break,
            }
        }
        listing.record(started.elapsed().as_micros() as u64)?;
        if seen != a.rooms as usize {
            bail!("listing saw {seen} rooms, expected {}", a.rooms);
        }
    }

    let mut read = Histogram::<u64>::new(3)?;
    for i in 0..a.rooms {
        let t = Instant::now();
        let r = call(
            &mut ws,
            next_id(),
            json!({"rpc": {"method": "roomcast.read", "data": {"channel": room(i), "offset": 1}}}),
        )
        .await?;
        read.record(t.elapsed().as_micros() as u64)?;
        if r["rpc"]["data"]["unread"] != 0 {
            bail!("read left unread: {r}");
        }
    }
    let r = call(
        &mut ws,
        next_id(),
        json!({"rpc": {"method": "roomcast.unread", "data": {}}}),
    )
    .await?;
    let total = &r["rpc"]["data"]["total"];
    report("roomcast.rooms page (up to 200 rooms)", &page);
    report(
        &format!("roomcast.rooms full listing ({} rooms)", a.rooms),
        &listing,
    );
    report("roomcast.read (cursor moved + event)", &read);
    println!("total unread after reading every room: {total}");
    Ok(total == &json!(0))
}
