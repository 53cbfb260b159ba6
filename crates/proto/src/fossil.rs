//! Fossil delta: the delta format of Centrifugo's delta compression (`delta: "fossil"` in a
//! subscribe request), as the SDKs decode it (centrifuge-js, centrifuge-python, ...).
//!
//! A delta turns a *source* (the previous publication's data, which the client holds) into
//! a *target* (the new publication's data). Its text is:
//!
//! ```text
//! <target length>\n  then commands:  <n>@<offset>,  copy n bytes of the source from offset
//!                                    <n>:<n bytes> insert n literal bytes
//! <checksum of the target>;
//! ```
//!
//! with every number in fossil's base-64 digits (`0-9A-Z_a-z~`, most significant first).
//!
//! Why written here and not taken from a crate: the encoder is small (one hash table of the
//! source's 16-byte blocks, one rolling hash over the target), and roomcast needs one
//! property no generic encoder gives. In the JSON format a delta travels as a JSON *string*
//! (the SDKs turn it back into bytes with UTF-8), so a delta of UTF-8 text must itself be
//! UTF-8: this encoder cuts copies and literals at character boundaries only, so the
//! literal bytes it inserts are whole characters of the target. (Any byte string is still a
//! valid target; binary targets just lose a few bytes of some matches.)
//!
//! Bounds: encoding is linear in the sizes (at most `MAX_CHAIN` candidate blocks are tried
//! per target position, and a match taken is skipped over); decoding never produces more
//! than the size the delta declares, which the caller bounds (`apply`'s `max_len`).

use std::collections::HashMap;

/// Bytes per hashed source block (fossil's `NHASH`).
const NHASH: usize = 16;

/// Candidate source blocks tried per target position at most (the same hash, older blocks):
/// keeps a source made of one repeated block from costing its length per target byte.
const MAX_CHAIN: usize = 32;

/// Multiplier of the rolling hash (any odd constant spreads 16 bytes over 64 bits).
const HASH_MUL: u64 = 0x100_0000_01b3;

/// The base-64 digits of fossil's integers.
const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FossilError {
    #[error("delta header: {0}")]
    Header(&'static str),
    #[error("delta declares {0} bytes, more than the {1} allowed")]
    TooLarge(u64, usize),
    #[error("copy command out of the source's bounds")]
    CopyOutOfBounds,
    #[error("insert command longer than the delta")]
    InsertTooLong,
    #[error("output larger than declared")]
    Overflow,
    #[error("unknown delta command {0:?}")]
    UnknownCommand(char),
    #[error("checksum or size of the output does not match")]
    Mismatch,
    #[error("delta not terminated")]
    Unterminated,
}

/// The delta that turns `source` into `target`.
pub fn encode(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() / 4 + 32);
    put_int(&mut out, target.len() as u64);
    out.push(b'\n');
    let mut literal_start = 0;
    if source.len() > NHASH && target.len() >= NHASH {
        let index = BlockIndex::new(source);
        let mut i = 0;
        let mut h = hash(&target[..NHASH]);
        while i + NHASH <= target.len() {
            match index.best_match(source, target, i, literal_start, h) {
                Some(m) => {
                    insert(&mut out, &target[literal_start..m.target]);
                    put_int(&mut out, m.len as u64);
                    out.push(b'@');
                    put_int(&mut out, m.source as u64);
                    out.push(b',');
                    literal_start = m.target + m.len;
                    i = literal_start;
                    if i + NHASH <= target.len() {
                        h = hash(&target[i..i + NHASH]);
                    }
                }
                None => {
                    if i + NHASH < target.len() {
                        h = roll(h, target[i], target[i + NHASH]);
                    }
                    i += 1;
                }
            }
        }
    }
    insert(&mut out, &target[literal_start..]);
    put_int(&mut out, u64::from(checksum(target)));
    out.push(b';');
    out
}

