//! Connection tokens: HS256 JWTs with the claims Centrifugo defines (`sub`, `exp`, `info`,
//! `channels`, optional `aud`/`iss`). The algorithm is pinned: a token whose header names
//! any other algorithm (`none` included) is rejected before its signature is looked at.

use jsonwebtoken::{
    decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
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
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iss: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies and mints connection tokens with one HMAC secret.
#[derive(Clone)]
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &str, audience: Option<&str>, issuer: Option<&str>) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is optional, as in Centrifugo: a token without it never expires.
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_aud = audience.is_some();
        if let Some(aud) = audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Auth {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(e) => Err(TokenError::Invalid(e.to_string())),
        }
    }

    pub fn mint(&self, claims: &Claims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 encoding cannot fail")
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
}
