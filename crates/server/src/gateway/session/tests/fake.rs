//! The in-memory `Services` the session tests run on, and a connection driven by JSON
//! commands.

pub(super) use std::collections::HashMap;
pub(super) use std::sync::atomic::{AtomicU64, Ordering};
pub(super) use std::sync::{Arc, Mutex};
pub(super) use std::time::Duration;

pub(super) use roomcast_proto::{
    decode_commands, ClientInfo, Disconnect, ErrorCode, StreamPosition,
};
pub(super) use serde_json::value::RawValue;
pub(super) use serde_json::{json, Value};

pub(super) use super::super::{Flow, Now, Services, Session};
pub(super) use crate::auth::{now_secs, Auth, Claims, TokenError};
pub(super) use crate::config::{Config, SessionConfig};
pub(super) use crate::hub::{ConnEntry, ConnId, Out, Outbox, RoomEvent, SubMode};
pub(super) use crate::keepalive::Peer;
pub(super) use crate::presence::Members;
pub(super) use crate::store::{Appended, Message, Position, Range, StoreError};

pub(super) const SECRET: &str = "unit-secret";
pub(super) const EPOCH: &str = "epoch-1";

/// A node in memory: rooms' stored publications, who joined, presence, announcements.
pub(super) struct Fake {
    pub(super) config: SessionConfig,
    pub(super) auth: Auth,
    pub(super) conn_ids: AtomicU64,
    pub(super) history: Mutex<HashMap<String, Vec<Message>>>,
    pub(super) joined: Mutex<Vec<(String, ConnId)>>,
    /// How each subscription joined its room.
    pub(super) modes: Mutex<Vec<(String, SubMode)>>,
    pub(super) activated: Mutex<Vec<(String, Option<u64>)>>,
    pub(super) registered: Mutex<HashMap<String, usize>>,
    pub(super) presence: Mutex<HashMap<String, HashMap<String, ClientInfo>>>,
    pub(super) announced: Mutex<Vec<RoomEvent>>,
    pub(super) room_rates: crate::rate::RoomRates,
}

impl Fake {
    /// The room's presence entries.
    pub(super) fn entries(&self, room: &str) -> HashMap<String, ClientInfo> {
        self.presence
            .lock()
            .unwrap()
            .get(room)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn new(tune: impl FnOnce(&mut SessionConfig)) -> Arc<Fake> {
        let mut config = Config::default().session();
        // The tests here name every subscription they expect: no personal channel.
        config.personal = None;
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

    pub(super) fn token(&self, user: &str, exp: Option<u64>) -> String {
        self.auth.mint(&Claims {
            sub: user.into(),
            exp,
            ..Claims::default()
        })
    }

    pub(super) fn store(&self, room: &str, n: u64) {
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
                tombstone: None,
            });
        }
    }

    pub(super) fn head(&self, room: &str) -> Position {
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
    ) -> Result<Arc<(Vec<Message>, Position)>, StoreError> {
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
        Ok(Arc::new((msgs, self.head(room))))
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
        Ok(Arc::unwrap_or_clone(self.range(room, range).await.unwrap()))
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
    async fn presence(&self, room: &str, max: usize) -> Members {
        let entries = self.entries(room);
        if entries.len() > max {
            Members::TooMany {
                clients: entries.len() as u32,
            }
        } else {
            Members::Listed(entries)
        }
    }
    async fn presence_stats(&self, room: &str) -> (u32, u32) {
        let clients = self
            .presence
            .lock()
            .unwrap()
            .get(room)
            .map_or(0, HashMap::len);
        (clients as u32, 0)
    }

    async fn check_member(&self, _room: &str, _user: &str) -> Result<(), ErrorCode> {
        // No membership in the fake: no namespace of these tests is members_only.
        Err(ErrorCode::PERMISSION_DENIED)
    }

    async fn chat_rpc(
        &self,
        _user: &str,
        _method: &str,
        _data: Option<&RawValue>,
    ) -> Result<Box<RawValue>, crate::chat::ChatError> {
        Err(ErrorCode::METHOD_NOT_FOUND.into())
    }
}

/// A session, its outbox and a clock the test moves.
pub(super) struct Conn {
    pub(super) session: Session<Fake>,
    pub(super) peer: Arc<Peer>,
    pub(super) now: Now,
}

impl Conn {
    pub(super) fn new(node: &Arc<Fake>) -> Conn {
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
    pub(super) async fn send(&mut self, cmd: Value) -> Flow {
        let text = cmd.to_string();
        let mut commands = decode_commands(&text).unwrap();
        let (id, method) = commands.remove(0).into_method().unwrap();
        self.session.handle(id, method, self.now).await
    }

    /// Runs one command and returns its single reply.
    pub(super) async fn call(&mut self, cmd: Value) -> Value {
        assert_eq!(self.send(cmd).await, Flow::Continue);
        let mut replies = self.replies();
        assert_eq!(replies.len(), 1, "{replies:?}");
        replies.remove(0)
    }

    pub(super) fn replies(&self) -> Vec<Value> {
        let mut items = Vec::new();
        self.peer.outbox.take(&mut items);
        items
            .into_iter()
            .filter_map(|o| match o {
                Out::Frame(b) => Some(serde_json::from_slice(&b).unwrap()),
                _ => None,
            })
            .collect()
    }

    pub(super) async fn connect(&mut self, node: &Fake, user: &str) {
        let token = node.token(user, Some(self.now.unix + 3600));
        let r = self
            .call(json!({"id": 1, "connect": {"token": token}}))
            .await;
        assert!(r["connect"]["client"].is_string(), "{r}");
    }
}

pub(super) fn error_code(reply: &Value) -> u64 {
    reply["error"]["code"].as_u64().unwrap_or(0)
}
