//! `POST /page/login`: the chat page's "pick a name" in insecure mode.
//!
//! Insecure mode already lets anyone connect without a token, but as an anonymous user,
//! who has no rooms, no read cursors and no personal channel. So that a newcomer can try
//! the chat as `alice` without minting a token, the node signs one for the name asked,
//! valid `LOGIN_TTL_SECS`, with its own HMAC secret. Outside insecure mode the answer is
//! 403 and nothing is signed: a real deployment's tokens come from its backend (the page
//! takes a pasted token). The body is at most `MAX_BODY` bytes and the user id is checked
//! as the chat layer checks one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{now_secs, Claims};
use crate::node::Node;

/// Seconds a page login token is valid (the page logs in again after).
const LOGIN_TTL_SECS: u64 = 3600;

/// Largest login body (a user id is at most 255 bytes).
const MAX_BODY: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub(super) async fn login(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    if !node.config.insecure {
        return refuse(
            StatusCode::FORBIDDEN,
            "picking a name needs insecure mode (serve --insecure); paste a connection token"
                .into(),
        );
    }
    if body.len() > MAX_BODY {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_BODY} bytes"),
        );
    }
    let user = match serde_json::from_slice::<LoginBody>(&body) {
        Ok(b) => b.user,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"user\": \"name\"}}: {e}"),
            )
        }
    };
    // The chat layer's rule and the personal channels' (no ',') together.
    if let Err(e) = crate::chat::requests::check_user(&user) {
        return refuse(StatusCode::BAD_REQUEST, e.to_string());
    }
    if let Err(e) = crate::personal::check_user(&user) {
        return refuse(StatusCode::BAD_REQUEST, e.to_string());
    }
    let now = now_secs();
    let claims = Claims {
        sub: user.clone(),
        exp: Some(now + LOGIN_TTL_SECS),
        iat: Some(now),
        aud: node.config.token_audience.clone().map(Into::into),
        iss: node.config.token_issuer.clone(),
        ..Claims::default()
    };
    tracing::info!(%user, "page login (insecure mode)");
    Json(json!({ "token": node.auth.mint(&claims), "user": user, "ttl": LOGIN_TTL_SECS }))
        .into_response()
}
