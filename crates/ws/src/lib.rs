//! WebSocket framing (RFC 6455), server side, sans I/O: bytes in, messages out; plus the
//! handshake's `Sec-WebSocket-Accept` key. No tokio, no sockets: the roomcast server's
//! WebSocket transport, its `ws-echo` conformance endpoint and the bench's limit server all
//! frame through this crate.
//!
//! Hand-written rather than a WebSocket crate's stream because of memory: every crate
//! measured here (tungstenite, tokio-websockets, fastwebsockets) keeps a read buffer and a
//! write buffer per connection for as long as the connection lives, which alone is more
//! than roomcast's budget for an idle connection. This decoder owns no buffer while no
//! message is half-received: the pump reads into a short-lived buffer, the decoder unmasks
//! frames in place and hands out complete messages, and only an incomplete frame or a
//! fragmented message in progress is kept between reads. The framing rules are the RFC's,
//! checked by the Autobahn suite (`scripts/autobahn.sh`).

use base64::Engine;
use bytes::BytesMut;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the client's key.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`:
/// base64(SHA-1(key + GUID)) (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Close codes (RFC 6455 section 7.4.1) the server sends for framing errors.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame: its code (if any) and reason.
    Close(Option<u16>, String),
}

/// A framing violation and the close code it earns.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Frame opcodes (RFC 6455 section 5.2).
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Whether a peer may send `code` in a close frame: the codes RFC 6455 defines for use
/// (1000-1003, 1007-1011), those the IANA registry added since (1012 service restart,
/// 1013 try again later, 1014 bad gateway), and the ranges for libraries and applications
/// (3000-4999). 1004-1006 and 1015 are reserved and never sent on the wire.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Reassembles messages from client frames.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Largest message accepted (sum of a fragmented message's frames).
    max_message: usize,
    /// Opcode and payload so far of a fragmented message in progress.
    fragments: Option<(u8, Vec<u8>)>,
}

impl Decoder {
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            fragments: None,
        }
    }

    /// Decodes every complete frame at the start of `buf` (unmasking in place) and returns
    /// the messages they complete and how many bytes were consumed. Bytes of an incomplete
    /// frame are left for the next call.
    pub fn decode(&mut self, buf: &mut [u8], out: &mut Vec<Message>) -> Result<usize, Violation> {
        let mut at = 0;
        while let Some((header_len, frame)) = parse_header(&buf[at..], self.max_message)? {
            let total = header_len + frame.len;
            if buf.len() - at < total {
                break;
            }
            let payload = &mut buf[at + header_len..at + total];
            apply_mask(payload, frame.mask);
            self.frame(frame.fin, frame.opcode, payload, out)?;
            at += total;
        }
        Ok(at)
    }

    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        out: &mut Vec<Message>,
    ) -> Result<(), Violation> {
        match opcode {
            OP_PING => out.push(Message::Ping(payload.to_vec())),
            OP_PONG => out.push(Message::Pong),
            OP_CLOSE => out.push(parse_close(payload)?),
            OP_TEXT | OP_BINARY => {
                if self.fragments.is_some() {
                    return Err(violation(
                        close::PROTOCOL,
                        "new message inside a fragmented one",
                    ));
                }
                if fin {
                    out.push(complete(opcode, payload.to_vec())?);
                } else {
                    check_partial_utf8(opcode, payload)?;
                    self.fragments = Some((opcode, payload.to_vec()));
                }
            }
            OP_CONTINUATION => {
                let Some((op, mut data)) = self.fragments.take() else {
                    return Err(violation(close::PROTOCOL, "continuation without a message"));
                };
                if data.len() + payload.len() > self.max_message {
                    return Err(violation(close::TOO_BIG, "message too big"));
                }
                data.extend_from_slice(payload);
                if fin {
                    out.push(complete(op, data)?);
                } else {
                    check_partial_utf8(op, &data)?;
                    self.fragments = Some((op, data));
                }
            }
            _ => return Err(violation(close::PROTOCOL, "reserved opcode")),
        }
        Ok(())
    }
}

struct FrameHeader {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
}

