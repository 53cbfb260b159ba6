//! Which server a run talks to and how: the `--target` spec, parsed once in the parent and shipped
//! verbatim to worker processes (hence Serialize).
//!
//! Spec syntax: comma-separated `key=value`, e.g.
//! `kind=roomcast,addr=127.0.0.1:8000,pid=1234,secret=S,api_key=K`
//! `kind=limit` (no addr: the bench starts its own raw fan-out server as a child process)
//! `kind=socketio,addr=127.0.0.1:3000,pid=11+12` (CPU is summed over all `+`-separated pids)
//! `kind=pusher,addr=127.0.0.1:6001,pid=13,app_id=1,key=k,secret=s` (Sockudo)
//! `kind=roomcast,addr=...,transport=sse` (members over SSE or `http_stream`; publishers stay on
//! WebSocket)

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

/// How roomcast members connect (publishers always use WebSocket): `--transport` or the
/// spec's `transport=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Transport {
    #[default]
    Websocket,
    /// `GET /connection/sse` with emulation (`stream.rs`).
    Sse,
    /// `POST /connection/http_stream` with emulation (`stream.rs`).
    #[value(name = "http_stream")]
    HttpStream,
}

impl Transport {
    pub(crate) fn parse(v: &str) -> Result<Transport> {
        Ok(match v {
            "websocket" => Transport::Websocket,
            "sse" => Transport::Sse,
            "http_stream" | "http-stream" => Transport::HttpStream,
            _ => bail!("unknown transport `{v}` (websocket, sse, http_stream)"),
        })
    }

    /// The suffix of a target's name in tables ("" for WebSocket).
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Transport::Websocket => "",
            Transport::Sse => "-sse",
            Transport::HttpStream => "-http_stream",
        }
    }
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
    /// roomcast: the members' transport.
    #[serde(default)]
    pub transport: Transport,
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
            transport: Transport::Websocket,
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
                "transport" => t.transport = Transport::parse(v)?,
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
        if t.transport != Transport::Websocket && t.kind != Kind::Roomcast {
            bail!("only roomcast targets speak the sse and http_stream transports");
        }
        let only_loopback = t.addr.is_none_or(|a| a.ip().is_loopback());
        if !only_loopback {
            bail!("load tests only target 127.0.0.0/8, not {:?}", t.addr);
        }
        if t.addr.is_none() && t.kind != Kind::Limit {
            bail!("target {} needs addr=HOST:PORT", t.name);
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
        let t = Target::parse("kind=roomcast,addr=127.0.0.1:8000,transport=sse").unwrap();
        assert_eq!(t.transport, Transport::Sse);
        assert!(Target::parse("kind=limit,transport=sse").is_err());
    }
}
