//! Which server a run talks to and how: the `--target` spec, parsed once in the parent and shipped
//! verbatim to worker processes (hence Serialize).
//!
//! Spec syntax: comma-separated `key=value`, e.g.
//! `kind=roomcast,addr=127.0.0.1:8000,pid=1234,secret=S,api_key=K`
//! `kind=limit` (no addr: the bench starts its own raw fan-out server as a child process)
//! `kind=socketio,addr=127.0.0.1:3000,pid=11+12` (CPU is summed over all `+`-separated pids)
//! `kind=pusher,addr=127.0.0.1:6001,pid=13,app_id=1,key=k,secret=s` (Sockudo)

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The wire protocol a target speaks; decides every adapter choice in `wire` and `publisher`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// roomcast: Centrifugo client protocol v2 (JSON) + server HTTP API.
    Roomcast,
    /// The bench's own raw fan-out server: no protocol, no store.
    Limit,
    /// Socket.IO 4 (Engine.IO v4 over a bare WebSocket).
    SocketIo,
    /// Pusher protocol 7 (Sockudo); publishes go through the signed REST API.
    Pusher,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Target {
    /// Name used in tables and plots (defaults to the kind).
    pub name: String,
    pub kind: Kind,
    /// None only for `kind=limit` before the bench has started its own server.
    pub addr: Option<SocketAddr>,
    /// Server processes whose RSS (first pid) and CPU time (sum) are reported.
    pub pids: Vec<u32>,
    /// roomcast: HMAC secret to mint connection JWTs; Pusher: app secret for REST signatures.
    pub secret: Option<String>,
    /// roomcast: server API key for `POST /api/publish`.
    pub api_key: Option<String>,
    /// Pusher app id and key.
    pub app_id: Option<String>,
    pub app_key: Option<String>,
    /// roomcast with the chat layer in use (`chat=1`): every member (and each room's publisher) is
    /// added to its room with the server API `add_members` before the joins, and each member moves
    /// its read cursor (`rpc roomcast.read`) to the newest offset it has received once a second, as
    /// a chat client with the room open does. Pair with a `members_only` namespace on the server.
    #[serde(default)]
    pub chat: bool,
}

impl Target {
    pub(crate) fn parse(spec: &str) -> Result<Target> {
        let mut t = Target {
            name: String::new(),
            kind: Kind::Limit,
            addr: None,
            pids: vec![],
            secret: None,
            api_key: None,
            app_id: None,
            app_key: None,
            chat: false,
        };
        let mut kind = None;
        for kv in spec.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("`{kv}` is not key=value"))?;
            match k {
                "kind" => {
                    kind = Some(match v {
                        "roomcast" => Kind::Roomcast,
                        "limit" => Kind::Limit,
                        "socketio" => Kind::SocketIo,
                        "pusher" | "sockudo" => Kind::Pusher,
                        _ => bail!("unknown kind `{v}` (roomcast, limit, socketio, pusher)"),
                    });
                }
                "name" => t.name = v.to_string(),
                "addr" => t.addr = Some(v.parse().with_context(|| format!("bad addr `{v}`"))?),
                "pid" => {
                    t.pids = v
                        .split('+')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .context("bad pid")?;
                }
                "secret" => t.secret = Some(v.to_string()),
                "api_key" => t.api_key = Some(v.to_string()),
                "app_id" => t.app_id = Some(v.to_string()),
                "key" | "app_key" => t.app_key = Some(v.to_string()),
                "chat" => t.chat = matches!(v, "1" | "true" | "yes"),
                _ => bail!("unknown target key `{k}`"),
            }
        }
        t.kind = kind.context("target needs kind=...")?;
        if t.name.is_empty() {
            t.name = match t.kind {
                Kind::Roomcast => "roomcast",
                Kind::Limit => "limit",
                Kind::SocketIo => "socketio",
                Kind::Pusher => "sockudo",
            }
            .to_string();
        }
        let only_loopback = t.addr.is_none_or(|a| a.ip().is_loopback());
        if !only_loopback {
            bail!("load tests only target 127.0.0.0/8, not {:?}", t.addr);
        }
        if t.addr.is_none() && t.kind != Kind::Limit {
            bail!("target {} needs addr=HOST:PORT", t.name);
        }
        if t.chat && (t.kind != Kind::Roomcast || t.api_key.is_none()) {
            bail!(
                "chat=1 needs kind=roomcast and api_key= (members are added with the server API)"
            );
        }
        if t.kind == Kind::Pusher
            && (t.app_id.is_none() || t.app_key.is_none() || t.secret.is_none())
        {
            bail!("pusher target needs app_id=, key= and secret=");
        }
        Ok(t)
    }

    /// The address, which every target has once the limit server is started.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr.expect("target address resolved before use")
    }

    /// Whether the protocol can resume a subscription from an offset (storm needs it).
    pub(crate) fn recovers(&self) -> bool {
        self.kind == Kind::Roomcast
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let t = Target::parse("kind=roomcast,addr=127.0.0.1:8000,pid=1+2,secret=s").unwrap();
        assert_eq!(
            (t.kind, t.pids.clone(), t.name.as_str()),
            (Kind::Roomcast, vec![1, 2], "roomcast")
        );
        assert!(Target::parse("kind=roomcast,addr=10.0.0.1:80").is_err());
        assert!(Target::parse("kind=limit").unwrap().addr.is_none());
    }

    #[test]
    fn chat_needs_roomcast_and_an_api_key() {
        let t = Target::parse("kind=roomcast,addr=127.0.0.1:8000,api_key=k,chat=1").unwrap();
        assert!(t.chat);
        assert!(Target::parse("kind=roomcast,addr=127.0.0.1:8000,chat=1").is_err());
        assert!(Target::parse("kind=limit,chat=1").is_err());
    }
}
