//! What the fuzzer sends: WebSocket frames built by hand (so they can be malformed,
//! truncated, oversized, fragmented, unmasked or out of order) and JSON commands that are
//! valid, almost valid (wrong field types, huge ids, unknown methods) or random.

use fastrand::Rng;
use serde_json::{json, Map, Value};

pub(super) const TEXT: u8 = 0x1;
pub(super) const BINARY: u8 = 0x2;
pub(super) const CONT: u8 = 0x0;
pub(super) const CLOSE: u8 = 0x8;
pub(super) const PING: u8 = 0x9;
pub(super) const PONG: u8 = 0xA;

/// A client frame: `fin`, `rsv` bits (0 for valid), opcode, masked unless told not to.
pub(super) fn frame(
    rng: &mut Rng,
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    masked: bool,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(((fin as u8) << 7) | ((rsv & 7) << 4) | (opcode & 0xF));
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key: [u8; 4] = rng.u32(..).to_be_bytes();
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A valid masked final text frame.
pub(super) fn text(rng: &mut Rng, s: &str) -> Vec<u8> {
    frame(rng, true, 0, TEXT, s.as_bytes(), true)
}

/// A frame header that claims `len` bytes (up to 2^64-1), followed by only a few.
pub(super) fn lying_length(rng: &mut Rng) -> Vec<u8> {
    let mut f = vec![0x81, 0xFF];
    let len = match rng.u8(0..3) {
        0 => u64::MAX,
        1 => 1 << 63,
        _ => rng.u64(70_000..200_000_000),
    };
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&rng.u32(..).to_be_bytes());
    f.extend((0..rng.usize(0..64)).map(|_| rng.u8(..)));
    f
}

pub(super) fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    (0..rng.usize(0..max)).map(|_| rng.u8(..)).collect()
}

pub(super) fn random_string(rng: &mut Rng) -> String {
    match rng.u8(0..6) {
        0 => String::new(),
        1 => "x".repeat(rng.usize(200..5000)),
        2 => "é\u{0}\u{FFFF}🎉".repeat(rng.usize(1..20)),
        3 => "*".repeat(rng.usize(1..40)),
        _ => (0..rng.usize(1..20)).map(|_| rng.alphanumeric()).collect(),
    }
}

/// A random JSON value, nested at most `depth` deep.
pub(super) fn random_json(rng: &mut Rng, depth: u32) -> Value {
    match rng.u8(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => match rng.u8(0..5) {
            0 => json!(u64::MAX),
            1 => json!(i64::MIN),
            2 => json!(rng.f64() * 1e300),
            3 => json!(-1),
            _ => json!(rng.u32(..)),
        },
        3 | 4 => json!(random_string(rng)),
        5 => Value::Array(
            (0..rng.usize(0..5))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.usize(0..5) {
                m.insert(random_string(rng), random_json(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

const METHODS: &[&str] = &[
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
];

/// A command object (sometimes not an object at all): valid, with fields of the wrong
/// type, with a huge or odd id, with an unknown method or two methods, or random JSON.
pub(super) fn command(rng: &mut Rng, token: &str, channel: &str) -> String {
    let id = match rng.u8(0..8) {
        0 => json!(u64::MAX),
        1 => json!(-1),
        2 => json!("7"),
        3 => json!(1.5),
        4 => Value::Null,
        _ => json!(rng.u32(1..1000)),
    };
    command_with_id(rng, token, channel, id).0
}

/// Like [`command`] with the id given; also says whether the command carries it (random
/// JSON that is not an object does not).
pub(super) fn command_with_id(
    rng: &mut Rng,
    token: &str,
    channel: &str,
    id: Value,
) -> (String, bool) {
    let valid = match rng.u8(0..10) {
        0 => json!({"connect": {"token": token}}),
        1 => json!({"subscribe": {"channel": channel}}),
        2 => json!({"subscribe": {"channel": channel, "recover": true,
            "offset": rng.u64(..), "epoch": random_string(rng)}}),
        3 => json!({"publish": {"channel": channel, "data": random_json(rng, 3)}}),
        4 => {
            let limit = [-1, 0, 1, 1_000_000][rng.usize(0..4)];
            let since = [0, u64::MAX, 1 << 63][rng.usize(0..3)];
            json!({"history": {"channel": channel, "limit": limit,
                "since": {"offset": since, "epoch": ""}, "reverse": rng.bool()}})
        }
        5 => json!({"presence": {"channel": channel}}),
        6 => json!({"unsubscribe": {"channel": channel}}),
        7 => json!({"ping": {}}),
        8 => json!({"rpc": {"method": random_string(rng), "data": random_json(rng, 2)}}),
        _ => json!({"refresh": {"token": random_string(rng)}}),
    };
    let mut cmd = match rng.u8(0..8) {
        // Valid shape.
        0..=2 => valid,
        // Every field of the body replaced by a value of another type.
        3 => {
            let mut v = valid;
            if let Some(body) = v.as_object_mut().and_then(|o| o.values_mut().next()) {
                match body.as_object_mut() {
                    Some(fields) => {
                        for f in fields.values_mut() {
                            *f = random_json(rng, 2);
                        }
                    }
                    None => *body = random_json(rng, 2),
                }
            }
            v
        }
        // Unknown method, or a known one with a null / non-object body.
        4 => {
            let m = if rng.bool() {
                random_string(rng)
            } else {
                METHODS[rng.usize(0..METHODS.len())].to_owned()
            };
            let mut o = Map::new();
            o.insert(m, random_json(rng, 1));
            Value::Object(o)
        }
        // Two methods in one command.
        5 => {
            let mut v = valid;
            if let Some(o) = v.as_object_mut() {
                o.insert("ping".into(), json!({}));
            }
            v
        }
        // Deeply nested data, written as text (a Value that deep would overflow our own
        // stack when dropped).
        6 => {
            let n = rng.usize(100..3000);
            let data = format!("{}1{}", "[".repeat(n), "]".repeat(n));
            let cmd = format!(r#"{{"id":{id},"publish":{{"channel":"fuzz-deep","data":{data}}}}}"#);
            return (cmd, true);
        }
        _ => random_json(rng, 4),
    };
    let carried = match cmd.as_object_mut() {
        Some(o) => {
            o.insert("id".into(), id);
            true
        }
        None => false,
    };
    (cmd.to_string(), carried)
}

/// A valid HTTP upgrade request for `/connection/websocket`.
pub(super) fn valid_upgrade(host: &str) -> String {
    format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// An HTTP upgrade request for `/connection/websocket`: valid, or one of its broken forms.
pub(super) fn upgrade(rng: &mut Rng, host: &str) -> (Vec<u8>, bool) {
    let valid = valid_upgrade(host);
    if rng.u8(0..10) < 8 {
        return (valid.into_bytes(), true);
    }
    let broken = match rng.u8(0..6) {
        0 => valid.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 99"),
        1 => valid.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
        2 => valid.replace(
            "\r\n\r\n",
            &format!(
                "\r\nX-Big: {}\r\n\r\n",
                "a".repeat(rng.usize(10_000..120_000))
            ),
        ),
        3 => valid[..rng.usize(1..valid.len())].to_owned(),
        4 => String::from_utf8_lossy(&random_bytes(rng, 2000)).into_owned(),
        _ => valid.replace("GET /connection/websocket", "POST /connection/websocket"),
    };
    (broken.into_bytes(), false)
}