/// The delta of UTF-8 text, as UTF-8 text (see the module doc); `None` never happens for
/// a `&str` target, but is answered rather than assumed.
pub fn encode_str(source: &[u8], target: &str) -> Option<String> {
    String::from_utf8(encode(source, target.as_bytes())).ok()
}

/// Applies a delta to `source`; the output may be at most `max_len` bytes.
pub fn apply(source: &[u8], delta: &[u8], max_len: usize) -> Result<Vec<u8>, FossilError> {
    let mut r = Reader { d: delta, pos: 0 };
    let limit = r.int().ok_or(FossilError::Header("no size"))?;
    if r.byte() != Some(b'\n') {
        return Err(FossilError::Header("size not terminated by a newline"));
    }
    if limit > max_len as u64 {
        return Err(FossilError::TooLarge(limit, max_len));
    }
    let limit = limit as usize;
    let mut out = Vec::with_capacity(limit);
    while r.pos < delta.len() {
        let cnt = r.int().ok_or(FossilError::Unterminated)?;
        match r.byte() {
            Some(b'@') => {
                let ofst = r.int().ok_or(FossilError::Unterminated)?;
                if r.pos < delta.len() && r.byte() != Some(b',') {
                    return Err(FossilError::Unterminated);
                }
                let end = ofst.checked_add(cnt).ok_or(FossilError::CopyOutOfBounds)?;
                if end > source.len() as u64 {
                    return Err(FossilError::CopyOutOfBounds);
                }
                if out.len() as u64 + cnt > limit as u64 {
                    return Err(FossilError::Overflow);
                }
                out.extend_from_slice(&source[ofst as usize..end as usize]);
            }
            Some(b':') => {
                if cnt > (delta.len() - r.pos) as u64 {
                    return Err(FossilError::InsertTooLong);
                }
                if out.len() as u64 + cnt > limit as u64 {
                    return Err(FossilError::Overflow);
                }
                let cnt = cnt as usize;
                out.extend_from_slice(&delta[r.pos..r.pos + cnt]);
                r.pos += cnt;
            }
            Some(b';') => {
                if cnt != u64::from(checksum(&out)) || out.len() != limit {
                    return Err(FossilError::Mismatch);
                }
                return Ok(out);
            }
            Some(c) => return Err(FossilError::UnknownCommand(c as char)),
            None => return Err(FossilError::Unterminated),
        }
    }
    Err(FossilError::Unterminated)
}

/// A match of target bytes in the source, cut at character boundaries.
struct Match {
    source: usize,
    target: usize,
    len: usize,
}

