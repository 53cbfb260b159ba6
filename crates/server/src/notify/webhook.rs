//! One webhook request of the notifier: the batch's JSON body, its HMAC-SHA256 signature,
//! its idempotency key, and the capped exponential backoff between attempts.
//!
//! Wire format (a POST to `notify_webhook_url`, `Content-Type: application/json`):
//! `{"room", "offset", "publication_id", "sender" (user or null), "batch", "users",
//! "idempotency_key"}`, with headers `X-Roomcast-Signature: sha256=<hex HMAC-SHA256 of the
//! body with notify_webhook_secret>` and `Idempotency-Key: <key>`. The key is derived from
//! room, offset and batch index only (`idempotency_key`), so a batch retried after a
//! restart carries the same key. Any 2xx answer acknowledges the batch; anything else
//! (status, refused connection, timeout) is retried.

use std::time::Duration;

use hmac::{Hmac, Mac};
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::outbound::{HttpClient, OutboundError};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-roomcast-signature";
/// The idempotency key header.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Largest webhook answer body read (it is ignored beyond its status).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// One request's body.
#[derive(Debug, Serialize)]
pub struct Batch<'a> {
    pub room: &'a str,
    pub offset: u64,
    pub publication_id: &'a str,
    /// The publisher's user; `None` (null) for the server API.
    pub sender: Option<&'a str>,
    /// Index of this batch among the publication's batches (0, 1, ...).
    pub batch: u32,
    pub users: &'a [String],
    pub idempotency_key: &'a str,
}

/// The idempotency key of batch `batch` of publication `offset` in `room`: the first 128
/// bits of SHA-256 over `room`, a zero byte, and the offset and batch as big-endian
/// integers, in hex. The same after a restart, different for every batch.
pub fn idempotency_key(room: &str, offset: u64, batch: u32) -> String {
    let mut h = Sha256::new();
    h.update(room.as_bytes());
    h.update([0u8]);
    h.update(offset.to_be_bytes());
    h.update(batch.to_be_bytes());
    hex(&h.finalize()[..16])
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The configured webhook.
pub struct Webhook {
    pub client: HttpClient,
    pub uri: Uri,
    pub secret: Vec<u8>,
    /// Deadline of one request (connect, answer and its body).
    pub timeout: Duration,
}

impl Webhook {
    /// One attempt: resolves `Ok` on a 2xx answer.
    pub async fn post(&self, batch: &Batch<'_>) -> Result<(), OutboundError> {
        let body = serde_json::to_vec(batch).expect("a batch serializes");
        let header = |v: String| {
            HeaderValue::from_str(&v).map_err(|e| OutboundError::Transport(e.to_string()))
        };
        let headers = [
            (
                HeaderName::from_static(SIGNATURE_HEADER),
                header(signature(&self.secret, &body))?,
            ),
            (
                HeaderName::from_static(IDEMPOTENCY_HEADER),
                header(batch.idempotency_key.to_owned())?,
            ),
        ];
        self.client
            .post_json(&self.uri, &headers, body, self.timeout, MAX_ANSWER_BYTES)
            .await
            .map(drop)
    }
}

/// Exponential backoff from `min` doubling up to `max`, with up to a quarter of jitter so
/// nodes retrying the same webhook spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = base.as_millis() as u64 / 4;
        let extra = if jitter == 0 {
            0
        } else {
            rand::random::<u64>() % jitter
        };
        (base + Duration::from_millis(extra)).min(self.max)
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_and_distinct() {
        let k = idempotency_key("n:room", 7, 0);
        assert_eq!(k, idempotency_key("n:room", 7, 0));
        assert_eq!(k.len(), 32);
        assert_ne!(k, idempotency_key("n:room", 7, 1));
        assert_ne!(k, idempotency_key("n:room", 8, 0));
        assert_ne!(k, idempotency_key("n:roo", 7, 0));
    }

    #[test]
    fn signature_is_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert!((100..125).contains(&d[0]), "{d:?}");
        assert!((200..250).contains(&d[1]), "{d:?}");
        assert!(d[4..].iter().all(|&x| x == 1000), "{d:?}");
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(125));
    }
}
