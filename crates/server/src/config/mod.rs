//! Node configuration: built-in defaults, then a TOML file (`--config`), then `ROOMCAST_*`
//! environment variables and command-line flags (clap reads both), each overriding the last.
//!
//! Channel namespaces come from the TOML file only. The default namespace (channels with
//! no `ns:` prefix) has chat-friendly defaults: clients may subscribe, subscribers may
//! publish and read history, presence and join/leave are on (pushed to the subscriptions
//! that ask, in rooms of up to 1,000 members), and every subscription is recoverable from
//! the durable history.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod duration;
mod validate;

/// Options of a channel namespace, as Centrifugo names them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// Clients may subscribe on their own (without the channel in their token).
    pub allow_subscribe_for_client: bool,
    /// Subscribers may publish from the client.
    pub allow_publish_for_subscriber: bool,
    /// Any connected client may publish, subscribed or not.
    pub allow_publish_for_client: bool,
    /// Subscribers may read history.
    pub allow_history_for_subscriber: bool,
    /// Subscribers may read presence.
    pub allow_presence_for_subscriber: bool,
    /// Track who is subscribed.
    pub presence: bool,
    /// Emit join/leave events when subscribers come and go.
    pub join_leave: bool,
    /// Send join/leave to every subscriber, not only to those that asked (`join_leave`
    /// in their subscribe request).
    pub force_push_join_leave: bool,
    /// Above this many subscribers of a room on a node, joins and leaves there are no
    /// longer pushed (counts only: `presence_stats` stays exact). 0: no limit.
    pub join_leave_max_room_size: usize,
    /// Publications a second one room accepts on a node, from clients and the server API
    /// together (bursts of twice that); beyond, error 111 "too many requests". 0: no limit.
    pub publish_rate_per_room: u32,
    /// Subscriptions joining a room with at least this many subscribers on the node get a
    /// digest (see `digest_interval_ms`) unless their subscribe `data` says
    /// `{"digest": false}`. 0: only those asking (`{"digest": true}`).
    pub digest_above: usize,
    /// A digest subscription gets at most one publication per this many milliseconds,
    /// the room's newest (at least 10).
    pub digest_interval_ms: u64,
    /// Every subscription is recoverable, whether or not the client asked for it.
    pub force_recovery: bool,
    /// Only the room's members (server API `add_members`) may subscribe, publish and
    /// read history or cursors; others get 103, permission denied.
    pub members_only: bool,
    /// Most entries a `presence` reply lists (client protocol and server API); a room
    /// with more clients answers error 106 "limit exceeded" (use `presence_stats`).
    /// At least 1.
    pub presence_max_entries: usize,
    /// Publications from clients go to the publish proxy (`proxy_publish_endpoint`) first:
    /// stored only when it accepts, with the data it returns.
    pub proxy_publish: bool,
    /// Clients subscribing without a token are granted (or refused) by the subscribe
    /// proxy (`proxy_subscribe_endpoint`) instead of `allow_subscribe_for_client`.
    pub proxy_subscribe: bool,
    /// Each publication's members with no connection anywhere are POSTed to
    /// `notify_webhook_url` (`notify/`).
    pub notify_offline: bool,
    /// Subscriptions the subscribe proxy granted with an `expire_at` are refreshed by
    /// the sub_refresh proxy (`proxy_sub_refresh_endpoint`) when it comes.
    pub proxy_sub_refresh: bool,
    /// Delta compression a subscription may ask for (`delta` in its subscribe request):
    /// `["fossil"]` or none. Its publications then come as fossil deltas against the
    /// previous one (Centrifugo sends deltas only for publications marked `delta`, or
    /// every one with `delta_publish`; here every publication of the namespace is one).
    pub allowed_delta_types: Vec<String>,
    /// Retention by count: keep at most this many of a room's newest publications
    /// (Centrifugo's option). 0: keep every one.
    pub history_size: u64,
    /// Retention by age: keep publications at most this long (`"300s"`, `"24h"`, `"30d"`
    /// or a number of seconds). 0: forever.
    #[serde(
        deserialize_with = "duration::deserialize_ms",
        serialize_with = "duration::serialize_ms"
    )]
    pub history_ttl: u64,
    /// Publications are delivered live and never stored: no offset, no history, no
    /// recovery, never unread (typing indicators).
    pub ephemeral: bool,
}

