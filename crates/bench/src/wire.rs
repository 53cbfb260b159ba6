//! The lean client side of every protocol the bench speaks: opening a WebSocket from a chosen loopback
//! source address, joining a room, encoding publishes and decoding what arrives.
//!
//! Everything protocol-specific lives here so the member and publisher loops stay protocol-agnostic.
//! The payload is the same JSON object for every target, `{"r":room,"s":seq,"t":unix_ns,"p":"xxx"}`,
//! so a delivery can be checked (room, sequence) and timed (publish instant) the same way everywhere.
//! The per-message encoding and decoding live in `codec`; roomcast's protobuf format (`proto=1`)
//! lives in `pb`.

pub(crate) use crate::codec::{decode, publish_frame};

use crate::target::{Kind, Target};
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// How long one join handshake may take before the member counts it as failed and retries.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Wall-clock nanoseconds; publisher and members may be different processes on one machine, so the
/// shared clock is the system clock, not a per-process `Instant`.
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) fn channel(room: u32) -> String {
    format!("room{room}")
}

/// The bench payload, `size` bytes long at least (padding in `p`).
pub(crate) fn payload(room: u32, seq: u64, size: usize) -> String {
    let mut s = format!("{{\"r\":{room},\"s\":{seq},\"t\":{},\"p\":\"", now_ns());
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

#[derive(Deserialize, Debug, Clone, Copy)]
pub(crate) struct Payload {
    pub r: u32,
    pub s: u64,
    pub t: u64,
}

/// Mints an HS256 connection JWT `{"sub":user,"exp":now+1d}` (roomcast `--token-hmac-secret`).
pub(crate) fn jwt(secret: &str, user: &str) -> String {
    let exp = now_ns() / 1_000_000_000 + 86_400;
    let head = B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = B64URL.encode(serde_json::json!({"sub": user, "exp": exp}).to_string());
    let signing = format!("{head}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing.as_bytes());
    format!("{signing}.{}", B64URL.encode(mac.finalize().into_bytes()))
}

/// Opens a WebSocket to `addr` from source address `src` with small buffers: the bench holds tens of
/// thousands of these, and tungstenite's 128 KiB defaults would dominate its own memory.
pub(crate) async fn open(src: Ipv4Addr, addr: SocketAddr, path: &str) -> Result<Ws> {
    let sock = TcpSocket::new_v4()?;
    // From 127.0.0.1 the kernel picks the port at connect time, per destination, and may reuse
    // loopback TIME_WAIT ports; an explicit bind(port 0) would search the whole port range on every
    // connect once earlier runs left thousands in TIME_WAIT (seconds of system CPU per 10k joins).
    // Other source addresses (runs past ~20k connections) need the bind, and SO_REUSEADDR lets it
    // take ports still in TIME_WAIT.
    if src != Ipv4Addr::LOCALHOST {
        sock.set_reuseaddr(true)?;
        sock.bind(SocketAddr::new(src.into(), 0))
            .with_context(|| format!("bind {src}"))?;
    }
    let stream = sock
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr} from {src}"))?;
    stream.set_nodelay(true)?;
    no_time_wait(&stream)?;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}{path}"),
        stream,
        Some(cfg),
    )
    .await?;
    Ok(ws)
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN, so a closed bench connection leaves no
/// TIME_WAIT behind on the bench's side. Those piled up by the tens of thousands between cases
/// (a storm closes every connection twice) and made each later `bind(port 0)` from 127.0.0.2+
/// scan the whole port range: a run's second 15,000-member case joined at ~500/s instead of
/// ~9,000/s, on every target, whichever ran second. The server sees the close at once either
/// way, as it would see a FIN (a phone that loses its network sends neither: that is the
/// keepalive's case, not the storm's). Zero linger never blocks on drop.
pub(crate) fn no_time_wait(stream: &TcpStream) -> Result<()> {
    stream.set_zero_linger()?;
    Ok(())
}

/// The URL path a connection of `target` uses; `publisher` matters only to the limit server.
pub(crate) fn path(target: &Target, room: u32, publisher: bool) -> String {
    match target.kind {
        Kind::Roomcast if target.proto => format!("/connection/websocket{}", crate::pb::QUERY),
        Kind::Roomcast => "/connection/websocket".into(),
        Kind::Limit => format!("/ws?room={room}{}", if publisher { "&pub=1" } else { "" }),
        Kind::SocketIo => "/socket.io/?EIO=4&transport=websocket".into(),
        Kind::Pusher => format!(
            "/app/{}?protocol=7&client=js&version=8.4.0&flash=false",
            target.app_key.as_deref().unwrap_or_default()
        ),
    }
}

