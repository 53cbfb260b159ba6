//! Token keys from a JWKS URL (RFC 7517): fetched at start, refreshed every
//! `token_jwks_refresh_secs`, and again when a token names a `kid` the cache does not
//! hold, at most once per `token_jwks_min_refresh_secs` (a stream of tokens with made-up
//! key ids cannot make the node hammer the key server).
//!
//! Invariants:
//! - a refresh that fails (down, slow, too large, not a JWKS, no usable key) keeps the last
//!   good keys: a key server outage does not log everyone out;
//! - each key is pinned to one algorithm by its type (RSA: RS256, EC P-256: ES256), and a
//!   key whose `alg` names another algorithm, or whose `use` is not `sig`, is skipped;
//! - at most `MAX_KEYS` keys are kept; the response body and time are bounded by the
//!   outbound client.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::Uri;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use crate::outbound::HttpClient;

/// Most keys taken from one JWKS (real ones hold a handful).
pub(super) const MAX_KEYS: usize = 64;

/// A verification key and the one algorithm it verifies.
#[derive(Clone)]
pub struct Key {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// Settings of a JWKS source.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    pub url: Uri,
    /// Refresh period.
    pub refresh: Duration,
    /// Least time between two fetches caused by unknown key ids.
    pub min_refresh: Duration,
    /// Deadline of one fetch (connect, headers and body).
    pub timeout: Duration,
    /// Largest response body.
    pub max_bytes: usize,
}

/// Why a JWKS response was not taken.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching the JWKS: {0}")]
    Fetch(#[from] crate::outbound::OutboundError),
    #[error("not a JWKS: {0}")]
    Parse(String),
    #[error("the JWKS has no usable RS256 or ES256 signing key with a kid")]
    NoKeys,
}

/// The cached keys of one JWKS URL.
pub struct Jwks {
    options: JwksOptions,
    client: HttpClient,
    /// The last good key set by `kid`; swapped whole on a successful refresh, read by every
    /// token verification (short critical sections, never held across an await).
    keys: RwLock<Arc<HashMap<String, Key>>>,
    /// When the last fetch started; held across a fetch, so concurrent refreshes for an
    /// unknown `kid` wait for one fetch instead of each starting their own.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

/// Parses a JWKS document into its usable keys by `kid`.
pub(super) fn parse(body: &[u8]) -> Result<HashMap<String, Key>, JwksError> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| JwksError::Parse(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in set.keys {
        if keys.len() == MAX_KEYS {
            break;
        }
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        let named = jwk.common.key_algorithm;
        let agrees = match named {
            None => true,
            Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
            Some(_) => false,
        };
        if !agrees {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.insert(kid, Key { alg, key });
    }
    if keys.is_empty() {
        return Err(JwksError::NoKeys);
    }
    Ok(keys)
}

impl Jwks {
    pub fn new(options: JwksOptions, client: HttpClient) -> Jwks {
        Jwks {
            options,
            client,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    /// The key with this id, if the cache holds it.
    pub fn key(&self, kid: &str) -> Option<Key> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    /// Number of keys cached.
    pub fn len(&self) -> usize {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fetches the JWKS now; on success replaces the cache, on failure keeps it.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch().await
    }

    /// A token named `kid`, which the cache does not hold: fetches again unless a fetch
    /// started less than `min_refresh` ago. True when the cache now holds `kid`.
    pub async fn refresh_for(&self, kid: &str) -> bool {
        let mut last = self.last_fetch.lock().await;
        // Another caller may have fetched while this one waited for the lock.
        if self.key(kid).is_some() {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < self.options.min_refresh) {
            return false;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, url = %self.options.url, "JWKS refresh failed; keeping the last good keys");
        }
        self.key(kid).is_some()
    }

    async fn fetch(&self) -> Result<usize, JwksError> {
        let resp = self
            .client
            .get(
                &self.options.url,
                self.options.timeout,
                self.options.max_bytes,
            )
            .await?;
        let keys = parse(&resp.body)?;
        let n = keys.len();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        tracing::debug!(keys = n, url = %self.options.url, "JWKS refreshed");
        Ok(n)
    }

    /// Refreshes every `refresh` until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.options.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // The first tick is immediate; the start already fetched.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, url = %self.options.url, "JWKS refresh failed; keeping the last good keys");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    #[test]
    fn usable_keys_are_taken_and_pinned_by_type() {
        let body = format!(
            r#"{{"keys":[
                {{"kty":"RSA","kid":"r1","n":"{RSA_N}","e":"AQAB"}},
                {{"kty":"RSA","kid":"r2","alg":"RS256","use":"sig","n":"{RSA_N}","e":"AQAB"}},
                {{"kty":"RSA","kid":"enc","use":"enc","n":"{RSA_N}","e":"AQAB"}},
                {{"kty":"RSA","kid":"wrong-alg","alg":"ES256","n":"{RSA_N}","e":"AQAB"}},
                {{"kty":"RSA","n":"{RSA_N}","e":"AQAB"}},
                {{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}}
            ]}}"#
        );
        let keys = parse(body.as_bytes()).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["r1", "r2"]);
        assert!(keys.values().all(|k| k.alg == Algorithm::RS256));
    }

    #[test]
    fn garbage_and_empty_sets_are_refused() {
        assert!(matches!(parse(b"nope"), Err(JwksError::Parse(_))));
        assert!(matches!(parse(b"{\"keys\":[]}"), Err(JwksError::NoKeys)));
        assert!(matches!(
            parse(br#"{"keys":[{"kty":"oct","kid":"a","k":"c2VjcmV0"}]}"#),
            Err(JwksError::NoKeys)
        ));
    }
}
