//! Connection tokens: JWTs with the claims Centrifugo defines (`sub`, `exp`, `info`,
//! `channels`, optional `aud`/`iss`), signed HS256 (the HMAC secret), RS256 or ES256 (a
//! configured public key, or a key of a JWKS picked by the token's `kid`). The algorithms
//! are pinned by configuration and each key verifies only its own algorithm: a token whose
//! header names any other (`none` included, or HS256 "signed" with an RSA public key) is
//! rejected before its signature is looked at.
//!
//! - `keys.rs`: the configured keys and which one a token's header selects;
//! - `jwks.rs`: the JWKS cache (fetch, periodic and unknown-`kid` refresh).
//!
//! What a token must be (RFC 7519 and 7515, as the README's security section says):
//! - a valid signature by a configured key with an accepted algorithm; `exp` in the future when present; `nbf` in the past when
//!   present (no leeway);
//! - with an audience configured, an `aud` claim (a string, or an array containing it);
//!   with an issuer configured, that `iss`;
//! - no `crit` header: roomcast understands no JWS extension, and RFC 7515 says a token
//!   naming one the recipient does not understand must be refused;
//! - as a connection token, no `channel` claim (that makes it a subscription token).

mod jwks;
mod keys;

pub use jwks::{Jwks, JwksError, JwksOptions};
pub use keys::{KeyError, Keys};

use std::sync::Arc;

use jsonwebtoken::{decode, encode, errors::ErrorKind, Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Claims {
    #[serde(default)]
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iat: Option<u64>,
    /// Connection info attached to the client's publications, joins and presence.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<Box<RawValue>>,
    /// Channels the server subscribes the connection to.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub channels: Vec<String>,
    /// In a subscription token: the channel it grants.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub channel: Option<String>,
    /// One audience or several (RFC 7519 allows both).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub aud: Option<Audience>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iss: Option<String>,
}

/// The `aud` claim: a string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(s: &str) -> Self {
        Audience::One(s.to_owned())
    }
}

impl From<String> for Audience {
    fn from(s: String) -> Self {
        Audience::One(s)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Signed with a key id the JWKS does not hold (after a refresh when one was allowed).
    #[error("invalid token: unknown key id {0:?}")]
    UnknownKey(String),
}

/// Verifies connection and subscription tokens with the configured keys, and mints HS256
/// ones (the `token` command and tests). Cheap to clone: the JWKS cache is shared.
#[derive(Clone)]
pub struct Auth {
    keys: Keys,
    /// HS256 signing key, when there is an HMAC secret.
    encoding: Option<EncodingKey>,
    /// Claims checks (audience, issuer, `nbf`); its algorithm list is set per token to
    /// the one algorithm of the key chosen.
    validation: Validation,
}

impl Auth {
    /// HS256 only, with `secret`.
    pub fn new(secret: &str, audience: Option<&str>, issuer: Option<&str>) -> Auth {
        Auth::with_keys(Keys::hmac(secret), audience, issuer)
    }

    /// Verifies with `keys`, accepting only the algorithms they pin.
    pub fn with_keys(keys: Keys, audience: Option<&str>, issuer: Option<&str>) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is optional, as in Centrifugo: a token without it never expires.
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = audience.is_some();
        if let Some(aud) = audience {
            validation.set_audience(&[aud]);
            // Without this a token with no `aud` at all passes the audience check.
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Auth {
            encoding: keys.hmac_secret().map(EncodingKey::from_secret),
            keys,
            validation,
        }
    }

