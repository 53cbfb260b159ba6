//! Which server a run talks to and how: the `--target` spec, parsed once in the parent and shipped
//! verbatim to worker processes (hence Serialize).
//!
//! Spec syntax: comma-separated `key=value`, e.g.
//! `kind=roomcast,addr=127.0.0.1:8000,pid=1234,secret=S,api_key=K`
//! `kind=limit` (no addr: the bench starts its own raw fan-out server as a child process)
//! `kind=socketio,addr=127.0.0.1:3000,pid=11+12` (CPU is summed over all `+`-separated pids)
//! `kind=pusher,addr=127.0.0.1:6001,pid=13,app_id=1,key=k,secret=s` (Sockudo)
//! `kind=roomcast,addr=127.0.0.1:8001+127.0.0.1:8002,pid=21+22,redis=127.0.0.1:6379,...` (several
//! nodes of one cluster: member `idx` joins node `idx % nodes`, publishers and the server API use the
//! first; CPU and RSS are summed over one pid per node; `redis=` is the cluster's bus, whose byte
//! counters give the bus traffic per publication)
//! `kind=roomcast,addr=...,transport=sse` (members over SSE or `http_stream`; publishers stay on
//! WebSocket)
//! `kind=roomcast,addr=...,proto=1` (members and publishers speak the protobuf format over
//! WebSocket; named `roomcast-protobuf` unless `name=` says otherwise)

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
    /// None only for `kind=limit` before the bench has started its own server. The first node of
    /// a cluster: publishers and the server API go through it.
    pub addr: Option<SocketAddr>,
    /// The other nodes of a cluster (`addr=A+B+C`): members are spread over `addr` and these.
    #[serde(default)]
    pub more_addrs: Vec<SocketAddr>,
    /// The cluster's Redis bus, read (`INFO stats`) before and after publishing.
    #[serde(default)]
    pub redis: Option<SocketAddr>,
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
    /// roomcast: the members' transport.
    #[serde(default)]
    pub transport: Transport,
    /// roomcast in the protobuf format (`proto=1`): members (the fan-out's receiving end, whose
    /// deliveries are the seed example's figure) connect with `?format=protobuf` and read binary
    /// messages of varint length-delimited `Reply`s; the room publishers publish the same way, so
    /// both ends of a publication are protobuf. The payload inside a publication's `data` is the
    /// same bench JSON as in the JSON format. WebSocket only (not with `transport=sse` or
    /// `http_stream`); every scenario (fanout, accept, storm with recovery, large with digests,
    /// chat=1 cursor reads) runs in it. Publishing through the server API (`--via-http`) stays
    /// JSON, as that API is.
    #[serde(default)]
    pub proto: bool,
}