/// The source's `NHASH`-byte blocks by hash: the newest block of each hash in `first`,
/// older ones of the same hash chained through `older`.
struct BlockIndex {
    first: HashMap<u64, u32>,
    older: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl BlockIndex {
    fn new(source: &[u8]) -> BlockIndex {
        let blocks = source.len() / NHASH;
        let mut first = HashMap::with_capacity(blocks);
        let mut older = vec![NONE; blocks];
        for (b, block) in source.chunks_exact(NHASH).enumerate() {
            if let Some(prev) = first.insert(hash(block), b as u32) {
                older[b] = prev;
            }
        }
        BlockIndex { first, older }
    }

    /// The longest worthwhile match of the target window at `i` (hash `h`), extended
    /// backwards no further than `floor` (the pending literal's start).
    fn best_match(
        &self,
        source: &[u8],
        target: &[u8],
        i: usize,
        floor: usize,
        h: u64,
    ) -> Option<Match> {
        let mut best: Option<Match> = None;
        let mut cand = self.first.get(&h).copied().unwrap_or(NONE);
        let mut tries = 0;
        while cand != NONE && tries < MAX_CHAIN {
            tries += 1;
            let s = cand as usize * NHASH;
            cand = self.older[cand as usize];
            if source[s..s + NHASH] != target[i..i + NHASH] {
                continue;
            }
            let mut fwd = NHASH;
            while s + fwd < source.len()
                && i + fwd < target.len()
                && source[s + fwd] == target[i + fwd]
            {
                fwd += 1;
            }
            let mut back = 0;
            while back < i - floor && back < s && source[s - back - 1] == target[i - back - 1] {
                back += 1;
            }
            let m = aligned(target, s - back, i - back, fwd + back);
            if m.len > best.as_ref().map_or(0, |b| b.len) {
                best = Some(m);
            }
        }
        // A copy command costs its two numbers and two signs; shorter matches stay literal.
        best.filter(|m| m.len >= 8 && m.len > digits(m.len as u64) + digits(m.source as u64) + 2)
    }
}

/// Shrinks a match so that it starts and ends at character boundaries of the target.
fn aligned(target: &[u8], mut source: usize, mut start: usize, len: usize) -> Match {
    let mut end = start + len;
    while start < end && !boundary(target, start) {
        start += 1;
        source += 1;
    }
    while end > start && !boundary(target, end) {
        end -= 1;
    }
    Match {
        source,
        target: start,
        len: end - start,
    }
}

/// Whether a character of UTF-8 text may start at `p` (not a continuation byte).
fn boundary(text: &[u8], p: usize) -> bool {
    p >= text.len() || (text[p] & 0xC0) != 0x80
}

fn hash(block: &[u8]) -> u64 {
    block.iter().fold(0u64, |h, &b| {
        h.wrapping_mul(HASH_MUL).wrapping_add(u64::from(b))
    })
}

/// The hash of the window moved one byte on: `out` leaves, `inn` enters.
fn roll(h: u64, out: u8, inn: u8) -> u64 {
    let top = HASH_MUL.wrapping_pow(NHASH as u32 - 1);
    h.wrapping_sub(u64::from(out).wrapping_mul(top))
        .wrapping_mul(HASH_MUL)
        .wrapping_add(u64::from(inn))
}

fn insert(out: &mut Vec<u8>, literal: &[u8]) {
    if !literal.is_empty() {
        put_int(out, literal.len() as u64);
        out.push(b':');
        out.extend_from_slice(literal);
    }
}

fn digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 64 {
        v >>= 6;
        n += 1;
    }
    n
}

fn put_int(out: &mut Vec<u8>, v: u64) {
    let n = digits(v);
    for k in (0..n).rev() {
        out.push(DIGITS[((v >> (6 * k)) & 63) as usize]);
    }
}

