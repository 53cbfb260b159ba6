//! The reply check: connections that send only well-framed text messages of fuzzed
//! commands (valid, wrong field types, unknown methods, two methods, random objects,
//! deeply nested data; one to four a message, sometimes fragmented with a ping between the
//! pieces), each command with its own id, and read everything the node sends.
//!
//! Every command that carries an id must get a reply with that id within [`BOUND`], or the
//! connection must be closed with a documented close code ([`DOCUMENTED`]) before that.
//! Otherwise it is a finding: no reply in time, a reply to an id that was not waiting (a
//! second reply), a close with an undocumented code, or the TCP stream ending without a
//! close frame while commands wait. `send` is asynchronous in the protocol (no reply, with
//! or without an id, as in Centrifugo) and is not waited for.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use fastrand::Rng;
use roomcast_testkit::token;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Duration, Instant};

use super::{gen, Shared, ROOMS};

/// How long a command may wait for its reply.
pub(super) const BOUND: Duration = Duration::from_secs(5);

/// Close codes the README documents: RFC 6455 framing errors, then the protocol's
/// disconnects (3000-3499 reconnect, 3500-3999 do not).
const DOCUMENTED: &[u16] = &[
    1000, 1002, 1003, 1007, 1009, 3000, 3001, 3004, 3005, 3006, 3008, 3009, 3010, 3011, 3012, 3013,
    3500, 3501, 3502, 3503, 3504, 3505, 3507,
];

/// The largest server frame the check accepts (replies are capped far below).
const MAX_FRAME: usize = 80 << 20;

/// A command waiting for its reply.
struct Waiting {
    sent: Instant,
    /// The command, cut short, for the finding.
    text: String,
}

/// What the node's side of the connection did.
enum Seen {
    Open,
    Closed(u16),
    Ended,
}

/// One checked connection; findings go to `shared`.
pub(super) async fn session(
    addr: SocketAddr,
    rng: &mut Rng,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(gen::valid_upgrade(&addr.to_string()).as_bytes())
        .await?;
    let mut inbuf = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let head_end = loop {
        if let Some(i) = inbuf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = timeout(BOUND, s.read(&mut buf)).await??;
        if n == 0 {
            shared.finding("reply check: the upgrade got no answer".into());
            return Ok(());
        }
        inbuf.extend_from_slice(&buf[..n]);
    };
    if !inbuf.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&inbuf[..head_end.min(80)]).into_owned();
        shared.finding(format!("reply check: a valid upgrade was refused: {line}"));
        return Ok(());
    }
    inbuf.drain(..head_end);

    let user = format!("fuzz{}", rng.u32(0..50));
    let tok = token(&user);
    let mut check = Check {
        waiting: HashMap::new(),
        answered: HashSet::new(),
        next_id: 1,
        shared,
    };
    let connect = json!({"id": check.next_id, "connect": {"token": tok}}).to_string();
    check.expect(check.next_id, &connect);
    check.next_id += 1;
    s.write_all(&gen::text(rng, &connect)).await?;

    let mut seen = Seen::Open;
    for _ in 0..rng.usize(1..30) {
        let mut cmds = Vec::new();
        for _ in 0..rng.usize(1..5) {
            let room = ROOMS[rng.usize(0..ROOMS.len())];
            let id = check.next_id;
            check.next_id += 1;
            // Mostly commands a connected client may send (so sessions live long enough to
            // wait on many replies), sometimes anything the fuzzer makes.
            let (cmd, carried) = if rng.u8(0..4) > 0 {
                let mut c = answerable(rng, room);
                c["id"] = json!(id);
                (c.to_string(), true)
            } else {
                gen::command_with_id(rng, &tok, room, json!(id))
            };
            if carried && !is_send(&cmd) {
                check.expect(id, &cmd);
            }
            cmds.push(cmd);
        }
        let msg = cmds.join("\n");
        shared.frames.fetch_add(1, Ordering::Relaxed);
        let bytes = if rng.u8(0..4) == 0 {
            fragmented(rng, &msg)
        } else {
            gen::text(rng, &msg)
        };
        if timeout(Duration::from_secs(2), s.write_all(&bytes))
            .await
            .is_err()
        {
            break; // The node stopped reading; what it answered is still checked below.
        }
        seen = check
            .read(&mut s, &mut inbuf, &mut buf, Duration::from_millis(5))
            .await;
        if !matches!(seen, Seen::Open) {
            break;
        }
    }
    // Everything sent: the rest of the replies, or a close, within the bound.
    let until = Instant::now() + BOUND;
    while matches!(seen, Seen::Open) && !check.waiting.is_empty() && Instant::now() < until {
        seen = check
            .read(&mut s, &mut inbuf, &mut buf, until - Instant::now())
            .await;
    }
    check.judge(&seen);
    Ok(())
}