impl Target {
    pub(crate) fn parse(spec: &str) -> Result<Target> {
        let mut t = Target {
            name: String::new(),
            kind: Kind::Limit,
            addr: None,
            more_addrs: vec![],
            redis: None,
            pids: vec![],
            secret: None,
            api_key: None,
            app_id: None,
            app_key: None,
            chat: false,
            transport: Transport::Websocket,
            proto: false,
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
                "addr" => {
                    let mut all = v
                        .split('+')
                        .map(|a| a.parse().with_context(|| format!("bad addr `{a}`")));
                    t.addr = all.next().transpose()?;
                    t.more_addrs = all.collect::<Result<_>>()?;
                }
                "redis" => t.redis = Some(v.parse().with_context(|| format!("bad redis `{v}`"))?),
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
                "transport" => t.transport = Transport::parse(v)?,
                "proto" => {
                    t.proto = match v {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => false,
                        _ => bail!("proto={v}: expected proto=1 or proto=0"),
                    }
                }
                _ => bail!("unknown target key `{k}`"),
            }
        }
        t.kind = kind.context("target needs kind=...")?;
        if t.name.is_empty() {
            t.name = match t.kind {
                Kind::Roomcast if t.proto => "roomcast-protobuf",
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
        if t.proto && t.kind != Kind::Roomcast {
            bail!("proto=1 (the protobuf format) needs kind=roomcast");
        }
        if t.proto && t.transport != Transport::Websocket {
            bail!(
                "proto=1 is for WebSocket members only; the bench's {:?} members speak JSON",
                t.transport
            );
        }
        let mut every = t.addr.iter().chain(&t.more_addrs).chain(&t.redis);
        if let Some(a) = every.find(|a| !a.ip().is_loopback()) {
            bail!("load tests only target 127.0.0.0/8, not {a}");
        }
        if !t.more_addrs.is_empty() && t.kind != Kind::Roomcast {
            bail!("several addresses (a cluster) need kind=roomcast");
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

    /// How many nodes the members are spread over (1 unless `addr=A+B+...`).
    pub(crate) fn nodes(&self) -> usize {
        1 + self.more_addrs.len()
    }

    /// The node member `idx` joins: `idx % nodes`, so every node holds an equal share of a room.
    pub(crate) fn member_addr(&self, idx: u32) -> SocketAddr {
        match idx as usize % self.nodes() {
            0 => self.addr(),
            n => self.more_addrs[n - 1],
        }
    }

    /// The pids whose RSS is the server's memory: one per node (not a Redis listed after them),
    /// or every limit process.
    pub(crate) fn rss_pids(&self) -> Vec<u32> {
        match self.kind {
            Kind::Limit => self.pids.clone(),
            _ => self.pids.iter().take(self.nodes()).copied().collect(),
        }
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

    #[test]
    fn a_cluster_spreads_members_over_its_nodes() {
        let t = Target::parse(
            "kind=roomcast,addr=127.0.0.1:1+127.0.0.1:2+127.0.0.1:3,pid=7+8+9+10,redis=127.0.0.1:6",
        )
        .unwrap();
        assert_eq!(t.nodes(), 3);
        let ports: Vec<u16> = (0..6).map(|i| t.member_addr(i).port()).collect();
        assert_eq!(ports, vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(t.addr().port(), 1, "publishers use the first node");
        assert_eq!(t.rss_pids(), vec![7, 8, 9], "one pid per node");
        assert!(Target::parse("kind=roomcast,addr=127.0.0.1:1+10.0.0.1:2").is_err());
        assert!(Target::parse("kind=roomcast,addr=127.0.0.1:1,redis=10.0.0.1:6").is_err());
        assert!(Target::parse("kind=socketio,addr=127.0.0.1:1+127.0.0.1:2").is_err());
    }

    #[test]
    fn chat_needs_roomcast_and_an_api_key() {
        let t = Target::parse("kind=roomcast,addr=127.0.0.1:8000,api_key=k,chat=1").unwrap();
        assert!(t.chat);
        assert!(Target::parse("kind=roomcast,addr=127.0.0.1:8000,chat=1").is_err());
        assert!(Target::parse("kind=limit,chat=1").is_err());
    }

    #[test]
    fn proto_is_roomcast_over_websocket_and_named_apart() {
        let t = Target::parse("kind=roomcast,addr=127.0.0.1:8000,proto=1").unwrap();
        assert!(t.proto);
        assert_eq!(t.name, "roomcast-protobuf");
        let t = Target::parse("kind=roomcast,addr=127.0.0.1:8000,name=new,proto=1").unwrap();
        assert_eq!((t.proto, t.name.as_str()), (true, "new"), "name= wins");
        let t = Target::parse("kind=roomcast,addr=127.0.0.1:8000,proto=0").unwrap();
        assert_eq!((t.proto, t.name.as_str()), (false, "roomcast"));
        assert!(
            !Target::parse("kind=roomcast,addr=127.0.0.1:8000")
                .unwrap()
                .proto
        );
        assert!(Target::parse("kind=roomcast,addr=127.0.0.1:8000,proto=2").is_err());
        assert!(Target::parse("kind=limit,proto=1").is_err());
        assert!(Target::parse("kind=socketio,addr=127.0.0.1:1,proto=1").is_err());
        assert!(Target::parse("kind=roomcast,addr=127.0.0.1:8000,proto=1,transport=sse").is_err());
        let t = Target::parse("kind=roomcast,addr=127.0.0.1:8000,api_key=k,chat=1,proto=1");
        assert!(t.unwrap().proto, "chat=1 works in protobuf too");
    }
}
