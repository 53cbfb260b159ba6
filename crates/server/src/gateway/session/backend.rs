//! What the application backend decides for this session, through the node's proxies
//! (see `crate::proxy`): who a client connecting without a token is (connect proxy),
//! whether, and with what data, each publication in a `proxy_publish` namespace goes out
//! (publish proxy), who may subscribe to a `proxy_subscribe` namespace (subscribe proxy),
//! and the answers to RPC calls (rpc proxy). Nothing is stored the publish proxy did not accept: a refusal, a
//! garbage answer, a slow or down backend all answer the client with an error and drop
//! the publication before the store sees it.

use futures_util::future::join_all;
use roomcast_proto::command::{ConnectRequest, RpcRequest, SubscribeRequest};
use roomcast_proto::{ClientInfo, Disconnect, ErrorCode};
use serde_json::value::RawValue;

use super::{Flow, Services, Session};
use crate::auth::Claims;
use crate::channel::Channel;
use crate::proxy::{
    Caller, ConnectProxyRequest, Outcome, ProxyError, PublishProxyRequest, RpcProxyRequest,
    SubscribeProxyRequest,
};

impl<S: Services> Session<S> {
    /// Whether a connect without a token goes to the connect proxy.
    pub(super) fn has_connect_proxy(&self) -> bool {
        self.node
            .proxies()
            .is_some_and(crate::proxy::Proxies::has_connect)
    }

    /// Asks the connect proxy who the client `client` is. `Err` when the connect ends
    /// here (its reply or close already decided).
    pub(super) async fn proxy_connect(
        &self,
        id: u32,
        req: &ConnectRequest,
        client: &str,
    ) -> Result<Claims, Flow> {
        let proxies = self.node.proxies().expect("has_connect_proxy");
        let request = ConnectProxyRequest {
            caller: Caller::websocket_json(client),
            name: &req.name,
            version: &req.version,
            data: req.data.as_deref(),
        };
        let outcome = proxies.connect(&request, &self.headers).await;
        let failed = |e: ProxyError| {
            tracing::warn!(error = %e, "connect proxy failed");
            // Temporary: the SDK reconnects with backoff.
            self.error(id, ErrorCode::INTERNAL);
            Err(Flow::Continue)
        };
        match outcome.expect("has_connect_proxy") {
            Ok(Outcome::Accept(mut r)) => match r.conn_info(self.node.config().max_data_depth) {
                Ok(info) => Ok(Claims {
                    sub: r.user,
                    exp: (r.expire_at > 0).then_some(r.expire_at),
                    info,
                    channels: r.channels,
                    ..Claims::default()
                }),
                Err(e) => failed(e),
            },
            Ok(Outcome::Refuse(code, message)) => {
                self.reply(self.format().error_message(id, code, &message));
                Err(Flow::Continue)
            }
            Ok(Outcome::Disconnect(d)) => Err(Flow::Close(d)),
            Err(e) => failed(e),
        }
    }