    /// The keys `config` names (the HMAC secret `secret` among them), pinned to
    /// `token_algorithms`. A JWKS is fetched once here: when that fails the node still
    /// starts (tokens with a `kid` are refused until a refresh succeeds).
    pub async fn load(
        config: &crate::Config,
        secret: &str,
        client: &crate::outbound::HttpClient,
    ) -> Result<Auth, KeyError> {
        use std::time::Duration;
        let mut keys = Keys::hmac(secret);
        if let Some(pem) = &config.token_rsa_public_key {
            keys = keys.with_rsa_pem(pem)?;
        }
        if let Some(pem) = &config.token_ecdsa_public_key {
            keys = keys.with_ec_pem(pem)?;
        }
        if let Some(url) = &config.token_jwks_url {
            let options = JwksOptions {
                url: crate::outbound::parse_url(url).map_err(|e| KeyError::Url(e.to_string()))?,
                refresh: Duration::from_secs(config.token_jwks_refresh_secs.max(1)),
                min_refresh: Duration::from_secs(config.token_jwks_min_refresh_secs),
                timeout: Duration::from_millis(config.token_jwks_timeout_ms.max(1)),
                max_bytes: config.token_jwks_max_bytes,
            };
            let jwks = Arc::new(Jwks::new(options, client.clone()));
            if let Err(e) = jwks.refresh().await {
                tracing::error!(error = %e, %url, "first JWKS fetch failed; tokens with a kid are refused until a refresh succeeds");
            }
            keys = keys.with_jwks(jwks);
        }
        let keys = keys.pin(&config.token_algorithms)?;
        Ok(Auth::with_keys(
            keys,
            config.token_audience.as_deref(),
            config.token_issuer.as_deref(),
        ))
    }

    /// The JWKS cache, when keys come from a JWKS URL.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.keys.jwks.as_ref()
    }

    /// Verifies a token of either kind (connection or subscription) with the keys held now.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        refuse_crit(token)?;
        let key = self.keys.choose(token)?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![key.alg];
        match decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(e) => Err(TokenError::Invalid(e.to_string())),
        }
    }

    /// `verify`, but a token naming a key id the JWKS cache lacks first makes the cache
    /// refresh (rate limited, see `Jwks::refresh_for`), so a key rotated in at the
    /// issuer is accepted without waiting for the periodic refresh.
    pub async fn verify_fresh(&self, token: &str) -> Result<Claims, TokenError> {
        match self.verify(token) {
            Err(TokenError::UnknownKey(kid)) => match &self.keys.jwks {
                Some(jwks) if jwks.refresh_for(&kid).await => self.verify(token),
                _ => Err(TokenError::UnknownKey(kid)),
            },
            other => other,
        }
    }

    /// Verifies a connection token: a subscription token (one with a `channel` claim) is
    /// refused, so a grant for one channel cannot be replayed as a login.
    pub fn verify_connection(&self, token: &str) -> Result<Claims, TokenError> {
        not_a_subscription(self.verify(token)?)
    }

    /// `verify_connection` with `verify_fresh`.
    pub async fn verify_connection_fresh(&self, token: &str) -> Result<Claims, TokenError> {
        not_a_subscription(self.verify_fresh(token).await?)
    }

    /// An HS256 token; panics without an HMAC secret (the server always has one).
    pub fn mint(&self, claims: &Claims) -> String {
        let key = self
            .encoding
            .as_ref()
            .expect("minting needs an HMAC secret");
        encode(&Header::new(Algorithm::HS256), claims, key).expect("HS256 encoding cannot fail")
    }
}

fn not_a_subscription(claims: Claims) -> Result<Claims, TokenError> {
    if claims.channel.is_some() {
        return Err(TokenError::Invalid(
            "a subscription token is not a connection token".into(),
        ));
    }
    Ok(claims)
}

