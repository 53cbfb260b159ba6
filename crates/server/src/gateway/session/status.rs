//! `rpc` method `roomcast.status`: online/offline and last-seen time of many users at
//! once (`Node::user_status`), for any connected client.
//!
//! Request data `{"users": ["alice", ...]}` (at most `user_status_max_users`); result
//! data `{"statuses": [{"user": "alice", "online": true}, {"user": "bob", "online":
//! false, "last_seen": 1764633600000}, ...]}`, in the order asked. A malformed request
//! is error 107 (bad request).

use roomcast_proto::command::RpcRequest;
use roomcast_proto::{ErrorCode, RpcResult};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Services, Session};
use crate::personal::UserStatus;

/// The method name (the `roomcast.` prefix keeps it clear of applications' own methods).
pub(super) const STATUS: &str = "roomcast.status";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRequest {
    users: Vec<String>,
}

#[derive(serde::Serialize)]
struct StatusResult {
    statuses: Vec<UserStatus>,
}

impl<S: Services> Session<S> {
    pub(super) async fn status(&mut self, id: u32, req: RpcRequest) {
        let Some(data) = req.data else {
            return self.error(id, ErrorCode::BAD_REQUEST);
        };
        let Ok(parsed) = serde_json::from_str::<StatusRequest>(data.get()) else {
            return self.error(id, ErrorCode::BAD_REQUEST);
        };
        match self.node.user_status(parsed.users).await {
            Ok(statuses) => {
                let json =
                    serde_json::to_string(&StatusResult { statuses }).expect("statuses serialize");
                let data = RawValue::from_string(json).expect("serde_json writes JSON");
                self.reply(
                    self.format()
                        .reply(id, "rpc", &RpcResult { data: Some(data) }),
                );
            }
            Err(e) => self.error(id, e),
        }
    }
}
