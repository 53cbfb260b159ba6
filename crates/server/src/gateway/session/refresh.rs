//! Server-side refresh of this session (the refresh and sub_refresh proxies, see
//! `crate::proxy::refresher`): a connection the connect proxy let in with an `expire_at`,
//! and subscriptions the subscribe proxy granted with one in `proxy_sub_refresh`
//! namespaces, are registered with the node's refresher instead of being left to expire;
//! the info the backend sends back is taken here before each command, so publications and
//! presence carry it from then on. The registrations end with the subscription or the
//! connection.

use std::sync::Arc;

use roomcast_proto::Format;

use super::{Services, Session};
use crate::proxy::refresher::Subject;
use crate::proxy::Refreshed;

impl<S: Services> Session<S> {
    /// Who the refresher describes to the backend for this connection.
    fn subject(&self, refreshed: Option<Arc<Refreshed>>) -> Subject {
        let identity = self.identity.as_ref().expect("connected");
        Subject {
            client: identity.client.as_str().into(),
            user: identity.user.as_str().into(),
            protocol: match self.format() {
                Format::Json => "json",
                Format::Protobuf => "protobuf",
            },
            outbox: self.peer.outbox.clone(),
            headers: self.headers.clone().into(),
            refreshed,
        }
    }

    /// Whether an `expire_at` from the connect proxy is the refresh proxy's to handle.
    pub(super) fn refreshes_server_side(&self) -> bool {
        self.node.refresher().is_some()
            && self
                .node
                .proxies()
                .is_some_and(crate::proxy::Proxies::has_refresh)
    }

    /// Registers the connection for the refresh proxy at `expire_at`.
    pub(super) fn schedule_refresh(&mut self, expire_at: u64) {
        let Some(refresher) = self.node.refresher() else {
            return;
        };
        let slot = Arc::new(Refreshed::default());
        refresher.schedule(self.conn, None, self.subject(Some(slot.clone())), expire_at);
        self.refreshed = Some(slot);
        self.refreshing = true;
    }

    /// Registers a subscription for the sub_refresh proxy at `expire_at`.
    pub(super) fn schedule_sub_refresh(&mut self, channel: &str, expire_at: u64) {
        let has = self
            .node
            .proxies()
            .is_some_and(crate::proxy::Proxies::has_sub_refresh);
        let Some(refresher) = self.node.refresher().filter(|_| has) else {
            return;
        };
        refresher.schedule(
            self.conn,
            Some(channel.into()),
            self.subject(None),
            expire_at,
        );
        self.refreshing = true;
    }

    /// Takes the connection info the refresh proxy sent, if any.
    pub(super) fn take_refreshed(&mut self) {
        let Some(info) = self.refreshed.as_ref().and_then(|r| r.take_info()) else {
            return;
        };
        if let Some(identity) = &mut self.identity {
            identity.conn_info = Some(info);
        }
    }

    /// The subscription to `channel` ended.
    pub(super) fn forget_sub_refresh(&self, channel: &str) {
        if let Some(r) = self.node.refresher().filter(|_| self.refreshing) {
            r.forget_sub(self.conn, channel);
        }
    }

    /// The connection ended.
    pub(super) fn forget_refresh(&self) {
        if let Some(r) = self.node.refresher().filter(|_| self.refreshing) {
            r.forget(self.conn);
        }
    }
}