impl NamespaceOptions {
    /// The retention limits of this namespace's rooms.
    pub fn retention(&self) -> crate::store::retention::Limits {
        crate::store::retention::Limits {
            size: self.history_size,
            ttl_ms: self.history_ttl,
        }
    }
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            allow_subscribe_for_client: true,
            allow_publish_for_subscriber: true,
            allow_publish_for_client: false,
            allow_history_for_subscriber: true,
            allow_presence_for_subscriber: true,
            presence: true,
            join_leave: true,
            force_push_join_leave: false,
            join_leave_max_room_size: 1000,
            publish_rate_per_room: 0,
            digest_above: 0,
            digest_interval_ms: 1000,
            force_recovery: true,
            members_only: false,
            presence_max_entries: 1000,
            proxy_publish: false,
            proxy_subscribe: false,
            notify_offline: false,
            proxy_sub_refresh: false,
            allowed_delta_types: Vec::new(),
            history_size: 0,
            history_ttl: 0,
            ephemeral: false,
        }
    }
}

/// Everything a node needs to run. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `ip:port` or `host:port` (`localhost:8000`: the first address the name resolves to).
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// HMAC secret for HS256 connection tokens. Generated into the data dir when unset.
    pub token_hmac_secret: Option<String>,
    /// Server API key (`X-API-Key`). Generated into the data dir when unset.
    pub api_key: Option<String>,
    /// Where the gRPC server API listens (`ip:port`); unset: no gRPC API. Same key as
    /// the HTTP API, in the metadata as `authorization: apikey <key>`.
    #[serde(deserialize_with = "optional_listen_address")]
    pub grpc_api_address: Option<SocketAddr>,
    /// Required `aud` claim, when set.
    pub token_audience: Option<String>,
    /// Required `iss` claim, when set.
    pub token_issuer: Option<String>,
    /// Algorithms a token may be signed with (`HS256`, `RS256`, `ES256`); each needs its
    /// key. Empty: every algorithm with a key configured (HS256 always: the HMAC secret).
    pub token_algorithms: Vec<String>,
    /// RSA public key for RS256 tokens: PEM text, or the path of a PEM file.
    pub token_rsa_public_key: Option<String>,
    /// P-256 public key for ES256 tokens: PEM text, or the path of a PEM file.
    pub token_ecdsa_public_key: Option<String>,
    /// JWKS URL (`http://`) of the keys RS256 and ES256 tokens with a `kid` are verified
    /// with; fetched at start and every `token_jwks_refresh_secs`.
    pub token_jwks_url: Option<String>,
    pub token_jwks_refresh_secs: u64,
    /// Least seconds between two JWKS fetches caused by tokens with an unknown `kid`.
    pub token_jwks_min_refresh_secs: u64,
    /// Milliseconds one JWKS fetch may take (connect, headers and body).
    pub token_jwks_timeout_ms: u64,
    /// Largest JWKS response body in bytes.
    pub token_jwks_max_bytes: usize,
    /// Connect proxy (`http://` URL): every connect without a token is sent there, and
    /// the backend's answer decides the user (Centrifugo's connect proxy).
    pub proxy_connect_endpoint: Option<String>,
    pub proxy_connect_timeout_ms: u64,
    /// Publish proxy (`http://` URL) for namespaces with `proxy_publish`.
    pub proxy_publish_endpoint: Option<String>,
    pub proxy_publish_timeout_ms: u64,
    /// Subscribe proxy (`http://` URL) for namespaces with `proxy_subscribe`.
    pub proxy_subscribe_endpoint: Option<String>,
    pub proxy_subscribe_timeout_ms: u64,
    /// RPC proxy (`http://` URL): client `rpc` calls (other than `roomcast.*` methods) are
    /// answered by the backend.
    pub proxy_rpc_endpoint: Option<String>,
    pub proxy_rpc_timeout_ms: u64,
    /// Refresh proxy (`http://` URL): a connection the connect proxy gave an `expire_at`
    /// is refreshed there when it comes, instead of closing.
    pub proxy_refresh_endpoint: Option<String>,
    pub proxy_refresh_timeout_ms: u64,
    /// Sub_refresh proxy (`http://` URL) for namespaces with `proxy_sub_refresh`.
    pub proxy_sub_refresh_endpoint: Option<String>,
    pub proxy_sub_refresh_timeout_ms: u64,
    /// Headers of the client's WebSocket upgrade request forwarded to proxies (e.g.
    /// `Cookie`, `Authorization`, `X-Forwarded-For`), case-insensitive.
    pub proxy_http_headers: Vec<String>,
    /// Proxy requests in flight on this node at once; beyond, requests wait (within their
    /// timeout) for a slot.
    pub proxy_max_in_flight: usize,
    /// Largest proxy response body in bytes; beyond, the answer counts as garbage.
    pub proxy_max_response_bytes: usize,
    /// Development mode: connect without a token (user id from the token if one is given,
    /// anonymous otherwise). Off by default.
    pub insecure: bool,
    /// Serve the chat page at `/` and the admin page at `/admin` (embedded in the binary;
    /// the admin page asks for the API key). Off: both answer 404.
    pub web_pages: bool,
    /// Count Prometheus metrics and serve them at `/metrics`. Off: nothing is counted and
    /// `/metrics` answers 404 (the admin page then shows no live counters).
    pub metrics: bool,
    /// Seconds between server pings.
    pub ping_interval_secs: u64,
    /// Seconds a client has to answer a ping before it is disconnected ("no pong").
    pub pong_timeout_secs: u64,
    /// Largest gap (in publications) a resubscribing client recovers in one go; beyond
    /// it the reply says `recovered: false` and the client pages history.
    pub recovery_max_publications: u64,
    /// Largest recovery reply in bytes (about the payloads' size); beyond it the reply says
    /// `recovered: false` and the client pages history.
    pub recovery_max_bytes: usize,
    /// Most publications one history call returns.
    pub history_max_limit: u64,
    /// Largest history reply in bytes (WebSocket and API): a call that would return more
    /// gets the first publications that fit (at least one), and continues with `since`.
    pub history_max_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in publication data (serde_json and
    /// several SDKs refuse more than 128 levels when decoding).
    pub max_data_depth: usize,
    /// Bytes of replies queued for one connection (not yet written to its socket) before it
    /// is disconnected as slow: bounds what a client that asks and does not read can pin.
    pub reply_max_bytes: usize,
    /// Server API calls served at once (body read and work); beyond, 503.
    pub api_max_in_flight: usize,
    /// Seconds a server API caller has to send its whole body; beyond, 408.
    pub api_body_timeout_secs: u64,
    /// Bytes queued for one connection before it is disconnected as slow.
    pub outbox_max_bytes: usize,
    /// Live subscribers of a room on this node above which a publication is written out
    /// by all the runtime's worker threads (one lane each); 0: always on one.
    pub fanout_parallel_above: usize,
    /// Seconds a connection's socket may accept nothing while there is something to send
    /// before the connection is dropped; also the longest a closing connection (slow, no
    /// pong, ...) waits for its peer to take the close frame. Keeps peers that stop reading
    /// from holding file descriptors, presence and registry entries.
    pub write_timeout_secs: u64,
    /// Largest incoming WebSocket message.
    pub max_message_size: usize,
    /// Most channels one connection may subscribe to.
    pub max_channels_per_connection: usize,
    /// Most connections of one user on this node (0: no limit).
    pub max_connections_per_user: usize,
    /// Most WebSocket connections on this node (0: as many as the open-files limit allows).
    pub max_connections: usize,
    /// Commands a connection may send per second on average (bursts of twice that);
    /// beyond, commands get error 111 "too many requests". 0: no limit.
    pub commands_per_second: u32,
    /// Origins allowed to open WebSocket connections from browsers (`*` for any). Empty:
    /// only the server's own origin (the `Origin` host equals the `Host` header). Requests
    /// without an `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Redis URL (`redis://host:port`) of the cluster bus and presence. Unset: this node
    /// runs alone with its in-process bus and presence.
    pub redis_url: Option<String>,
    /// NATS URL (`nats://host:port`) of the cluster bus. Presence and the node registry
    /// stay in Redis, so it needs `redis_url` too. Unset: the bus is on Redis.
    pub nats_url: Option<String>,
    /// Message store URL (`postgres://user:pass@host:port/db`), shared by the cluster.
    /// Unset: SQLite in `data_dir`.
    pub store_url: Option<String>,
    /// Seconds a retried publish with the same idempotency key returns the first result.
    pub idempotency_ttl_secs: u64,
    /// Seconds the node waits on shutdown for connections and commits to drain.
    pub shutdown_grace_secs: u64,
    /// Subscribe every connection of a user, server-side, to the user's personal channel
    /// (`#<user>`, Centrifugo's option name). On by default.
    pub user_subscribe_to_personal: bool,
    /// Namespace of personal channels (`ns:#<user>`); "" for the default namespace. Must
    /// be configured.
    pub user_personal_channel_namespace: String,
    /// Seconds a presence entry lives in Redis unless its node refreshes it (every fifth
    /// of it): a dead node's members leave presence this long after. Centrifugo's
    /// `presence_ttl` default (60 s); each node rewrites all its entries once per refresh,
    /// so a large room costs `members / (ttl / 5)` entry writes per second.
    pub presence_ttl_secs: u64,
    /// Seconds a connection's entry in the per-user registry lives unless refreshed
    /// (every third of it): a user whose node died is offline this long after.
    pub user_registry_ttl_secs: u64,
    /// Most users one `user_status` call (API or `roomcast.status`) may ask about.
    pub user_status_max_users: usize,
    /// Offline notifications (`notify/`, README "Offline notifications"): the webhook
    /// (`http://`), the HMAC-SHA256 secret its requests are signed with, users per request,
    /// one request's deadline, the retry backoff bounds, rooms queued for the notifier, a
    /// room's lease, the backlog sweep period and the age beyond which a publication is
    /// no longer notified.
    pub notify_webhook_url: Option<String>,
    pub notify_webhook_secret: Option<String>,
    pub notify_batch_size: usize,
    pub notify_timeout_ms: u64,
    pub notify_retry_min_ms: u64,
    pub notify_retry_max_ms: u64,
    pub notify_queue_max: usize,
    pub notify_lease_secs: u64,
    pub notify_sweep_secs: u64,
    pub notify_max_age_secs: u64,
    /// Options for channels without a namespace prefix.
    pub default_namespace: NamespaceOptions,
    /// Named namespaces: channel `ns:room` uses `namespaces.ns`.
    pub namespaces: HashMap<String, NamespaceOptions>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8000".parse().expect("valid default address"),
            data_dir: PathBuf::from("roomcast-data"),
            token_hmac_secret: None,
            api_key: None,
            grpc_api_address: None,
            token_audience: None,
            token_issuer: None,
            token_algorithms: Vec::new(),
            token_rsa_public_key: None,
            token_ecdsa_public_key: None,
            token_jwks_url: None,
            token_jwks_refresh_secs: 300,
            token_jwks_min_refresh_secs: 10,
            token_jwks_timeout_ms: 5000,
            token_jwks_max_bytes: 1 << 20,
            proxy_connect_endpoint: None,
            proxy_connect_timeout_ms: 1000,
            proxy_publish_endpoint: None,
            proxy_publish_timeout_ms: 1000,
            proxy_subscribe_endpoint: None,
            proxy_subscribe_timeout_ms: 1000,
            proxy_rpc_endpoint: None,
            proxy_rpc_timeout_ms: 1000,
            proxy_refresh_endpoint: None,
            proxy_refresh_timeout_ms: 1000,
            proxy_sub_refresh_endpoint: None,
            proxy_sub_refresh_timeout_ms: 1000,
            proxy_http_headers: Vec::new(),
            proxy_max_in_flight: 256,
            proxy_max_response_bytes: 1 << 20,
            insecure: false,
            web_pages: true,
            metrics: true,
            ping_interval_secs: 25,
            pong_timeout_secs: 8,
            recovery_max_publications: 10_000,
            recovery_max_bytes: 16 << 20,
            history_max_limit: 10_000,
            history_max_bytes: 4 << 20,
            max_data_depth: roomcast_proto::data::DEFAULT_MAX_DEPTH,
            reply_max_bytes: 64 << 20,
            api_max_in_flight: 256,
            api_body_timeout_secs: 10,
            outbox_max_bytes: 1 << 20,
            fanout_parallel_above: crate::hub::DEFAULT_PARALLEL_ABOVE,
            write_timeout_secs: 10,
            max_message_size: 64 << 10,
            max_channels_per_connection: 128,
            max_connections_per_user: 100,
            max_connections: 0,
            commands_per_second: 100,
            allowed_origins: Vec::new(),
            redis_url: None,
            nats_url: None,
            store_url: None,
            idempotency_ttl_secs: 300,
            shutdown_grace_secs: 10,
            user_subscribe_to_personal: true,
            user_personal_channel_namespace: String::new(),
            presence_ttl_secs: 60,
            user_registry_ttl_secs: 30,
            user_status_max_users: 1000,
            notify_webhook_url: None,
            notify_webhook_secret: None,
            notify_batch_size: 100,
            notify_timeout_ms: 5000,
            notify_retry_min_ms: 200,
            notify_retry_max_ms: 20_000,
            notify_queue_max: 10_000,
            notify_lease_secs: 30,
            notify_sweep_secs: 5,
            notify_max_age_secs: 86_400,
            default_namespace: NamespaceOptions::default(),
            namespaces: HashMap::new(),
        }
    }
}