/// Where a roomcast subscription stands, so a reconnect can ask to recover from there.
#[derive(Clone, Debug, Default)]
pub(crate) struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// Result of joining a room.
#[derive(Debug, Default)]
pub(crate) struct Joined {
    pub position: Option<Position>,
    /// roomcast only: Some(recovered flag) when recovery was asked for.
    pub recovered: Option<bool>,
    /// Publications that came with the join (recovery) or arrived while joining.
    pub backlog: Vec<Delivery>,
}

/// What one incoming message means to the bench.
#[derive(Debug)]
pub(crate) enum Incoming {
    Delivery(Delivery),
    /// The server pinged; send this text back (protobuf: an empty command, `pb::pong`).
    Ping(&'static str),
    /// A publish was acknowledged (id is None for FIFO acks of the limit server).
    Ack {
        id: Option<u64>,
        ok: bool,
    },
    /// The reply to a member's own command (a chat `rpc`): ok, or an error. Publish acks are `Ack`.
    Reply {
        ok: bool,
    },
    /// A roomcast join or leave push.
    JoinLeave,
    Other,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    pub payload: Payload,
    /// roomcast stream offset, for recovery.
    pub offset: Option<u64>,
}

/// What a roomcast subscription asks for beyond the publications (other protocols ignore it).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ask {
    /// `join_leave: true`: join and leave pushes of the room.
    pub join_leave: bool,
    /// `data: {"digest": true}`: at most one publication per digest interval, the newest.
    pub digest: bool,
}

/// Connects (and authenticates where needed) and subscribes to `room`; `recover` asks roomcast to
/// resume from a position. Pings that arrive meanwhile are answered.
pub(crate) async fn join(
    ws: &mut Ws,
    target: &Target,
    room: u32,
    user: &str,
    recover: Option<&Position>,
    ask: Ask,
) -> Result<Joined> {
    tokio::time::timeout(
        JOIN_TIMEOUT,
        join_inner(ws, target, room, user, recover, ask),
    )
    .await
    .map_err(|_| anyhow!("join timed out"))?
}

async fn join_inner(
    ws: &mut Ws,
    target: &Target,
    room: u32,
    user: &str,
    recover: Option<&Position>,
    ask: Ask,
) -> Result<Joined> {
    let ch = channel(room);
    let mut joined = Joined::default();
    match target.kind {
        Kind::Limit => {}
        Kind::Roomcast if target.proto => {
            joined = crate::pb::join(ws, token(target, user), room, recover, ask).await?;
        }
        Kind::Roomcast => {
            hello(ws, target, user).await?;
            let mut sub = serde_json::json!({"channel": ch});
            if ask.join_leave {
                sub["join_leave"] = true.into();
            }
            if ask.digest {
                sub["data"] = serde_json::json!({"digest": true});
            }
            if let Some(p) = recover {
                sub["recover"] = true.into();
                sub["offset"] = p.offset.into();
                sub["epoch"] = p.epoch.clone().into();
            }
            ws.send(Message::text(
                serde_json::json!({"id":2,"subscribe":sub}).to_string(),
            ))
            .await?;
            // Pushes that follow the reply come after the recovered publications it carries.
            let mut after = Joined::default();
            let reply = expect(ws, target, &mut after, |v| {
                v.get("id") == Some(&Value::from(2))
            })
            .await?;
            check_error(&reply, "subscribe")?;
            subscribed(&reply["subscribe"], recover.is_some(), &mut joined)?;
            joined.backlog.append(&mut after.backlog);
        }
        Kind::SocketIo => {
            hello(ws, target, user).await?;
            ws.send(Message::text(format!("420[\"join\",\"{ch}\"]")))
                .await?;
            // `expect` returns at the join ack "430[]" (the Node adapter acks after socket.join).
            expect(ws, target, &mut joined, |_| false).await?;
        }
        Kind::Pusher => {
            hello(ws, target, user).await?;
            let sub = serde_json::json!({"event":"pusher:subscribe","data":{"channel":ch}});
            ws.send(Message::text(sub.to_string())).await?;
            expect_raw(ws, |t| t.contains("pusher_internal:subscription_succeeded")).await?;
        }
    }
    Ok(joined)
}

