//! The chat layer's per-user events (read cursors and the like): pushed to every
//! connection of a user on every node through the send-to-user path of `personal/`.

use serde_json::value::RawValue;

use crate::node::Node;
use crate::personal::PersonalError;

impl Node {
    /// Publishes `data` to `user`'s personal channel: stored first, then delivered to every
    /// connection of the user wherever it is (`Node::user_publish`), in offset order.
    pub async fn user_event(
        &self,
        user: &str,
        data: serde_json::Value,
    ) -> Result<(), PersonalError> {
        let raw = RawValue::from_string(data.to_string()).expect("a Value serializes to JSON");
        self.user_publish(user, raw, None).await.map(drop)
    }
}
