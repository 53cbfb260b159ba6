//! The protocol without a socket: a session over an in-memory `Services` (tokens checked by
//! the real `Auth`), commands decoded from their JSON, replies read from the outbox, time
//! passed in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomcast_proto::{decode_commands, ClientInfo, Disconnect, ErrorCode, StreamPosition};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{Flow, Now, Services, Session};
use crate::auth::{now_secs, Auth, Claims, TokenError};
use crate::config::{Config, SessionConfig};
use crate::hub::{ConnEntry, ConnId, Out, Outbox, RoomEvent, SubMode};
use crate::keepalive::Peer;
use crate::store::{Appended, Message, Position, Range, StoreError};

const SECRET: &str = "unit-secret";
const EPOCH: &str = "epoch-1";

/// A node in memory: rooms' stored publications, who joined, presence, announcements.
struct Fake {
    config: SessionConfig,
    auth: Auth,
    conn_ids: AtomicU64,
    history: Mutex<HashMap<String, Vec<Message>>>,
    joined: Mutex<Vec<(String, ConnId)>>,
    /// How each subscription joined its room.
    modes: Mutex<Vec<(String, SubMode)>>,
    activated: Mutex<Vec<(String, Option<u64>)>>,
    registered: Mutex<HashMap<String, usize>>,
    presence: Mutex<HashMap<String, HashMap<String, ClientInfo>>>,
    announced: Mutex<Vec<RoomEvent>>,
    room_rates: crate::rate::RoomRates,
}

impl Fake {
    fn new(tune: impl FnOnce(&mut SessionConfig)) -> Arc<Fake> {
        let mut config = Config::default().session();
        tune(&mut config);
        Arc::new(Fake {
            config,
            auth: Auth::new(SECRET, None, None),
            conn_ids: AtomicU64::new(1),
            history: Mutex::default(),
            joined: Mutex::default(),
            modes: Mutex::default(),
            activated: Mutex::default(),
            registered: Mutex::default(),
            presence: Mutex::default(),
            announced: Mutex::default(),
            room_rates: Default::default(),
        })
    }

    fn token(&self, user: &str, exp: Option<u64>) -> String {
        self.auth.mint(&Claims {
            sub: user.into(),
            exp,
            ..Claims::default()
        })
    }

    fn store(&self, room: &str, n: u64) {
        let mut h = self.history.lock().unwrap();
        let msgs = h.entry(room.into()).or_default();
        for _ in 0..n {
            let offset = msgs.len() as u64 + 1;
            msgs.push(Message {
                room: room.into(),
                offset,
                uid: format!("m{offset}"),
                user: String::new(),
                client: String::new(),
                data: RawValue::from_string(format!("{{\"n\":{offset}}}")).unwrap(),
                info: None,
                ts_ms: 0,
            });
        }
    }

    fn head(&self, room: &str) -> Position {
        let h = self.history.lock().unwrap();
        Position {
            offset: h.get(room).map_or(0, |m| m.len() as u64),
            epoch: EPOCH.into(),
        }
    }
}

