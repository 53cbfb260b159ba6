//! The keys tokens are verified with and the algorithms accepted. A token's header only
//! *selects* among them: its `alg` must be one of the accepted algorithms, and each key
//! verifies the one algorithm of its kind (the HMAC secret HS256, an RSA key RS256, a P-256
//! key ES256), so a token cannot make the server verify it with a key of another kind (an
//! HS256 token "signed" with the RSA public key is refused).

use std::sync::Arc;

use jsonwebtoken::{decode_header, Algorithm, DecodingKey};

use super::jwks::{Jwks, Key};
use super::TokenError;

/// A key configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the {what} is not a valid PEM public key: {message}")]
    Pem { what: &'static str, message: String },
    #[error("unsupported token algorithm {0:?} (HS256, RS256 and ES256 are)")]
    Algorithm(String),
    #[error("token_jwks_url: {0}")]
    Url(String),
    #[error("token algorithm {0} is accepted but no key for it is configured")]
    NoKey(&'static str),
}

/// The verification keys of a node.
#[derive(Clone, Default)]
pub struct Keys {
    /// The HMAC secret (HS256), raw and as a decoding key.
    hmac: Option<(Arc<[u8]>, DecodingKey)>,
    /// RS256 key for tokens without a `kid` (or without a JWKS).
    rsa: Option<DecodingKey>,
    /// ES256 key for tokens without a `kid` (or without a JWKS).
    ec: Option<DecodingKey>,
    /// Keys by `kid`.
    pub(super) jwks: Option<Arc<Jwks>>,
    /// What a token's `alg` may be.
    algorithms: Vec<Algorithm>,
}

/// A PEM value: inline when it starts with `-----BEGIN`, else the path of a file.
fn pem(value: &str, what: &'static str) -> Result<Vec<u8>, KeyError> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value).map_err(|source| KeyError::Read {
        what,
        path: value.into(),
        source,
    })
}

fn pem_error(what: &'static str) -> impl FnOnce(jsonwebtoken::errors::Error) -> KeyError {
    move |e| KeyError::Pem {
        what,
        message: e.to_string(),
    }
}

fn name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "other",
    }
}

impl Keys {
    /// HS256 with `secret`, nothing else.
    pub fn hmac(secret: &str) -> Keys {
        Keys::default().with_hmac(secret)
    }

    pub fn with_hmac(mut self, secret: &str) -> Keys {
        let raw: Arc<[u8]> = secret.as_bytes().into();
        self.hmac = Some((raw, DecodingKey::from_secret(secret.as_bytes())));
        self.add(Algorithm::HS256)
    }

    /// RS256 with a PEM public key (inline or a file path).
    pub fn with_rsa_pem(mut self, value: &str) -> Result<Keys, KeyError> {
        const WHAT: &str = "RSA public key";
        let key = DecodingKey::from_rsa_pem(&pem(value, WHAT)?).map_err(pem_error(WHAT))?;
        self.rsa = Some(key);
        Ok(self.add(Algorithm::RS256))
    }

    /// ES256 with a PEM P-256 public key (inline or a file path).
    pub fn with_ec_pem(mut self, value: &str) -> Result<Keys, KeyError> {
        const WHAT: &str = "ECDSA public key";
        let key = DecodingKey::from_ec_pem(&pem(value, WHAT)?).map_err(pem_error(WHAT))?;
        self.ec = Some(key);
        Ok(self.add(Algorithm::ES256))
    }

    /// RS256 and ES256 tokens with a `kid` are verified with this JWKS's keys.
    pub fn with_jwks(mut self, jwks: Arc<Jwks>) -> Keys {
        self.jwks = Some(jwks);
        self.add(Algorithm::RS256).add(Algorithm::ES256)
    }

    fn add(mut self, alg: Algorithm) -> Keys {
        if !self.algorithms.contains(&alg) {
            self.algorithms.push(alg);
        }
        self
    }

    /// Accepts only `names` (e.g. `["RS256"]`); empty keeps the algorithms of the keys.
    pub fn pin(mut self, names: &[String]) -> Result<Keys, KeyError> {
        if names.is_empty() {
            return Ok(self);
        }
        let mut pinned = Vec::new();
        for n in names {
            let alg = match n.as_str() {
                "HS256" => Algorithm::HS256,
                "RS256" => Algorithm::RS256,
                "ES256" => Algorithm::ES256,
                _ => return Err(KeyError::Algorithm(n.clone())),
            };
            if !self.algorithms.contains(&alg) {
                return Err(KeyError::NoKey(name(alg)));
            }
            pinned.push(alg);
        }
        self.algorithms = pinned;
        Ok(self)
    }

    /// The HMAC secret, if any.
    pub(super) fn hmac_secret(&self) -> Option<&[u8]> {
        self.hmac.as_ref().map(|(raw, _)| &raw[..])
    }

    /// The key a token's header selects, with the one algorithm it verifies.
    pub(super) fn choose(&self, token: &str) -> Result<Key, TokenError> {
        let header = decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(TokenError::Invalid(format!(
                "algorithm {alg:?} is not accepted"
            )));
        }
        let fixed = |key: &Option<DecodingKey>| {
            key.clone().map(|key| Key { alg, key }).ok_or_else(|| {
                TokenError::Invalid(format!("no key id, and no fixed {alg:?} key configured"))
            })
        };
        match (alg, &header.kid, &self.jwks) {
            (Algorithm::HS256, _, _) => self
                .hmac
                .as_ref()
                .map(|(_, key)| Key {
                    alg,
                    key: key.clone(),
                })
                .ok_or_else(|| TokenError::Invalid("no HMAC secret configured".into())),
            (_, Some(kid), Some(jwks)) => match jwks.key(kid) {
                Some(key) if key.alg == alg => Ok(key),
                Some(_) => Err(TokenError::Invalid(format!(
                    "key {kid:?} does not verify {alg:?}"
                ))),
                None => Err(TokenError::UnknownKey(kid.chars().take(128).collect())),
            },
            (Algorithm::RS256, _, _) => fixed(&self.rsa),
            (Algorithm::ES256, _, _) => fixed(&self.ec),
            _ => Err(TokenError::Invalid(format!(
                "algorithm {alg:?} is not accepted"
            ))),
        }
    }
}