/// What a client session reads of the configuration: the limits and defaults of the
/// protocol and the channel namespaces. Built once per node (`Config::session`).
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    pub insecure: bool,
    pub ping_interval_secs: u64,
    pub recovery_max_publications: u64,
    pub recovery_max_bytes: usize,
    pub max_channels_per_connection: usize,
    pub max_connections_per_user: usize,
    pub commands_per_second: u32,
    /// Deepest nesting publication data may have (see `roomcast_proto::data`).
    pub max_data_depth: usize,
    /// How every connection's personal channel is named (`None`:
    /// `user_subscribe_to_personal` is off).
    pub personal: Option<crate::personal::PersonalChannels>,
    pub default_namespace: NamespaceOptions,
    pub namespaces: HashMap<String, NamespaceOptions>,
}

impl crate::channel::Namespaces for SessionConfig {
    fn namespace(&self, name: &str) -> Option<&NamespaceOptions> {
        if name.is_empty() {
            Some(&self.default_namespace)
        } else {
            self.namespaces.get(name)
        }
    }
}

impl crate::channel::Namespaces for Config {
    fn namespace(&self, name: &str) -> Option<&NamespaceOptions> {
        Config::namespace(self, name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("secrets in {path}: {message}")]
    Secrets { path: PathBuf, message: String },
}

impl Config {
    /// Loads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    /// The namespace options of a namespace name ("" for the default one); `None` for a
    /// namespace that is not configured.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceOptions> {
        if name.is_empty() {
            Some(&self.default_namespace)
        } else {
            self.namespaces.get(name)
        }
    }

