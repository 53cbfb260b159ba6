//! The one place where server API failures become HTTP responses.
//!
//! Transport-level problems get an HTTP status (401 wrong key, 400 malformed body or
//! refused publication data, 404 unknown method, 408 body too slow, 413 body too large,
//! 503 too many calls in flight); refusals of a well-formed call are `200` with the Centrifugo-style
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
    #[error("too many server API calls in flight; retry")]
    Busy,
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("unknown API method: {0}")]
    UnknownMethod(String),
    #[error("{}", .0.message)]
    Refused(ErrorCode),
    #[error("{1}")]
    RefusedWith(ErrorCode, String),
}

impl ApiError {
    /// The Centrifugo error code and message of this failure (what the HTTP body, a batch
    /// reply and the gRPC API's `error` carry).
    pub fn code_and_message(&self) -> (u32, String) {
        (self.status_and_code().1, self.to_string())
    }

    fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::UNAUTHORIZED.code),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST.code),
            ApiError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::TOO_MANY_REQUESTS.code,
            ),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, ErrorCode::BAD_REQUEST.code),
            ApiError::BodyTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BAD_REQUEST.code)
            }
            ApiError::UnknownMethod(_) => (StatusCode::NOT_FOUND, ErrorCode::METHOD_NOT_FOUND.code),
            ApiError::Refused(e) | ApiError::RefusedWith(e, _) => (StatusCode::OK, e.code),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code) = self.status_and_code();
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
