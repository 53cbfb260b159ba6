//! The one place where server API failures become HTTP responses.
//!
//! Transport-level problems get an HTTP status (401 wrong key, 400 malformed body, 404
//! unknown method); refusals of a well-formed call are `200` with the Centrifugo-style
//! `{"error":{"code":N,"message":"..."}}` body, as the `cent` client expects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use roomcast_proto::ErrorCode;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid or missing API key")]
    Unauthorized,
    #[error("malformed request body: {0}")]
    BadBody(String),
    #[error("unknown API method: {0}")]
    UnknownMethod(String),
    #[error("{}", .0.message)]
    Refused(ErrorCode),
    #[error("{1}")]
    RefusedWith(ErrorCode, String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::UNAUTHORIZED.code),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST.code),
            ApiError::UnknownMethod(_) => (StatusCode::NOT_FOUND, ErrorCode::METHOD_NOT_FOUND.code),
            ApiError::Refused(e) | ApiError::RefusedWith(e, _) => (StatusCode::OK, e.code),
        };
        (
            status,
            Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response()
    }
}

impl From<ErrorCode> for ApiError {
    fn from(e: ErrorCode) -> Self {
        ApiError::Refused(e)
    }
}