/// Refuses a token whose JOSE header has a `crit` member (jsonwebtoken ignores unknown
/// header members). A header that does not decode is left to `decode` to refuse.
fn refuse_crit(token: &str) -> Result<(), TokenError> {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or("");
    // Headers are small; a huge one is refused without decoding it.
    if header.len() > 8192 {
        return Err(TokenError::Invalid("token header too large".into()));
    }
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return Ok(());
    };
    #[derive(Deserialize)]
    struct Crit {
        crit: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<Crit>(&bytes) {
        Ok(Crit { crit: Some(_) }) => Err(TokenError::Invalid(
            "token header has a crit member (no JWS extension is supported)".into(),
        )),
        _ => Ok(()),
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, exp: Option<u64>) -> Claims {
        Claims {
            sub: sub.into(),
            exp,
            ..Claims::default()
        }
    }

    #[test]
    fn valid_expired_wrong_key_and_alg_none() {
        let auth = Auth::new("s3cret", None, None);
        let t = auth.mint(&claims("alice", Some(now_secs() + 60)));
        assert_eq!(auth.verify(&t).unwrap().sub, "alice");
        let t = auth.mint(&claims("alice", None));
        assert_eq!(auth.verify(&t).unwrap().sub, "alice");
        let t = auth.mint(&claims("alice", Some(now_secs() - 5)));
        assert_eq!(auth.verify(&t).unwrap_err(), TokenError::Expired);
        let other = Auth::new("other", None, None).mint(&claims("alice", None));
        assert!(matches!(auth.verify(&other), Err(TokenError::Invalid(_))));
        // alg none: header {"alg":"none","typ":"JWT"}, payload {"sub":"alice"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSJ9.";
        assert!(matches!(auth.verify(none), Err(TokenError::Invalid(_))));
        assert!(matches!(
            auth.verify("garbage"),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let auth = Auth::new("k", Some("chat"), Some("me"));
        let good = Claims {
            sub: "a".into(),
            aud: Some("chat".into()),
            iss: Some("me".into()),
            ..Claims::default()
        };
        assert!(auth.verify(&auth.mint(&good)).is_ok());
        let bad_aud = Claims {
            aud: Some("other".into()),
            ..good
        };
        assert!(auth.verify(&auth.mint(&bad_aud)).is_err());
        let no_iss = Claims {
            sub: "a".into(),
            aud: Some("chat".into()),
            ..Claims::default()
        };
        assert!(auth.verify(&auth.mint(&no_iss)).is_err());
    }

    /// Signs arbitrary header and claims JSON with HS256, as another issuer might.
    fn sign(secret: &str, header: &str, claims: &str) -> String {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!("{}.{}", b64.encode(header), b64.encode(claims));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn audience_is_required_when_configured_and_may_be_an_array() {
        let auth = Auth::new("k", Some("chat"), None);
        let none = sign("k", HS256, r#"{"sub":"a"}"#);
        assert!(matches!(auth.verify(&none), Err(TokenError::Invalid(_))));
        let many = sign("k", HS256, r#"{"sub":"a","aud":["other","chat"]}"#);
        assert_eq!(auth.verify(&many).unwrap().sub, "a");
        let wrong = sign("k", HS256, r#"{"sub":"a","aud":["other","more"]}"#);
        assert!(auth.verify(&wrong).is_err());
        // Without an audience configured, no `aud` is needed.
        let open = Auth::new("k", None, None);
        assert!(open.verify(&none).is_ok());
    }

    #[test]
    fn not_before_is_honoured() {
        let auth = Auth::new("k", None, None);
        let later = sign(
            "k",
            HS256,
            &format!(r#"{{"sub":"a","nbf":{}}}"#, now_secs() + 600),
        );
        assert!(matches!(auth.verify(&later), Err(TokenError::Invalid(_))));
        let past = sign(
            "k",
            HS256,
            &format!(r#"{{"sub":"a","nbf":{}}}"#, now_secs() - 5),
        );
        assert!(auth.verify(&past).is_ok());
    }

    #[test]
    fn crit_headers_are_refused() {
        let auth = Auth::new("k", None, None);
        let crit = sign(
            "k",
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"sub":"a"}"#,
        );
        assert!(matches!(auth.verify(&crit), Err(TokenError::Invalid(_))));
        let plain = sign("k", HS256, r#"{"sub":"a"}"#);
        assert!(auth.verify(&plain).is_ok());
    }

    #[test]
    fn subscription_tokens_are_not_connection_tokens() {
        let auth = Auth::new("k", None, None);
        let sub = auth.mint(&Claims {
            sub: "a".into(),
            channel: Some("room".into()),
            ..Claims::default()
        });
        assert!(auth.verify(&sub).is_ok());
        assert!(matches!(
            auth.verify_connection(&sub),
            Err(TokenError::Invalid(_))
        ));
        assert!(auth
            .verify_connection(&auth.mint(&claims("a", None)))
            .is_ok());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn verify_never_panics(token in ".{0,300}") {
            let auth = Auth::new("k", Some("chat"), Some("me"));
            let _ = auth.verify_connection(&token);
        }

        #[test]
        fn verify_never_panics_on_token_shaped_input(
            header in "[A-Za-z0-9_=-]{0,60}",
            claims in proptest::prelude::any::<String>(),
            sig in "[A-Za-z0-9_-]{0,50}",
        ) {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let auth = Auth::new("k", Some("chat"), None);
            let _ = auth.verify(&format!("{header}.{}.{sig}", b64.encode(&claims)));
            let signed = sign("k", HS256, &claims);
            let _ = auth.verify(&signed);
            let _ = auth.verify(&sign("k", &claims, r#"{"sub":"a"}"#));
        }
    }
}
