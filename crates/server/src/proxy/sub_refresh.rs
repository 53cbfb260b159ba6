//! The sub_refresh proxy: a subscription the subscribe proxy granted with an `expire_at`,
//! in a namespace with `proxy_sub_refresh`, is refreshed by the backend when that time
//! comes, as a connection is by the refresh proxy: extended (a new `expire_at`), ended
//! (`expired: true`: the client gets unsubscribe push 2501 "subscription expired") or
//! kept for good (`expire_at` 0). The answer has the refresh proxy's shape
//! (`RefreshProxyResult`); scheduling is in `refresher.rs`.

use serde::Serialize;

use super::Caller;

/// What the node sends (Centrifugo's sub_refresh proxy request fields).
#[derive(Debug, Serialize)]
pub struct SubRefreshProxyRequest<'a> {
    /// Who asks: client id, transport, protocol and encoding.
    #[serde(flatten)]
    pub caller: Caller<'a>,
    pub user: &'a str,
    pub channel: &'a str,
}