/// Parses one frame header; `None` when more bytes are needed.
fn parse_header(buf: &[u8], max_message: usize) -> Result<Option<(usize, FrameHeader)>, Violation> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(violation(
            close::PROTOCOL,
            "reserved bits set without an extension",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if b1 & 0x80 == 0 {
        return Err(violation(close::PROTOCOL, "client frames must be masked"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(violation(close::PROTOCOL, "frame length out of range"));
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if opcode >= OP_CLOSE {
        if !fin || len > 125 {
            return Err(violation(
                close::PROTOCOL,
                "control frames are short and not fragmented",
            ));
        }
    } else if len > max_message as u64 {
        return Err(violation(close::TOO_BIG, "message too big"));
    }
    if buf.len() < at + 4 {
        return Ok(None);
    }
    let mask = buf[at..at + 4].try_into().expect("4 bytes");
    at += 4;
    Ok(Some((
        at,
        FrameHeader {
            fin,
            opcode,
            mask,
            len: len as usize,
        },
    )))
}

fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn complete(opcode: u8, data: Vec<u8>) -> Result<Message, Violation> {
    if opcode == OP_TEXT {
        String::from_utf8(data)
            .map(Message::Text)
            .map_err(|_| violation(close::INVALID_DATA, "text is not UTF-8"))
    } else {
        Ok(Message::Binary(data))
    }
}

/// Fails fast on a fragment that can no longer become valid UTF-8; an incomplete
/// character at the end is fine.
fn check_partial_utf8(opcode: u8, data: &[u8]) -> Result<(), Violation> {
    if opcode != OP_TEXT {
        return Ok(());
    }
    match std::str::from_utf8(data) {
        Ok(_) => Ok(()),
        Err(e) if e.error_len().is_none() => Ok(()),
        Err(_) => Err(violation(close::INVALID_DATA, "text is not UTF-8")),
    }
}

fn parse_close(payload: &[u8]) -> Result<Message, Violation> {
    match payload.len() {
        0 => Ok(Message::Close(None, String::new())),
        1 => Err(violation(close::PROTOCOL, "close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
                return Err(violation(close::PROTOCOL, "invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| violation(close::INVALID_DATA, "close reason is not UTF-8"))?;
            Ok(Message::Close(Some(code), reason.to_owned()))
        }
    }
}

/// Appends a server frame (unmasked, final) to `out`.
pub fn encode_frame(out: &mut BytesMut, opcode: u8, payload_len: usize) {
    out.extend_from_slice(&[0x80 | opcode]);
    if payload_len < 126 {
        out.extend_from_slice(&[payload_len as u8]);
    } else if payload_len <= u16::MAX as usize {
        out.extend_from_slice(&[126]);
        out.extend_from_slice(&(payload_len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[127]);
        out.extend_from_slice(&(payload_len as u64).to_be_bytes());
    }
}

/// A whole text frame carrying `payload`.
pub fn text(out: &mut BytesMut, payload: &[u8]) {
    text_header(out, payload.len());
    out.extend_from_slice(payload);
}

/// Header of a text frame of `len` bytes.
pub fn text_header(out: &mut BytesMut, len: usize) {
    encode_frame(out, OP_TEXT, len);
}

/// Header of a binary frame of `len` bytes.
pub fn binary_header(out: &mut BytesMut, len: usize) {
    encode_frame(out, OP_BINARY, len);
}

/// A pong frame echoing a ping's payload.
pub fn pong(out: &mut BytesMut, payload: &[u8]) {
    encode_frame(out, OP_PONG, payload.len());
    out.extend_from_slice(payload);
}

/// A close frame with a code and a reason (cut to fit a control frame).
pub fn close_frame(out: &mut BytesMut, code: u16, reason: &str) {
    let mut reason = &reason[..reason.len().min(123)];
    while !reason.is_empty() && std::str::from_utf8(reason.as_bytes()).is_err() {
        reason = &reason[..reason.len() - 1];
    }
    encode_frame(out, OP_CLOSE, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<(Vec<Message>, usize), Violation> {
        let mut buf = bytes.to_vec();
        let mut out = Vec::new();
        let n = d.decode(&mut buf, &mut out)?;
        Ok((out, n))
    }

    #[test]
    fn text_ping_close_and_partial_frames() {
        let mut d = Decoder::new(1024);
        let mut bytes = frame(true, OP_TEXT, b"hello");
        bytes.extend(frame(true, OP_PING, b"p"));
        bytes.extend(frame(true, OP_CLOSE, &[0x03, 0xE8, b'b', b'y', b'e']));
        let (msgs, n) = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(
            msgs,
            vec![
                Message::Text("hello".into()),
                Message::Ping(b"p".to_vec()),
                Message::Close(Some(1000), "bye".into())
            ]
        );
        let whole = frame(true, OP_TEXT, &[b'x'; 300]);
        let (msgs, n) = decode_all(&mut d, &whole[..100]).unwrap();
        assert!(msgs.is_empty());
        assert_eq!(n, 0, "an incomplete frame is not consumed");
    }

    #[test]
    fn fragments_reassemble_and_fail_fast_on_bad_utf8() {
        let mut d = Decoder::new(1024);
        let mut bytes = frame(false, OP_TEXT, "h\u{e9}".as_bytes().split_at(2).0);
        bytes.extend(frame(true, OP_PING, b""));
        bytes.extend(frame(
            true,
            OP_CONTINUATION,
            "h\u{e9}".as_bytes().split_at(2).1,
        ));
        let (msgs, _) = decode_all(&mut d, &bytes).unwrap();
        assert_eq!(
            msgs,
            vec![Message::Ping(vec![]), Message::Text("h\u{e9}".into())]
        );
        let mut d = Decoder::new(1024);
        let err = decode_all(&mut d, &frame(false, OP_TEXT, &[0xFF])).unwrap_err();
        assert_eq!(err.code, close::INVALID_DATA);
    }

    #[test]
    fn violations_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (
                {
                    let mut f = frame(true, OP_TEXT, b"x");
                    f[0] |= 0x40;
                    f
                },
                close::PROTOCOL,
            ),
            (
                {
                    let mut f = frame(true, OP_TEXT, b"x");
                    f[1] &= 0x7F;
                    f
                },
                close::PROTOCOL,
            ),
            (frame(true, 0x3, b""), close::PROTOCOL),
            (frame(false, OP_PING, b""), close::PROTOCOL),
            (frame(true, OP_PING, &[0; 126]), close::PROTOCOL),
            (frame(true, OP_CONTINUATION, b"x"), close::PROTOCOL),
            (frame(true, OP_CLOSE, &[3]), close::PROTOCOL),
            (frame(true, OP_CLOSE, &[0x03, 0xED]), close::PROTOCOL),
            (
                frame(true, OP_CLOSE, &[0x03, 0xE8, 0xFF]),
                close::INVALID_DATA,
            ),
            (frame(true, OP_TEXT, &[0xC0, 0x80]), close::INVALID_DATA),
            (frame(true, OP_TEXT, &[b'a'; 200]), close::TOO_BIG),
        ];
        for (bytes, code) in cases {
            let mut d = Decoder::new(100);
            assert_eq!(
                decode_all(&mut d, &bytes).unwrap_err().code,
                code,
                "{bytes:?}"
            );
        }
        let mut d = Decoder::new(100);
        let mut bytes = frame(false, OP_TEXT, &[b'a'; 60]);
        bytes.extend(frame(true, OP_CONTINUATION, &[b'a'; 60]));
        assert_eq!(decode_all(&mut d, &bytes).unwrap_err().code, close::TOO_BIG);
        let mut d = Decoder::new(100);
        let mut bytes = frame(false, OP_TEXT, b"a");
        bytes.extend(frame(true, OP_TEXT, b"b"));
        assert_eq!(
            decode_all(&mut d, &bytes).unwrap_err().code,
            close::PROTOCOL
        );
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn registered_close_codes_are_accepted_reserved_ones_refused() {
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            let mut d = Decoder::new(100);
            let (msgs, _) =
                decode_all(&mut d, &frame(true, OP_CLOSE, &code.to_be_bytes())).unwrap();
            assert_eq!(
                msgs,
                vec![Message::Close(Some(code), String::new())],
                "{code}"
            );
        }
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
        ] {
            let mut d = Decoder::new(100);
            let err = decode_all(&mut d, &frame(true, OP_CLOSE, &code.to_be_bytes())).unwrap_err();
            assert_eq!(err.code, close::PROTOCOL, "{code}");
        }
    }

    #[test]
    fn server_frames() {
        let mut out = BytesMut::new();
        text_header(&mut out, 5);
        assert_eq!(&out[..], &[0x81, 5]);
        let mut out = BytesMut::new();
        text_header(&mut out, 300);
        assert_eq!(&out[..], &[0x81, 126, 1, 44]);
        let mut out = BytesMut::new();
        close_frame(&mut out, 3001, "shutdown");
        assert_eq!(&out[..4], &[0x88, 10, 0x0B, 0xB9]);
    }
}