    /// How personal channels are named (`user_publish` uses them whether or not
    /// connections are subscribed to them).
    pub fn personal_channels(&self) -> crate::personal::PersonalChannels {
        crate::personal::PersonalChannels::new(&self.user_personal_channel_namespace)
    }

    /// The part of the configuration client sessions read.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            insecure: self.insecure,
            ping_interval_secs: self.ping_interval_secs,
            recovery_max_publications: self.recovery_max_publications,
            recovery_max_bytes: self.recovery_max_bytes,
            max_channels_per_connection: self.max_channels_per_connection,
            max_connections_per_user: self.max_connections_per_user,
            commands_per_second: self.commands_per_second,
            max_data_depth: self.max_data_depth,
            personal: self
                .user_subscribe_to_personal
                .then(|| self.personal_channels()),
            default_namespace: self.default_namespace.clone(),
            namespaces: self.namespaces.clone(),
        }
    }

    /// Fills in the token secret and API key from `<data_dir>/secrets.toml`, generating
    /// that file on first start. Returns the file's path when it was created now.
    pub fn ensure_secrets(&mut self) -> Result<Option<PathBuf>, ConfigError> {
        if self.token_hmac_secret.is_some() && self.api_key.is_some() {
            return Ok(None);
        }
        let path = self.data_dir.join("secrets.toml");
        let err = |message: String| ConfigError::Secrets {
            path: path.clone(),
            message,
        };
        let (stored, created) = match std::fs::read_to_string(&path) {
            Ok(text) => (
                toml::from_str::<Secrets>(&text).map_err(|e| err(e.to_string()))?,
                false,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = Secrets {
                    token_hmac_secret: random_hex(32),
                    api_key: random_hex(24),
                };
                std::fs::create_dir_all(&self.data_dir).map_err(|e| err(e.to_string()))?;
                write_private(&path, &toml::to_string(&s).expect("secrets serialize"))
                    .map_err(|e| err(e.to_string()))?;
                (s, true)
            }
            Err(e) => return Err(err(e.to_string())),
        };
        self.token_hmac_secret
            .get_or_insert(stored.token_hmac_secret);
        self.api_key.get_or_insert(stored.api_key);
        Ok(created.then_some(path))
    }
}

