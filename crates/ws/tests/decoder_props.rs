//! Property tests of the WebSocket decoder (issue #10, fuzzing on stable Rust): whatever
//! bytes arrive, in whatever pieces, the decoder returns messages or a violation, never
//! panics and never consumes more than it was given; and a text message cut into any
//! fragments and delivered in any byte chunks decodes to exactly that text.

use proptest::prelude::*;
use roomcast_ws::{Decoder, Message};

const MAX: usize = 4096;

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

/// Feeds `bytes` to a decoder in chunks of the given sizes, keeping unconsumed bytes as a
/// socket reader would; returns the messages and the first violation, if any.
fn feed(bytes: &[u8], chunks: &[usize]) -> (Vec<Message>, bool) {
    let mut d = Decoder::new(MAX);
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        pending.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        match d.decode(&mut pending, &mut out) {
            Ok(used) => {
                assert!(used <= pending.len(), "consumed more than given");
                pending.drain(..used);
            }
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_bytes_in_any_pieces_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunks in proptest::collection::vec(1usize..300, 1..8),
    ) {
        let (msgs, _) = feed(&bytes, &chunks);
        for m in msgs {
            let len = match m {
                Message::Text(t) => t.len(),
                Message::Binary(b) | Message::Ping(b) => b.len(),
                Message::Pong => 0,
                Message::Close(_, r) => r.len(),
            };
            prop_assert!(len <= MAX, "a message over the limit was returned");
        }
    }

    #[test]
    fn a_fragmented_text_in_any_chunks_decodes_to_itself(
        text in "\\PC{0,600}",
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        chunks in proptest::collection::vec(1usize..200, 1..6),
        mask in any::<[u8; 4]>(),
        ping_between in any::<bool>(),
    ) {
        prop_assume!(text.len() <= MAX);
        let b = text.as_bytes();
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(b.len() + 1)).collect();
        at.push(0);
        at.push(b.len());
        at.sort_unstable();
        at.dedup();
        let pieces: Vec<&[u8]> = at.windows(2).map(|w| &b[w[0]..w[1]]).collect();
        let pieces = if pieces.is_empty() { vec![&b[..0]] } else { pieces };
        let mut bytes = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let op = if i == 0 { 0x1 } else { 0x0 };
            bytes.extend(frame(i + 1 == pieces.len(), op, p, mask));
            if ping_between && i + 1 < pieces.len() {
                bytes.extend(frame(true, 0x9, b"p", mask));
            }
        }
        let (msgs, violated) = feed(&bytes, &chunks);
        prop_assert!(!violated);
        let texts: Vec<Message> = msgs.into_iter().filter(|m| matches!(m, Message::Text(_))).collect();
        prop_assert_eq!(texts, vec![Message::Text(text.clone())]);
    }
}