/// Reads a roomcast subscribe result into `joined`: the position, whether it recovered (when
/// asked to), and the recovered publications (WebSocket and stream members alike).
pub(crate) fn subscribed(r: &Value, asked_recovery: bool, joined: &mut Joined) -> Result<()> {
    joined.position = Some(Position {
        offset: r["offset"].as_u64().unwrap_or(0),
        epoch: r["epoch"].as_str().unwrap_or_default().to_string(),
    });
    if asked_recovery {
        joined.recovered = Some(r["recovered"].as_bool().unwrap_or(false));
    }
    for p in r["publications"].as_array().into_iter().flatten() {
        let payload: Payload = serde_json::from_value(p["data"].clone())
            .context("recovered publication without bench payload")?;
        let offset = p["offset"].as_u64();
        if let (Some(o), Some(pos)) = (offset, joined.position.as_mut()) {
            pos.offset = pos.offset.max(o);
        }
        joined.backlog.push(Delivery { payload, offset });
    }
    Ok(())
}

/// The connection-level handshake without joining a room (publishers use this alone).
pub(crate) async fn hello(ws: &mut Ws, target: &Target, user: &str) -> Result<()> {
    match target.kind {
        Kind::Roomcast if target.proto => crate::pb::hello(ws, token(target, user)).await,
        Kind::Roomcast => {
            let token = token(target, user);
            ws.send(Message::text(
                serde_json::json!({"id":1,"connect":{"token":token}}).to_string(),
            ))
            .await?;
            let mut ignored = Joined::default();
            let reply = expect(ws, target, &mut ignored, |v| {
                v.get("id") == Some(&Value::from(1))
            })
            .await?;
            check_error(&reply, "connect")
        }
        Kind::SocketIo => {
            expect_raw(ws, |t| t.starts_with('0')).await?;
            ws.send(Message::text("40")).await?;
            expect_raw(ws, |t| t.starts_with("40")).await
        }
        Kind::Pusher => expect_raw(ws, |t| t.contains("pusher:connection_established")).await,
        Kind::Limit => Ok(()),
    }
}

/// The connection token of `user` (empty without a secret).
fn token(target: &Target, user: &str) -> String {
    target
        .secret
        .as_deref()
        .map(|s| jwt(s, user))
        .unwrap_or_default()
}

fn check_error(reply: &Value, what: &str) -> Result<()> {
    match reply.get("error") {
        Some(e) => bail!("{what} refused: {e}"),
        None => Ok(()),
    }
}

/// Reads until a message satisfies `done` (roomcast: a JSON reply; Socket.IO: the join ack),
/// answering pings and keeping deliveries that arrive meanwhile.
async fn expect(
    ws: &mut Ws,
    target: &Target,
    joined: &mut Joined,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    loop {
        let text = next_text(ws).await?;
        if target.kind == Kind::SocketIo && text.starts_with("430") {
            return Ok(Value::Null);
        }
        // The reply may share a WebSocket message with pushes that follow it: keep reading the
        // whole message, or those publications would be lost to the member.
        let mut reply = None;
        for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
            if target.kind == Kind::Roomcast && reply.is_none() {
                if let Ok(v) = serde_json::from_str::<Value>(line) {
                    if done(&v) {
                        reply = Some(v);
                        continue;
                    }
                }
            }
            let mut out = Vec::new();
            decode(target.kind, line, &mut out);
            for m in out {
                match m {
                    Incoming::Delivery(d) => joined.backlog.push(d),
                    Incoming::Ping(p) => ws.send(Message::text(p)).await?,
                    _ => {}
                }
            }
        }
        if let Some(v) = reply {
            return Ok(v);
        }
    }
}

async fn expect_raw(ws: &mut Ws, done: impl Fn(&str) -> bool) -> Result<()> {
    loop {
        if done(&next_text(ws).await?) {
            return Ok(());
        }
    }
}

/// Next text message; binary and control frames are skipped, a close is an error.
pub(crate) async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Close(c))) => bail!("closed by server: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_has_three_parts() {
        assert_eq!(jwt("s", "u").split('.').count(), 3);
    }
}
