//! The server API's user operations: `user_publish` (send-to-user through the personal
//! channel) and `user_status` (`personal/`). Request bodies are strict (unknown fields
//! refused); refusals are Centrifugo-style errors with a message saying what was wrong.

use super::api::Answer;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::api::{given, ok, parse};
use super::error::ApiError;
use crate::node::Node;
use crate::personal::PersonalError;

/// The methods this file answers.
pub(super) const METHODS: [&str; 2] = ["user_publish", "user_status"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPublishBody {
    user: String,
    data: Box<RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserStatusBody {
    users: Vec<String>,
}

impl From<PersonalError> for ApiError {
    fn from(e: PersonalError) -> ApiError {
        match e {
            PersonalError::BadData(_) => ApiError::BadBody(e.to_string()),
            PersonalError::Refused(code) => ApiError::Refused(code),
            other => ApiError::RefusedWith(other.code(), other.to_string()),
        }
    }
}

pub(super) async fn run(node: &Node, method: &str, body: &[u8]) -> Result<Answer, ApiError> {
    if method == "user_publish" {
        let b: UserPublishBody = parse(body)?;
        let r = node
            .user_publish(&b.user, b.data, given(b.idempotency_key))
            .await?;
        Ok(ok(json!({ "offset": r.offset, "epoch": r.epoch })))
    } else {
        let b: UserStatusBody = parse(body)?;
        let statuses = node.user_status(&b.users).await?;
        Ok(ok(json!({ "statuses": statuses })))
    }
}