/// Resolves a listen address: `127.0.0.1:8000`, `[::1]:8000` or `localhost:8000` (the name's
/// first address, IPv4 preferred, as most clients try it first).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| format!("listen address {s:?}: {e} (expected host:port)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("listen address {s:?} resolves to no address"))
}

fn listen_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen(&s).map_err(serde::de::Error::custom)
}

fn optional_listen_address<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_listen(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// The generated secrets file.
#[derive(Debug, Deserialize, Serialize)]
struct Secrets {
    token_hmac_secret: String,
    api_key: String,
}

fn random_hex(bytes: usize) -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Writes a file readable by its owner only: it holds secrets.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c: Config = toml::from_str(
            "listen = \"127.0.0.1:9000\"\n[namespaces.news]\nallow_publish_for_subscriber = false\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        let named: Config = toml::from_str("listen = \"localhost:9001\"").unwrap();
        assert_eq!(
            named.listen,
            "127.0.0.1:9001".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("no-such-host.invalid:80").is_err());
        assert!(!c.namespace("news").unwrap().allow_publish_for_subscriber);
        assert!(c.namespace("news").unwrap().allow_subscribe_for_client);
        assert!(c.namespace("nope").is_none());
        assert!(toml::from_str::<Config>("lisen = 1").is_err());
    }

    #[test]
    fn personal_channel_options_are_checked() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.personal_channels().channel("al").as_deref(), Some("#al"));
        c.user_personal_channel_namespace = "me".into();
        assert!(c.validate().unwrap_err().to_string().contains("\"me\""));
        c.namespaces
            .insert("me".into(), NamespaceOptions::default());
        assert!(c.validate().is_ok());
        assert_eq!(
            c.personal_channels().channel("al").as_deref(),
            Some("me:#al")
        );
        c.presence_ttl_secs = 4;
        assert!(c.validate().is_err());
        c.presence_ttl_secs = 5;
        assert!(c.validate().is_ok());
        c.user_registry_ttl_secs = 2;
        assert!(c.validate().is_err());
        c.user_registry_ttl_secs = 3;
        c.user_status_max_users = 0;
        assert!(c.validate().is_err());
        c.user_status_max_users = 1;
        c.user_subscribe_to_personal = false;
        assert!(c.session().personal.is_none());
    }

    #[test]
    fn secrets_are_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Config {
            data_dir: dir.path().into(),
            ..Config::default()
        };
        assert!(a.ensure_secrets().unwrap().is_some());
        let mut b = Config {
            data_dir: dir.path().into(),
            ..Config::default()
        };
        assert!(b.ensure_secrets().unwrap().is_none());
        assert_eq!(a.token_hmac_secret, b.token_hmac_secret);
        assert_eq!(a.api_key, b.api_key);
        assert_eq!(a.token_hmac_secret.unwrap().len(), 64);
    }
}