/// Fossil's 32-bit checksum: the target's bytes summed as big-endian 32-bit words.
pub fn checksum(data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(4);
    let mut sum = 0u32;
    for w in &mut words {
        sum = sum.wrapping_add(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    sum.wrapping_add(u32::from_be_bytes(tail))
}

struct Reader<'a> {
    d: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.d.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// A base-64 integer (at least one digit; more than fits in 64 bits is refused).
    fn int(&mut self) -> Option<u64> {
        let start = self.pos;
        let mut v: u64 = 0;
        while let Some(d) = self.d.get(self.pos).and_then(|&b| digit(b)) {
            v = v.checked_mul(64)?.checked_add(u64::from(d))?;
            self.pos += 1;
        }
        (self.pos > start).then_some(v)
    }
}

fn digit(b: u8) -> Option<u8> {
    DIGITS.iter().position(|&d| d == b).map(|p| p as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_small_change_is_a_small_delta() {
        let a = br#"{"price":100.25,"symbol":"ACME","volume":123456,"bids":[1,2,3,4,5,6,7,8,9],"name":"Acme Corporation"}"#;
        let b = br#"{"price":100.26,"symbol":"ACME","volume":123457,"bids":[1,2,3,4,5,6,7,8,9],"name":"Acme Corporation"}"#;
        let d = encode(a, b);
        assert!(d.len() < b.len() / 2, "{}", String::from_utf8_lossy(&d));
        assert_eq!(apply(a, &d, 1 << 20).unwrap(), b);
    }

    #[test]
    fn checksum_matches_fossils() {
        // Words summed big-endian; a tail of 1..3 bytes is the top bytes of one more word.
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"\x01\x02\x03\x04"), 0x0102_0304);
        assert_eq!(checksum(b"\x01\x02\x03\x04\x05"), 0x0102_0304 + 0x0500_0000);
        assert_eq!(checksum(&[0xff; 8]), 0xffff_fffe);
    }

    #[test]
    fn integers_use_fossils_digits() {
        let mut out = Vec::new();
        put_int(&mut out, 0);
        put_int(&mut out, 63);
        out.push(b' ');
        put_int(&mut out, 64);
        assert_eq!(out, b"0~ 10");
        // The delta of "" to "" is its size, newline, checksum.
        assert_eq!(encode(b"", b""), b"0\n0;");
    }

    #[test]
    fn bad_deltas_are_errors_not_panics() {
        let src = b"0123456789abcdefghijklmnop";
        for (d, e) in [
            (&b""[..], FossilError::Header("no size")),
            (
                b"3",
                FossilError::Header("size not terminated by a newline"),
            ),
            (b"3\n3@X,", FossilError::CopyOutOfBounds),
            (b"3\n9:ab", FossilError::InsertTooLong),
            (b"1\n2:ab", FossilError::Overflow),
            (b"2\n2:ab0;", FossilError::Mismatch),
            (b"2\n2:ab", FossilError::Unterminated),
            (b"2\n2!ab", FossilError::UnknownCommand('!')),
            (b"~~~~~~~~~~~~\n", FossilError::Header("no size")),
        ] {
            assert_eq!(
                apply(src, d, 1 << 20),
                Err(e),
                "{}",
                String::from_utf8_lossy(d)
            );
        }
        assert_eq!(
            apply(src, b"zz\n", 100),
            Err(FossilError::TooLarge(4030, 100))
        );
    }

    /// Text made of a few words, so that source and target share long runs.
    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "lorem ",
                "ipsum ",
                "dolor ",
                "ünïcödé ",
                "日本語 ",
                "{\"k\":",
                "1",
                "\n",
            ]),
            0..120,
        )
        .prop_map(|w| w.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn apply_inverts_encode_on_bytes(a in prop::collection::vec(0u8..4, 0..400), b in prop::collection::vec(0u8..4, 0..400)) {
            prop_assert_eq!(apply(&a, &encode(&a, &b), b.len()).unwrap(), b);
        }

        #[test]
        fn apply_inverts_encode_on_any_bytes(a in any::<Vec<u8>>(), b in any::<Vec<u8>>()) {
            prop_assert_eq!(apply(&a, &encode(&a, &b), b.len()).unwrap(), b);
        }

        #[test]
        fn a_delta_of_text_is_text(a in text(), b in text()) {
            let d = encode_str(a.as_bytes(), &b).expect("a delta of UTF-8 text is UTF-8");
            prop_assert_eq!(apply(a.as_bytes(), d.as_bytes(), b.len()).unwrap(), b.as_bytes());
        }

        #[test]
        fn an_edit_costs_about_its_size(a in text(), at in any::<prop::sample::Index>(), edit in text()) {
            let mut b = a.clone();
            let mut p = at.index(a.len() + 1);
            while !b.is_char_boundary(p) { p -= 1; }
            b.insert_str(p, &edit);
            let d = encode(a.as_bytes(), b.as_bytes());
            prop_assert_eq!(&apply(a.as_bytes(), &d, b.len()).unwrap(), b.as_bytes());
            // Two copies, one insert and the numbers around them: at most ~2 blocks more.
            prop_assert!(d.len() <= edit.len() + 3 * NHASH + 40, "{} for an edit of {}", d.len(), edit.len());
        }

        #[test]
        fn garbage_never_panics(src in any::<Vec<u8>>(), d in any::<Vec<u8>>()) {
            let _ = apply(&src, &d, 1 << 16);
        }
    }
}