    /// Asks the subscribe proxy whether the client may subscribe. `Some(expire_at)`:
    /// granted (0: it never expires); `None`: refused, failed or disconnected, the client
    /// already answered.
    pub(super) async fn proxy_subscribe(&self, id: u32, req: &SubscribeRequest) -> Option<u64> {
        let identity = self.identity.as_ref().expect("connected");
        let Some(proxies) = self.node.proxies() else {
            self.error(id, ErrorCode::PERMISSION_DENIED);
            return None;
        };
        let request = SubscribeProxyRequest {
            caller: Caller::websocket_json(&identity.client),
            user: &identity.user,
            channel: &req.channel,
            data: req.data.as_deref(),
            info: identity.conn_info.as_deref(),
        };
        match proxies.subscribe(&request, &self.headers).await {
            Some(Ok(Outcome::Accept(r))) => Some(r.expire_at),
            Some(Ok(Outcome::Refuse(code, message))) => {
                self.reply(self.format().error_message(id, code, &message));
                None
            }
            Some(Ok(Outcome::Disconnect(d))) => {
                self.peer.outbox.close(d);
                None
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, channel = %req.channel, "subscribe proxy failed");
                self.error(id, ErrorCode::INTERNAL);
                None
            }
            // Validated at start: a proxy_subscribe namespace has an endpoint.
            None => {
                self.error(id, ErrorCode::PERMISSION_DENIED);
                None
            }
        }
    }

    /// Whether an rpc call of `method` goes to the rpc proxy.
    pub(super) fn proxies_rpc(&self, method: &str) -> bool {
        !method.starts_with("roomcast.")
            && self
                .node
                .proxies()
                .is_some_and(crate::proxy::Proxies::has_rpc)
    }

    /// Asks the rpc proxy to answer a call and replies with its answer.
    pub(super) async fn proxy_rpc(&self, id: u32, req: RpcRequest) -> Flow {
        let proxies = self.node.proxies().expect("proxies_rpc");
        let identity = self.identity.as_ref().expect("connected");
        let request = RpcProxyRequest {
            caller: Caller::websocket_json(&identity.client),
            user: &identity.user,
            method: &req.method,
            data: req.data.as_deref(),
            info: identity.conn_info.as_deref(),
        };
        let answer = proxies.rpc(&request, &self.headers).await;
        let failed = |e: ProxyError| {
            tracing::warn!(error = %e, method = %req.method, "rpc proxy failed");
            self.error(id, ErrorCode::INTERNAL);
            Flow::Continue
        };
        match answer.expect("proxies_rpc") {
            Ok(Outcome::Accept(r)) => match r.reply(self.node.config().max_data_depth) {
                Ok(result) => {
                    self.reply(self.format().reply(id, "rpc", &result));
                    Flow::Continue
                }
                Err(e) => failed(e),
            },
            Ok(Outcome::Refuse(code, message)) => {
                self.reply(self.format().error_message(id, code, &message));
                Flow::Continue
            }
            Ok(Outcome::Disconnect(d)) => Flow::Close(d),
            Err(e) => failed(e),
        }
    }

    /// Passes the publications bound for `proxy_publish` namespaces through the publish
    /// proxy (concurrently, within the proxy's slots and timeout), in order: refused ones
    /// get their error and are dropped, accepted ones keep or take the backend's data.
    /// A backend disconnect closes the connection and drops the whole batch.
    pub(super) async fn proxy_publishes(
        &self,
        ids: Vec<u32>,
        items: Vec<(String, Box<RawValue>)>,
        sender: &ClientInfo,
    ) -> (Vec<u32>, Vec<(String, Box<RawValue>)>) {
        let Some(proxies) = self.node.proxies().filter(|p| p.has_publish()) else {
            return (ids, items);
        };
        let config = self.node.config();
        let proxied = |channel: &str| {
            Channel::resolve(config, channel).is_ok_and(|c| c.options.proxy_publish)
        };
        if !items.iter().any(|(channel, _)| proxied(channel)) {
            return (ids, items);
        }
        let asks = items.iter().map(|(channel, data)| async {
            if !proxied(channel) {
                return None;
            }
            let request = PublishProxyRequest {
                caller: Caller::websocket_json(&sender.client),
                user: &sender.user,
                channel,
                data,
                info: sender.conn_info.as_deref(),
            };
            proxies.publish(&request, &self.headers).await
        });
        let answers = join_all(asks).await;
        let mut kept = (Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()));
        let mut close: Option<Disconnect> = None;
        for ((id, (channel, data)), answer) in ids.into_iter().zip(items).zip(answers) {
            let data = match answer {
                None => Ok(data),
                Some(Ok(Outcome::Accept(r))) => match r.rewritten(config.max_data_depth) {
                    Ok(new) => Ok(new.unwrap_or(data)),
                    Err(e) => Err(e),
                },
                Some(Ok(Outcome::Refuse(code, message))) => {
                    self.reply(self.format().error_message(id, code, &message));
                    continue;
                }
                Some(Ok(Outcome::Disconnect(d))) => {
                    close.get_or_insert(d);
                    continue;
                }
                Some(Err(e)) => Err(e),
            };
            match data {
                Ok(data) => {
                    kept.0.push(id);
                    kept.1.push((channel, data));
                }
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "publish proxy failed");
                    self.error(id, ErrorCode::INTERNAL);
                }
            }
        }
        if let Some(d) = close {
            self.peer.outbox.close(d);
            return (Vec::new(), Vec::new());
        }
        kept
    }
}
