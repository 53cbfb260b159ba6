//! Events for one user's connections (a read cursor moved, ...): the one function every
//! per-user event goes through, so how they travel can change in one place.

use crate::node::Node;

impl Node {
    /// Delivers `data` to every connection of `user`, on every node.
    ///
    /// For now: a store-first publish into the user's personal channel `#<user>` through
    /// the normal publish path (user-limited, so only that user may subscribe; it is
    /// recoverable like any channel). Failures are logged: the change it reports is
    /// durable already and is read again on reconnect.
    pub async fn user_event(&self, user: &str, data: serde_json::Value) {
        let room = format!("#{user}");
        let data = match serde_json::value::to_raw_value(&data) {
            Ok(d) => d,
            Err(e) => return tracing::error!(error = %e, "user event not serializable"),
        };
        if let Err(e) = self.publish(&room, data, None, None).await {
            tracing::warn!(error = %e, %user, "user event not published");
        }
    }
}