impl Services for Fake {
    fn config(&self) -> &SessionConfig {
        &self.config
    }
    fn node_id(&self) -> &str {
        "unit-node"
    }
    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.auth.verify(token)
    }

    fn verify_connection(&self, token: &str) -> Result<Claims, TokenError> {
        self.auth.verify_connection(token)
    }
    fn next_conn_id(&self) -> ConnId {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
    fn user_conns(&self, user: &str) -> usize {
        self.registered
            .lock()
            .unwrap()
            .get(user)
            .copied()
            .unwrap_or(0)
    }
    fn register(&self, user: &str, _conn: ConnId, _entry: ConnEntry) {
        *self
            .registered
            .lock()
            .unwrap()
            .entry(user.into())
            .or_default() += 1;
    }
    fn unregister(&self, user: &str, _conn: ConnId) {
        *self
            .registered
            .lock()
            .unwrap()
            .entry(user.into())
            .or_default() -= 1;
    }
    async fn join(
        &self,
        room: &str,
        conn: ConnId,
        _outbox: Arc<Outbox>,
        mode: SubMode,
    ) -> Result<usize, ErrorCode> {
        self.modes.lock().unwrap().push((room.into(), mode));
        let mut joined = self.joined.lock().unwrap();
        joined.push((room.into(), conn));
        Ok(joined.iter().filter(|(r, _)| r == room).count())
    }
    fn room_size(&self, room: &str) -> usize {
        self.joined
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == room)
            .count()
    }
    async fn leave(&self, room: &str, conn: ConnId) -> usize {
        let mut joined = self.joined.lock().unwrap();
        joined.retain(|(r, c)| !(r == room && *c == conn));
        joined.iter().filter(|(r, _)| r == room).count()
    }
    fn activate(&self, room: &str, _conn: ConnId, next: Option<u64>) {
        self.activated.lock().unwrap().push((room.into(), next));
    }
    async fn announce(&self, event: RoomEvent) {
        self.announced.lock().unwrap().push(event);
    }
    async fn range(
        &self,
        room: &str,
        range: Range,
    ) -> Result<(Vec<Message>, Position), StoreError> {
        let since = range.since.unwrap_or(0);
        let h = self.history.lock().unwrap();
        let msgs = h
            .get(room)
            .map(|m| {
                m.iter()
                    .filter(|m| m.offset > since)
                    .take(range.limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        drop(h);
        Ok((msgs, self.head(room)))
    }
    async fn position(&self, room: &str) -> Result<Position, StoreError> {
        Ok(self.head(room))
    }
    async fn history(
        &self,
        room: &str,
        limit: i64,
        since: Option<&StreamPosition>,
        _reverse: bool,
    ) -> Result<(Vec<Message>, Position), ErrorCode> {
        let range = Range {
            since: since.map(|s| s.offset),
            limit: limit.max(0) as usize,
            reverse: false,
        };
        Ok(self.range(room, range).await.unwrap())
    }
    fn allow_room_publish(&self, room: &str, rate: u32, now: tokio::time::Instant) -> bool {
        self.room_rates.allow(room, rate, now)
    }
    async fn publish_batch(
        &self,
        items: Vec<(String, Box<RawValue>)>,
        _sender: &ClientInfo,
    ) -> Vec<Result<Appended, StoreError>> {
        items
            .into_iter()
            .map(|(room, _)| {
                self.store(&room, 1);
                Ok(Appended {
                    offset: self.head(&room).offset,
                    epoch: EPOCH.into(),
                    duplicate: false,
                })
            })
            .collect()
    }
    async fn presence_add(&self, room: &str, info: ClientInfo) {
        self.presence
            .lock()
            .unwrap()
            .entry(room.into())
            .or_default()
            .insert(info.client.clone(), info);
    }
    async fn presence_remove(&self, room: &str, client: &str) {
        if let Some(r) = self.presence.lock().unwrap().get_mut(room) {
            r.remove(client);
        }
    }
    async fn presence(&self, room: &str) -> HashMap<String, ClientInfo> {
        self.presence
            .lock()
            .unwrap()
            .get(room)
            .cloned()
            .unwrap_or_default()
    }
    async fn presence_stats(&self, room: &str) -> (u32, u32) {
        (self.presence(room).await.len() as u32, 0)
    }
}

/// A session, its outbox and a clock the test moves.
struct Conn {
    session: Session<Fake>,
    peer: Arc<Peer>,
    now: Now,
}

impl Conn {
    fn new(node: &Arc<Fake>) -> Conn {
        let now = Now {
            at: tokio::time::Instant::now(),
            unix: now_secs(),
        };
        let peer = Arc::new(Peer::new(Arc::new(Outbox::new(1 << 20))));
        Conn {
            session: Session::new(node.clone(), peer.clone(), now),
            peer,
            now,
        }
    }

    /// Runs one JSON command.
    async fn send(&mut self, cmd: Value) -> Flow {
        let text = cmd.to_string();
        let mut commands = decode_commands(&text).unwrap();
        let (id, method) = commands.remove(0).into_method().unwrap();
        self.session.handle(id, method, self.now).await
    }

    /// Runs one command and returns its single reply.
    async fn call(&mut self, cmd: Value) -> Value {
        assert_eq!(self.send(cmd).await, Flow::Continue);
        let mut replies = self.replies();
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies.remove(0)
    }

    fn replies(&self) -> Vec<Value> {
        let mut items = Vec::new();
        self.peer.outbox.take(&mut items);
        items
            .into_iter()
            .filter_map(|o| match o {
                Out::Frame(b) => Some(serde_json::from_slice(&b).unwrap()),
                Out::Unsubscribe { .. } => None,
            })
            .collect()
    }

    async fn connect(&mut self, node: &Fake, user: &str) {
        let token = node.token(user, Some(self.now.unix + 3600));
        let r = self
            .call(json!({"id": 1, "connect": {"token": token}}))
            .await;
        assert!(r["connect"]["client"].is_string(), "{r}");
    }
}

fn error_code(reply: &Value) -> u64 {
    reply["error"]["code"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn connect_with_a_token_registers_the_client() {
    let node = Fake::new(|_| {});
    let mut c = Conn::new(&node);
    let token = node.token("alice", Some(c.now.unix + 600));
    let r = c.call(json!({"id": 1, "connect": {"token": token}})).await;
    assert_eq!(r["id"], 1);
    assert_eq!(r["connect"]["node"], "unit-node");
    assert_eq!(r["connect"]["expires"], true);
    assert_eq!(r["connect"]["ttl"], 600);
    assert!(c.session.is_connected());
    assert_eq!(node.user_conns("alice"), 1);
    c.session.close().await;
    assert_eq!(node.user_conns("alice"), 0);
}

#[tokio::test]
async fn connect_refusals() {
    let node = Fake::new(|_| {});
    // No token on a secure node: unauthorized, then closed.
    let mut c = Conn::new(&node);
    let flow = c.send(json!({"id": 1, "connect": {}})).await;
    assert_eq!(flow, Flow::Close(Disconnect::INVALID_TOKEN));
    assert_eq!(
        error_code(&c.replies()[0]),
        ErrorCode::UNAUTHORIZED.code as u64
    );
    // A token signed with another secret: closed as invalid.
    let mut c = Conn::new(&node);
    let forged = Auth::new("other", None, None).mint(&Claims {
        sub: "mallory".into(),
        ..Claims::default()
    });
    let flow = c.send(json!({"id": 1, "connect": {"token": forged}})).await;
    assert_eq!(flow, Flow::Close(Disconnect::INVALID_TOKEN));
    assert!(!c.session.is_connected());
    // Expired: error 109 and the connection stays, for the SDK to refresh its token.
    let mut c = Conn::new(&node);
    let expired = node.token("bob", Some(c.now.unix - 120));
    let r = c
        .call(json!({"id": 1, "connect": {"token": expired}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::TOKEN_EXPIRED.code as u64);
    assert!(!c.session.is_connected());
    // Any other command before connect is a protocol violation.
    let mut c = Conn::new(&node);
    let flow = c
        .send(json!({"id": 1, "subscribe": {"channel": "a"}}))
        .await;
    assert_eq!(flow, Flow::Close(Disconnect::BAD_REQUEST));
    assert_eq!(node.registered.lock().unwrap().values().sum::<usize>(), 0);
}

#[tokio::test]
async fn subscribe_recovers_what_was_missed_or_says_it_could_not() {
    let node = Fake::new(|c| c.recovery_max_publications = 5);
    node.store("room", 8);
    let mut c = Conn::new(&node);
    c.connect(&node, "alice").await;
    // 3 behind: recovered, with the three publications, then activated from the head.
    let r = c
        .call(json!({"id": 2, "subscribe": {"channel": "room", "recover": true, "epoch": EPOCH, "offset": 5}}))
        .await;
    let sub = &r["subscribe"];
    assert_eq!(sub["recovered"], true, "{r}");
    assert_eq!(sub["offset"], 8);
    let offsets: Vec<u64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![6, 7, 8]);
    assert_eq!(
        node.activated.lock().unwrap().last(),
        Some(&("room".into(), Some(9)))
    );
    assert_eq!(node.presence("room").await.len(), 1);
    assert!(matches!(
        node.announced.lock().unwrap()[0],
        RoomEvent::Join { .. }
    ));
    // 7 behind, beyond the recovery limit of 5: not recovered, the client pages history.
    node.store("far", 8);
    let r = c
        .call(json!({"id": 3, "subscribe": {"channel": "far", "recover": true, "epoch": EPOCH, "offset": 1}}))
        .await;
    assert_eq!(r["subscribe"]["was_recovering"], true, "{r}");
    assert_ne!(r["subscribe"]["recovered"], true, "{r}");
    assert!(r["subscribe"]
        .get("publications")
        .is_none_or(|p| p.as_array().unwrap().is_empty()));
    // Another epoch: not recovered either.
    node.store("moved", 2);
    let r = c
        .call(json!({"id": 4, "subscribe": {"channel": "moved", "recover": true, "epoch": "old", "offset": 1}}))
        .await;
    assert_eq!(r["subscribe"]["was_recovering"], true, "{r}");
    assert_ne!(r["subscribe"]["recovered"], true, "{r}");
    // Leaving every room on close: hub, presence and a leave event.
    c.session.close().await;
    assert!(node.joined.lock().unwrap().is_empty());
    assert!(node.presence("room").await.is_empty());
}

#[tokio::test]
async fn publish_commits_and_replies() {
    let node = Fake::new(|_| {});
    let mut c = Conn::new(&node);
    c.connect(&node, "alice").await;
    c.call(json!({"id": 2, "subscribe": {"channel": "room"}}))
        .await;
    let r = c
        .call(json!({"id": 3, "publish": {"channel": "room", "data": {"text": "hi"}}}))
        .await;
    assert_eq!(r, json!({"id": 3, "publish": {}}));
    assert_eq!(node.head("room").offset, 1);
    // Not subscribed and the namespace does not let any client publish: refused.
    let r = c
        .call(json!({"id": 4, "publish": {"channel": "other", "data": 1}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::PERMISSION_DENIED.code as u64);
    assert_eq!(node.head("other").offset, 0);
}

#[tokio::test]
async fn subscribe_refusals() {
    let node = Fake::new(|c| {
        c.max_channels_per_connection = 2;
        c.namespaces.insert(
            "private".into(),
            crate::config::NamespaceOptions {
                allow_subscribe_for_client: false,
                ..Default::default()
            },
        );
    });
    let mut c = Conn::new(&node);
    c.connect(&node, "alice").await;
    let r = c
        .call(json!({"id": 2, "subscribe": {"channel": "private:x"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::PERMISSION_DENIED.code as u64);
    let r = c
        .call(json!({"id": 3, "subscribe": {"channel": "dm#bob,carol"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::PERMISSION_DENIED.code as u64);
    c.call(json!({"id": 4, "subscribe": {"channel": "a"}}))
        .await;
    let r = c
        .call(json!({"id": 5, "subscribe": {"channel": "a"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::ALREADY_SUBSCRIBED.code as u64);
    c.call(json!({"id": 6, "subscribe": {"channel": "b"}}))
        .await;
    let r = c
        .call(json!({"id": 7, "subscribe": {"channel": "c"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::LIMIT_EXCEEDED.code as u64);
    let r = c
        .call(json!({"id": 8, "subscribe": {"channel": "nope:x"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::UNKNOWN_CHANNEL.code as u64);
}

#[tokio::test]
async fn the_rate_limit_refills_with_the_time_passed_in() {
    let node = Fake::new(|c| c.commands_per_second = 5);
    let mut c = Conn::new(&node);
    c.connect(&node, "alice").await;
    // A burst of twice the rate, the connect included, then refusals.
    for id in 2..=10 {
        let r = c.call(json!({"id": id, "ping": {}})).await;
        assert!(r.get("error").is_none(), "{id}: {r}");
    }
    let r = c.call(json!({"id": 11, "ping": {}})).await;
    assert_eq!(error_code(&r), ErrorCode::TOO_MANY_REQUESTS.code as u64);
    // One second later, five more.
    c.now.at += Duration::from_secs(1);
    for id in 12..=16 {
        let r = c.call(json!({"id": id, "ping": {}})).await;
        assert!(r.get("error").is_none(), "{id}: {r}");
    }
    let r = c.call(json!({"id": 17, "ping": {}})).await;
    assert_eq!(error_code(&r), ErrorCode::TOO_MANY_REQUESTS.code as u64);
}

#[tokio::test]
async fn join_leave_goes_to_those_asking_and_stops_above_the_room_size_limit() {
    let node = Fake::new(|c| c.default_namespace.join_leave_max_room_size = 2);
    let mut conns = Vec::new();
    for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
        let mut c = Conn::new(&node);
        c.connect(&node, user).await;
        let asks = i == 0;
        let r = c
            .call(json!({"id": 2, "subscribe": {"channel": "room", "join_leave": asks}}))
            .await;
        assert!(r["subscribe"].is_object(), "{r}");
        conns.push(c);
    }
    let modes: Vec<bool> = node
        .modes
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.join_leave)
        .collect();
    assert_eq!(
        modes,
        vec![true, false, false],
        "pushed only to those asking"
    );
    let joins = |node: &Fake| {
        node.announced
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                RoomEvent::Join { info, .. } => format!("+{}", info.user),
                RoomEvent::Leave { info, .. } => format!("-{}", info.user),
                RoomEvent::Publication(_) => "pub".into(),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        joins(&node),
        ["+a", "+b"],
        "the third join is above the limit"
    );
    assert_eq!(
        node.presence("room").await.len(),
        3,
        "presence still counts every member"
    );
    conns.pop().unwrap().session.close().await;
    conns.pop().unwrap().session.close().await;
    assert_eq!(
        joins(&node),
        ["+a", "+b", "-b"],
        "leaves from 3 are not pushed, from 2 are"
    );
    // A namespace forcing join/leave pushes them to everyone.
    let node = Fake::new(|c| c.default_namespace.force_push_join_leave = true);
    let mut c = Conn::new(&node);
    c.connect(&node, "a").await;
    c.call(json!({"id": 2, "subscribe": {"channel": "room"}}))
        .await;
    assert!(node.modes.lock().unwrap()[0].1.join_leave);
}

#[tokio::test]
async fn a_room_publish_rate_is_shared_by_its_publishers() {
    let node = Fake::new(|c| c.default_namespace.publish_rate_per_room = 2);
    let (mut a, mut b) = (Conn::new(&node), Conn::new(&node));
    a.connect(&node, "alice").await;
    b.connect(&node, "bob").await;
    b.now = a.now;
    for c in [&mut a, &mut b] {
        c.call(json!({"id": 1, "subscribe": {"channel": "room"}}))
            .await;
        c.call(json!({"id": 1, "subscribe": {"channel": "other"}}))
            .await;
    }
    let mut codes = Vec::new();
    for id in 2..=4 {
        for c in [&mut a, &mut b] {
            let r = c
                .call(json!({"id": id, "publish": {"channel": "room", "data": id}}))
                .await;
            codes.push(error_code(&r));
        }
    }
    // A burst of twice the rate for the room, whoever publishes.
    assert_eq!(codes, [0, 0, 0, 0, 111, 111]);
    let r = a
        .call(json!({"id": 5, "publish": {"channel": "other", "data": 1}}))
        .await;
    assert_eq!(error_code(&r), 0, "another room has its own budget");
    b.now.at += Duration::from_secs(1);
    for expect in [0, 0, 111] {
        let r = b
            .call(json!({"id": 6, "publish": {"channel": "room", "data": 1}}))
            .await;
        assert_eq!(error_code(&r), expect, "{r}");
    }
}

#[tokio::test]
async fn digest_is_asked_in_data_or_given_above_the_room_size() {
    let node = Fake::new(|c| c.default_namespace.digest_above = 2);
    node.store("room", 3);
    let mut digests = Vec::new();
    for data in [
        json!(null),
        json!({"digest": true}),
        json!("app data"),
        json!({"digest": false}),
    ] {
        let mut c = Conn::new(&node);
        c.connect(&node, "a").await;
        let r = c
            .call(json!({"id": 2, "subscribe": {"channel": "room", "data": data, "recover": true, "offset": 1}}))
            .await;
        let mode = node.modes.lock().unwrap().last().unwrap().1;
        digests.push(mode.digest.map(|d| d.as_millis()));
        if mode.digest.is_some() {
            // Not recovered: the newest position, for the client to page history from.
            assert_eq!(r["subscribe"]["offset"], 3, "{r}");
            assert!(r["subscribe"].get("publications").is_none(), "{r}");
        }
    }
    // Room of 0: live; asked: digest; room of 2 with other data: digest; opted out: live.
    assert_eq!(digests, [None, Some(1000), Some(1000), None]);
}