struct Check<'a> {
    waiting: HashMap<u32, Waiting>,
    /// Ids already answered: another reply to one is a finding.
    answered: HashSet<u32>,
    next_id: u32,
    shared: &'a Shared,
}

impl Check<'_> {
    fn expect(&mut self, id: u32, cmd: &str) {
        let text: String = cmd.chars().take(160).collect();
        self.waiting.insert(
            id,
            Waiting {
                sent: Instant::now(),
                text,
            },
        );
        self.shared.checked.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads what arrives within `wait` (and whatever is already buffered), answering pings.
    async fn read(
        &mut self,
        s: &mut TcpStream,
        inbuf: &mut Vec<u8>,
        buf: &mut [u8],
        wait: Duration,
    ) -> Seen {
        let until = Instant::now() + wait;
        loop {
            while let Some(frame) = next_frame(inbuf) {
                match frame {
                    Ok((0x1, payload)) => {
                        for line in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                            if let Some(pong) = self.on_line(line) {
                                let f = gen::frame(&mut Rng::new(), true, 0, gen::TEXT, pong, true);
                                let _ = s.write_all(&f).await;
                            }
                        }
                    }
                    Ok((0x8, payload)) => {
                        let code = match payload.as_slice() {
                            [a, b, ..] => u16::from_be_bytes([*a, *b]),
                            _ => 1005,
                        };
                        return Seen::Closed(code);
                    }
                    Ok(_) => {} // pong (to a ping between pieces), ping: nothing to check
                    Err(why) => {
                        self.shared
                            .finding(format!("reply check: the node sent {why}"));
                        return Seen::Ended;
                    }
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            match timeout(left, s.read(buf)).await {
                Err(_) => return Seen::Open,
                Ok(Ok(0) | Err(_)) => return Seen::Ended,
                Ok(Ok(n)) => inbuf.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// One line of a text message: a reply takes its command off the waiting list. Returns
    /// the pong to send when it is a ping.
    fn on_line(&mut self, line: &[u8]) -> Option<&'static [u8]> {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            let text = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
            self.shared.finding(format!(
                "reply check: the node sent a line that is not JSON: {text}"
            ));
            return None;
        };
        let Some(id) = v.get("id").and_then(Value::as_u64) else {
            return (v.as_object().is_some_and(serde_json::Map::is_empty)).then_some(b"{}");
        };
        let id = id as u32;
        match self.waiting.remove(&id) {
            Some(w) => {
                if w.sent.elapsed() > BOUND {
                    self.shared.finding(format!(
                        "reply check: id {id} answered after {:?}: {}",
                        w.sent.elapsed(),
                        w.text
                    ));
                } else {
                    self.shared.answered.fetch_add(1, Ordering::Relaxed);
                }
                self.answered.insert(id);
            }
            None if self.answered.contains(&id) => {
                self.shared
                    .finding(format!("reply check: a second reply for id {id}"));
            }
            // Not waited for: a send, or a command not carrying the id it was given.
            None => {}
        }
        None
    }

    fn judge(&self, seen: &Seen) {
        let waiting = self.waiting.len();
        let first = self
            .waiting
            .iter()
            .min_by_key(|(id, _)| **id)
            .map(|(id, w)| format!("id {id}: {}", w.text))
            .unwrap_or_default();
        match seen {
            Seen::Closed(code) if !DOCUMENTED.contains(code) => self.shared.finding(format!(
                "reply check: closed with undocumented code {code} ({waiting} commands waiting)"
            )),
            Seen::Closed(_) => {}
            Seen::Ended if waiting > 0 => self.shared.finding(format!(
                "reply check: the connection ended without a close frame, {waiting} commands \
                 unanswered, first {first}"
            )),
            Seen::Ended => {}
            Seen::Open if waiting > 0 => self.shared.finding(format!(
                "reply check: {waiting} commands unanswered after {BOUND:?}, first {first}"
            )),
            Seen::Open => {}
        }
    }
}

/// A command a connected client may send without being closed: every method but connect
/// and refresh, with odd but well-typed fields, unknown methods and null bodies.
fn answerable(rng: &mut Rng, channel: &str) -> Value {
    match rng.u8(0..14) {
        0 => json!({"subscribe": {"channel": channel}}),
        1 => json!({"subscribe": {"channel": channel, "recover": true,
            "offset": rng.u64(..), "epoch": gen::random_string(rng)}}),
        2 | 3 => json!({"publish": {"channel": channel, "data": gen::random_json(rng, 3)}}),
        4 => {
            let limit = [-1, 0, 1, 1_000_000][rng.usize(0..4)];
            let since = [0, 1, u64::MAX, 1 << 63][rng.usize(0..4)];
            json!({"history": {"channel": channel, "limit": limit,
                "since": {"offset": since, "epoch": ""}, "reverse": rng.bool()}})
        }
        5 => json!({"presence": {"channel": channel}}),
        6 => json!({"presence_stats": {"channel": channel}}),
        7 => json!({"unsubscribe": {"channel": channel}}),
        8 => json!({"ping": if rng.bool() { json!({}) } else { Value::Null }}),
        9 => json!({"rpc": {"method": gen::random_string(rng), "data": gen::random_json(rng, 2)}}),
        10 => json!({"sub_refresh": {"channel": channel, "token": gen::random_string(rng)}}),
        11 => json!({"send": {"data": gen::random_json(rng, 2)}}),
        12 => json!({ gen::random_string(rng): gen::random_json(rng, 1) }),
        _ => json!({}),
    }
}

/// Whether a command is a `send` (asynchronous: never answered).
fn is_send(cmd: &str) -> bool {
    serde_json::from_str::<Value>(cmd).is_ok_and(|v| v.get("send").is_some())
}

/// A text message in two to four well-formed pieces, sometimes with a ping between them.
fn fragmented(rng: &mut Rng, msg: &str) -> Vec<u8> {
    let bytes = msg.as_bytes();
    let chunk = bytes.len().div_ceil(rng.usize(2..5)).max(1);
    let parts: Vec<&[u8]> = bytes.chunks(chunk).collect();
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let op = if i == 0 { gen::TEXT } else { gen::CONT };
        out.extend(gen::frame(rng, i + 1 == parts.len(), 0, op, part, true));
        if rng.u8(0..4) == 0 && i + 1 < parts.len() {
            out.extend(gen::frame(rng, true, 0, gen::PING, b"p", true));
        }
    }
    out
}

/// The next complete server frame off the front of `buf`: (opcode, payload), continuations
/// joined. None until a whole message has arrived; Err on a frame no server may send.
fn next_frame(buf: &mut Vec<u8>) -> Option<Result<(u8, Vec<u8>), String>> {
    let mut at = 0;
    let mut opcode = None;
    let mut payload = Vec::new();
    loop {
        let h = buf.get(at..at + 2)?;
        let (fin, op, masked, len7) =
            (h[0] & 0x80 != 0, h[0] & 0x0F, h[1] & 0x80 != 0, h[1] & 0x7F);
        if masked || h[0] & 0x70 != 0 {
            return Some(Err(format!(
                "a masked or reserved-bit frame ({:#04x})",
                h[0]
            )));
        }
        let (len, head) = match len7 {
            126 => (
                u16::from_be_bytes(buf.get(at + 2..at + 4)?.try_into().ok()?) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(buf.get(at + 2..at + 10)?.try_into().ok()?) as usize,
                10,
            ),
            n => (usize::from(n), 2),
        };
        if len > MAX_FRAME {
            return Some(Err(format!("a frame of {len} bytes")));
        }
        let body = buf.get(at + head..at + head + len)?;
        if op >= 0x8 {
            // A control frame, whole on its own, possibly between a message's pieces.
            let frame = (op, body.to_vec());
            buf.drain(at..at + head + len);
            return Some(Ok(frame));
        }
        match (opcode, op) {
            (None, 0) | (Some(_), 1..) => {
                return Some(Err(format!("a data frame out of sequence (opcode {op})")))
            }
            (None, _) => opcode = Some(op),
            (Some(_), _) => {}
        }
        payload.extend_from_slice(body);
        at += head + len;
        if fin {
            buf.drain(..at);
            return Some(Ok((opcode.unwrap_or(op), payload)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{next_frame, Check, Seen, Shared};
    use std::collections::{HashMap, HashSet};

    #[test]
    fn waiting_commands_second_replies_and_odd_closes_are_findings() {
        let shared = Shared::default();
        let findings = || shared.findings.lock().unwrap().len();
        let mut c = Check {
            waiting: HashMap::new(),
            answered: HashSet::new(),
            next_id: 3,
            shared: &shared,
        };
        c.expect(1, r#"{"id":1,"ping":{}}"#);
        c.expect(2, r#"{"id":2,"foo":{}}"#);
        assert_eq!(c.on_line(br#"{"id":1,"ping":{}}"#), None);
        assert_eq!(c.on_line(b"{}"), Some(&b"{}"[..]), "a ping is answered");
        c.judge(&Seen::Closed(3501));
        assert_eq!(findings(), 0, "a documented close excuses what waits");
        c.judge(&Seen::Open);
        assert_eq!(findings(), 1, "id 2 unanswered");
        c.judge(&Seen::Ended);
        assert_eq!(findings(), 2, "an end without a close frame");
        c.judge(&Seen::Closed(4321));
        assert_eq!(findings(), 3, "an undocumented close code");
        c.on_line(br#"{"id":1,"error":{"code":108}}"#);
        assert_eq!(findings(), 4, "a second reply");
        c.on_line(br#"{"id":2,"error":{"code":104}}"#);
        c.judge(&Seen::Open);
        assert_eq!(findings(), 4, "nothing waits any more");
    }

    #[test]
    fn frames_are_read_whole_and_joined() {
        let mut buf = vec![
            0x01, 2, b'a', b'b', 0x89, 1, b'p', 0x80, 1, b'c', 0x88, 2, 0x0B, 0xBD,
        ];
        // The ping between the pieces comes first, then the joined message, then the close.
        assert_eq!(next_frame(&mut buf), Some(Ok((0x9, b"p".to_vec()))));
        assert_eq!(next_frame(&mut buf), Some(Ok((0x1, b"abc".to_vec()))));
        assert_eq!(next_frame(&mut buf), Some(Ok((0x8, vec![0x0B, 0xBD]))));
        assert_eq!(next_frame(&mut buf), None);
        let mut half = vec![0x81, 5, b'a'];
        assert_eq!(next_frame(&mut half), None);
        assert_eq!(half.len(), 3);
        assert!(matches!(next_frame(&mut vec![0x80, 0]), Some(Err(_))));
    }
}
