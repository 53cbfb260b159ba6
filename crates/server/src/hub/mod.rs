//! The rooms of this node: which local connections are subscribed to what, and fan-out.
//!
//! The hub receives room events from the bus (publications already committed to the
//! store, joins, leaves) and puts them into the outboxes of the local subscribers. A
//! publication is encoded once per format its recipients speak; every recipient of a
//! format gets the same `Bytes` (see `frames.rs`).
//!
//! Ordering and recovery: a subscriber is first added *pending* (events for it are held,
//! in order, in its pending buffer), then the caller reads the store, queues the subscribe
//! reply, and *activates* it: the held events go out after the reply, skipping any the
//! reply already carried. Because the store is read after the subscriber is registered, and
//! publications reach the hub only after they are committed, every publication is either in
//! that read or in the pending buffer (or both: duplicates are dropped by offset).
//!
//! Each positioned subscription knows the next offset it must see. An offset beyond it is
//! a gap: the connection is closed with "insufficient state" and its SDK recovers.
//!
//! Delta subscriptions get each publication in full or as a fossil delta against the
//! room's previous one (`frames.rs`); what one subscriber gets of an event (held, admitted
//! by offset, in which shape) is decided in `delivery.rs`.
//!
//! A room with more than `parallel_above` live subscribers is written out on every core:
//! `dispatch` decides who gets what under the shard lock as for any room, and hands the
//! outbox writes to the room's lanes (`lanes.rs`), which keep each connection's order.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use roomcast_proto::ClientInfo;

use crate::store::Message;

mod delivery;
mod digest;
mod frames;
mod lanes;
pub mod outbox;

use delivery::hold;
use frames::{Chain, Frames, Shape};

pub use outbox::{Out, Outbox, ServerSubscribe, SubOverrides};

/// A connection's id, unique on this node.
pub type ConnId = u64;

/// Something that happened in a room, as carried by the bus.
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// A committed publication.
    Publication(Arc<Message>),
    Join {
        room: Arc<str>,
        info: ClientInfo,
    },
    Leave {
        room: Arc<str>,
        info: ClientInfo,
    },
}

impl RoomEvent {
    pub fn room(&self) -> &str {
        match self {
            RoomEvent::Publication(m) => &m.room,
            RoomEvent::Join { room, .. } | RoomEvent::Leave { room, .. } => room,
        }
    }
}

const SHARDS: usize = 64;

/// Events held for one pending subscriber at most; beyond, it is told to recover again.
const MAX_PENDING: usize = 10_000;

/// Live subscribers of a room above which its fan-out runs on every core.
pub const DEFAULT_PARALLEL_ABOVE: usize = 1000;

struct Sub {
    outbox: Arc<Outbox>,
    /// The next offset this subscription must receive; `None` for a subscription that is
    /// not positioned (it takes whatever comes).
    next: Option<u64>,
    /// Events held while the subscribe is in progress.
    pending: Option<Vec<(u64, Frames)>>,
    /// Cleared when the subscription leaves, so fan-out lanes holding a job for it skip it.
    alive: Arc<AtomicBool>,
    /// A delta subscription's chain (what its next delta's base must be); `None`: not one.
    delta: Option<Chain>,
}

/// How a connection takes part in a room.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubMode {
    /// Wants join/leave pushes.
    pub join_leave: bool,
    /// A digest subscription: at most the newest publication once per this interval,
    /// instead of every one (see `digest.rs`).
    pub digest: Option<std::time::Duration>,
    /// Delta compression (fossil) was negotiated: publications in the delta mode's shape.
    pub delta: bool,
}

/// What `Hub::subscribe` did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Joined {
    /// The room had no local subscriber before (the bus must start carrying it here).
    pub new_room: bool,
    /// Local subscribers of the room, this one included.
    pub size: usize,
    /// The room needs its digest timer started: run `Hub::run_digest` with this id.
    pub start_digest: Option<u64>,
}

/// One shard of the room table.
type Shard = Mutex<HashMap<Arc<str>, Room>>;

#[derive(Default)]
struct Room {
    /// Live subscribers: every publication.
    subs: HashMap<ConnId, Sub>,
    /// Digest subscribers: the newest publication once per interval.
    digest: digest::Digest,
    /// The subscribers (live or digest) that want join/leave pushes: a join or leave
    /// visits these only, never every subscriber of the room.
    join_leave: HashSet<ConnId>,
    /// The room's fan-out lanes, once it has had more than `parallel_above` live
    /// subscribers (kept until the room is gone: see `lanes.rs` for why).
    lanes: Option<lanes::Lanes>,
    /// The newest publication dispatched here: the base of the next one's delta.
    last_pub: Option<Arc<Message>>,
}

impl Room {
    fn size(&self) -> usize {
        self.subs.len() + self.digest.subs.len()
    }

    /// The delta base of a publication (the room's newest before it), which becomes the
    /// newest unless it is older (a duplicate, or a late one of an unpositioned stream).
    fn base_of(&mut self, m: &Arc<Message>) -> Option<Arc<Message>> {
        let base = self.last_pub.clone();
        if base.as_ref().is_none_or(|b| b.offset < m.offset) {
            self.last_pub = Some(m.clone());
        }
        base
    }

    fn sub_mut(&mut self, conn: &ConnId) -> Option<&mut Sub> {
        match self.subs.get_mut(conn) {
            Some(sub) => Some(sub),
            None => self.digest.subs.get_mut(conn),
        }
    }
}

/// A local connection, as the server API finds it by user.
#[derive(Clone)]
pub struct ConnEntry {
    pub client: Arc<str>,
    pub outbox: Arc<Outbox>,
}

/// Most publications `dispatch_many` sends to a room's lanes as one run. Whole commits (~100
/// publications in the 5,000-member room at 1,000/s) made each connection's WebSocket message
/// ~25 KB: the node's CPU was the same, but the load generator's per delivery rose and live p50
/// went from ~0.85 s to ~1.25 s (BENCHMARKS.md); runs of 32 (a lane's batch) keep both down.
const RUN: usize = 32;

pub struct Hub {
    /// Rooms by name, sharded so that fan-out in one room does not block others.
    shards: Box<[Shard]>,
    /// Local connections by user, for user-targeted operations.
    users: Mutex<HashMap<Arc<str>, HashMap<ConnId, ConnEntry>>>,
    next_conn: AtomicU64,
    /// Ids of digest timers (one per room with digest subscribers).
    next_timer: AtomicU64,
    /// Frames put into outboxes (a delivery is one frame to one connection); shared with
    /// the fan-out lanes, which count theirs.
    pub deliveries: Arc<AtomicU64>,
    /// Fan-out jobs refused by a full lane (their connections closed as slow).
    pub lane_overflows: Arc<AtomicU64>,
    /// Live subscribers of a room above which its fan-out runs on every core; 0: never.
    parallel_above: usize,
    /// Subscriptions closed for a gap in their offsets.
    pub gaps: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            users: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            next_timer: AtomicU64::new(1),
            deliveries: Arc::new(AtomicU64::new(0)),
            lane_overflows: Arc::new(AtomicU64::new(0)),
            parallel_above: DEFAULT_PARALLEL_ABOVE,
            gaps: AtomicU64::new(0),
        }
    }

    /// Sets the room size above which fan-out runs on every core (0: never).
    pub fn with_parallel_above(mut self, subscribers: usize) -> Hub {
        self.parallel_above = subscribers;
        self
    }

    fn shard(&self, room: &str) -> &Shard {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register_conn(&self, user: &str, id: ConnId, entry: ConnEntry) {
        self.users
            .lock()
            .expect("users lock")
            .entry(user.into())
            .or_default()
            .insert(id, entry);
    }

    pub fn unregister_conn(&self, user: &str, id: ConnId) {
        let mut users = self.users.lock().expect("users lock");
        if let Some(conns) = users.get_mut(user) {
            conns.remove(&id);
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// The local connections of a user.
    pub fn user_conns(&self, user: &str) -> Vec<ConnEntry> {
        self.users
            .lock()
            .expect("users lock")
            .get(user)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Bytes queued in every local connection's outbox (for `/metrics`: O(connections),
    /// read at scrape time so that fan-out keeps no shared counter).
    pub fn queued_bytes(&self) -> usize {
        let outboxes: Vec<Arc<Outbox>> = self
            .users
            .lock()
            .expect("users lock")
            .values()
            .flat_map(|c| c.values().map(|e| e.outbox.clone()))
            .collect();
        outboxes.iter().map(|o| o.queued_bytes()).sum()
    }

    /// Users with local connections and how many each has (the cluster registry).
    pub fn users(&self) -> Vec<(String, usize)> {
        self.users
            .lock()
            .expect("users lock")
            .iter()
            .map(|(u, c)| (u.to_string(), c.len()))
            .collect()
    }

    /// Users with local connections and their client ids (the per-user registry).
    pub fn user_clients(&self) -> Vec<(String, Vec<Arc<str>>)> {
        self.users
            .lock()
            .expect("users lock")
            .iter()
            .map(|(u, c)| {
                (
                    u.to_string(),
                    c.values().map(|e| e.client.clone()).collect(),
                )
            })
            .collect()
    }

    /// Number of local connections and of distinct users.
    pub fn counts(&self) -> (usize, usize) {
        let users = self.users.lock().expect("users lock");
        (users.values().map(HashMap::len).sum(), users.len())
    }

    /// Adds a pending subscriber (O(1), whatever the room's size).
    pub fn subscribe(
        &self,
        room: &str,
        conn: ConnId,
        outbox: Arc<Outbox>,
        mode: SubMode,
    ) -> Joined {
        let mut shard = self.shard(room).lock().expect("hub shard lock");
        let new_room = !shard.contains_key(room);
        let r = shard.entry(room.into()).or_default();
        let sub = Sub {
            outbox,
            next: None,
            pending: Some(Vec::new()),
            alive: Arc::new(AtomicBool::new(true)),
            delta: mode.delta.then(Chain::default),
        };
        let mut start_digest = None;
        if mode.digest.is_some() {
            r.digest.subs.insert(conn, sub);
            if r.digest.timer.is_none() {
                let id = self.next_timer.fetch_add(1, Ordering::Relaxed);
                r.digest.timer = Some(id);
                start_digest = Some(id);
            }
        } else {
            r.subs.insert(conn, sub);
        }
        if mode.join_leave {
            r.join_leave.insert(conn);
        }
        Joined {
            new_room,
            size: r.size(),
            start_digest,
        }
    }

    /// Local subscribers of a room (O(1)).
    pub fn room_size(&self, room: &str) -> usize {
        let shard = self.shard(room).lock().expect("hub shard lock");
        shard.get(room).map_or(0, Room::size)
    }

    /// Ends the pending state of a subscriber whose subscribe reply is queued: held events
    /// from `next` on go out now, in order. `next` is `None` for unpositioned subscriptions.
    pub fn activate(&self, room: &str, conn: ConnId, next: Option<u64>) {
        let mut shard = self.shard(room).lock().expect("hub shard lock");
        let Some(sub) = shard.get_mut(room).and_then(|r| r.sub_mut(&conn)) else {
            return;
        };
        sub.next = next;
        let held = sub.pending.take().unwrap_or_default();
        for (offset, frame) in held {
            if offset == 0 {
                // Join/leave held while pending: not positioned, just passed on.
                self.put(sub, frame);
            } else {
                self.deliver(sub, offset, frame);
            }
        }
    }

    /// Removes a subscriber. Returns the number of local subscribers left, `None` when
    /// the room had none (0: the room is gone, the bus may stop carrying it here).
    pub fn unsubscribe(&self, room: &str, conn: ConnId) -> Option<usize> {
        let mut shard = self.shard(room).lock().expect("hub shard lock");
        let r = shard.get_mut(room)?;
        let gone = match r.subs.remove(&conn) {
            Some(sub) => Some(sub),
            None => r.digest.subs.remove(&conn),
        };
        if let Some(sub) = gone {
            sub.alive.store(false, Ordering::Release);
        }
        r.join_leave.remove(&conn);
        let left = r.size();
        if left == 0 {
            shard.remove(room);
        }
        Some(left)
    }

    /// Fans one event out to the room's local subscribers.
    pub fn dispatch(&self, event: &RoomEvent) {
        let room = event.room();
        let mut shard = self.shard(room).lock().expect("hub shard lock");
        let Some(r) = shard.get_mut(room) else { return };
        // Encoded lazily, once per format (and delta shape) its recipients speak.
        let (offset, frame) = match event {
            RoomEvent::Publication(m) => (m.offset, Frames::new(event, r.base_of(m))),
            RoomEvent::Join { .. } | RoomEvent::Leave { .. } => (0, Frames::new(event, None)),
        };
        if !matches!(event, RoomEvent::Publication(_)) {
            let Room {
                subs,
                digest,
                join_leave,
                ..
            } = r;
            for conn in join_leave.iter() {
                let sub = match subs.get_mut(conn) {
                    Some(sub) => Some(sub),
                    None => digest.subs.get_mut(conn),
                };
                if let Some(sub) = sub {
                    if !hold(sub, 0, &frame) {
                        self.put(sub, frame.clone());
                    }
                }
            }
            return;
        }
        if offset == 0 {
            // Unpositioned (an ephemeral publication, a deletion notice): to every live
            // subscriber as it is, never checked against or moving anyone's position.
            for sub in r.subs.values_mut() {
                if !hold(sub, 0, &frame) {
                    self.put(sub, frame.clone());
                }
            }
            return;
        }
        // O(1) for the digest side: the room's timer sends the newest.
        r.digest.note(offset, &frame);
        if self.has_lanes(r) {
            self.to_lanes(r, &[(offset, frame)]);
            return;
        }
        for sub in r.subs.values_mut() {
            if !hold(sub, offset, &frame) {
                self.deliver(sub, offset, frame.clone());
            }
        }
    }

    /// Fans events out in order, as `dispatch` of each would, with a run of (up to `RUN`)
    /// consecutive positioned publications of one room (of one commit, usually) going to
    /// the room's lanes as one job per lane: what it costs per subscriber (its target
    /// built, its outbox locked and woken) is paid once per run instead of once per
    /// publication. A subscriber the run does not reach whole gets its part publication by
    /// publication, in jobs sent after the run's, so its own order holds (see `to_lanes`).
    pub fn dispatch_many(&self, events: &[RoomEvent]) {
        let positioned = |e: &RoomEvent| matches!(e, RoomEvent::Publication(m) if m.offset != 0);
        let mut i = 0;
        while i < events.len() {
            let mut j = i + 1;
            if positioned(&events[i]) {
                let room = events[i].room();
                while j < events.len()
                    && j - i < RUN
                    && positioned(&events[j])
                    && events[j].room() == room
                {
                    j += 1;
                }
            }
            if j - i == 1 || !self.dispatch_run(&events[i..j]) {
                for e in &events[i..j] {
                    self.dispatch(e);
                }
            }
            i = j;
        }
    }

    /// `dispatch_many`'s run of positioned publications of one room, when the room has
    /// lanes; false (nothing done) when it has none.
    fn dispatch_run(&self, run: &[RoomEvent]) -> bool {
        let room = run[0].room();
        let mut shard = self.shard(room).lock().expect("hub shard lock");
        let Some(r) = shard.get_mut(room) else {
            return true;
        };
        if !self.has_lanes(r) {
            return false;
        }
        let mut pubs: Vec<(u64, Frames)> = Vec::with_capacity(run.len());
        for event in run {
            let RoomEvent::Publication(m) = event else {
                unreachable!("a run holds publications only")
            };
            pubs.push((m.offset, Frames::new(event, r.base_of(m))));
        }
        let (offset, frame) = pubs.last().expect("a run is never empty");
        r.digest.note(*offset, frame);
        self.to_lanes(r, &pubs);
        true
    }

    /// Whether the room has fan-out lanes, starting them once it has more than
    /// `parallel_above` live subscribers.
    fn has_lanes(&self, r: &mut Room) -> bool {
        if r.lanes.is_none() && self.parallel_above > 0 && r.subs.len() > self.parallel_above {
            r.lanes = lanes::Lanes::start(&self.deliveries, &self.lane_overflows);
        }
        r.lanes.is_some()
    }

    /// Hands a run of positioned publications (offset, frames; one or more, in offset
    /// order) to the room's lanes. Each subscriber that takes the whole run is one target
    /// of one job per lane; the others (subscribe pending, delta, positioned past part of
    /// the run) are decided publication by publication and, in a run of more than one,
    /// written in jobs sent after it.
    fn to_lanes(&self, r: &mut Room, pubs: &[(u64, Frames)]) {
        let Room { subs, lanes, .. } = r;
        let lanes = lanes.as_ref().expect("the room has lanes");
        let first = pubs[0].0;
        let last = pubs[pubs.len() - 1].0;
        // One room's offsets in commit order are consecutive; checked, not assumed.
        let consecutive = pubs.windows(2).all(|w| w[1].0 == w[0].0 + 1);
        // Lanes split the room by connection id, never exactly evenly: an eighth of slack
        // keeps a lane's part from outgrowing its capacity (a profile of a 5,000-member
        // room showed ~4% of the node's CPU in reallocating and copying these parts).
        let share = subs.len() / lanes.len();
        let mut whole: Vec<Vec<lanes::Target>> = (0..lanes.len())
            .map(|_| Vec::with_capacity(share + share / 8 + 16))
            .collect();
        // Per publication of the run, per lane: the subscribers that get it alone.
        let mut single: Vec<Vec<Vec<lanes::Target>>> = Vec::new();
        for (conn, sub) in subs.iter_mut() {
            let lane = lanes.lane_of(*conn);
            let takes_whole = sub.pending.is_none()
                && sub.delta.is_none()
                && sub.next.is_none_or(|next| next == first && consecutive);
            if takes_whole {
                if let Some(next) = &mut sub.next {
                    *next = last + 1;
                }
                whole[lane].push(lanes::Target {
                    outbox: sub.outbox.clone(),
                    alive: sub.alive.clone(),
                    shape: Shape::Plain,
                });
                continue;
            }
            for (k, (offset, frame)) in pubs.iter().enumerate() {
                if !hold(sub, *offset, frame) && self.admit(sub, *offset) {
                    let target = lanes::Target {
                        outbox: sub.outbox.clone(),
                        alive: sub.alive.clone(),
                        shape: delivery::shape(sub, frame),
                    };
                    if pubs.len() == 1 {
                        // A run of one is its own job: every target in it, in its shape.
                        whole[lane].push(target);
                        continue;
                    }
                    if single.is_empty() {
                        single = (0..pubs.len())
                            .map(|_| (0..lanes.len()).map(|_| Vec::new()).collect())
                            .collect();
                    }
                    single[k][lane].push(target);
                }
            }
        }
        let frames: Arc<[Frames]> = pubs.iter().map(|(_, f)| f.clone()).collect();
        lanes.send(&frames, whole);
        for (parts, (_, frame)) in single.into_iter().zip(pubs) {
            lanes.send(&Arc::from([frame.clone()]), parts);
        }
    }

    /// The number of fan-out lanes a room has (0: direct path).
    #[cfg(test)]
    fn lanes_of(&self, room: &str) -> usize {
        let shard = self.shard(room).lock().expect("hub shard lock");
        shard
            .get(room)
            .and_then(|r| r.lanes.as_ref())
            .map_or(0, lanes::Lanes::len)
    }

    /// Rooms with local subscribers and how many.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for (name, room) in shard.lock().expect("hub shard lock").iter() {
                out.push((name.to_string(), room.size()));
            }
        }
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use roomcast_proto::Disconnect;
    use serde_json::value::RawValue;

    pub(crate) fn publication(room: &str, offset: u64) -> RoomEvent {
        RoomEvent::Publication(Arc::new(Message {
            room: room.into(),
            offset,
            uid: String::new(),
            user: String::new(),
            client: String::new(),
            data: RawValue::from_string(offset.to_string()).unwrap(),
            info: None,
            ts_ms: 0,
            tombstone: None,
        }))
    }

    pub(crate) fn offsets(outbox: &Outbox) -> (Vec<u64>, Option<Disconnect>) {
        let mut out = Vec::new();
        let close = outbox.take(&mut out);
        let offs = out
            .iter()
            .filter_map(|o| match o {
                Out::Frame(b) => serde_json::from_slice::<serde_json::Value>(b).ok()?["push"]
                    ["pub"]["offset"]
                    .as_u64(),
                _ => None,
            })
            .collect();
        (offs, close)
    }

    #[test]
    fn pending_events_follow_the_reply_without_duplicates() {
        let hub = Hub::new();
        let ob = Arc::new(Outbox::new(1 << 20));
        assert!(
            hub.subscribe("r", 1, ob.clone(), SubMode::default())
                .new_room
        );
        hub.dispatch(&publication("r", 4));
        hub.dispatch(&publication("r", 5));
        assert!(offsets(&ob).0.is_empty(), "nothing goes out while pending");
        // The store read returned up to 4; 5 is next.
        hub.activate("r", 1, Some(5));
        hub.dispatch(&publication("r", 6));
        assert_eq!(offsets(&ob), (vec![5, 6], None));
    }

    #[test]
    fn a_gap_closes_with_insufficient_state() {
        let hub = Hub::new();
        let ob = Arc::new(Outbox::new(1 << 20));
        hub.subscribe("r", 1, ob.clone(), SubMode::default());
        hub.activate("r", 1, Some(1));
        hub.dispatch(&publication("r", 1));
        hub.dispatch(&publication("r", 3));
        assert_eq!(
            offsets(&ob),
            (vec![1], Some(Disconnect::INSUFFICIENT_STATE))
        );
        assert_eq!(hub.gaps.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn fan_out_shares_one_encoding_and_join_leave_is_opt_in() {
        let hub = Hub::new();
        let a = Arc::new(Outbox::new(1 << 20));
        let b = Arc::new(Outbox::new(1 << 20));
        hub.subscribe(
            "r",
            1,
            a.clone(),
            SubMode {
                join_leave: true,
                ..SubMode::default()
            },
        );
        hub.subscribe("r", 2, b.clone(), SubMode::default());
        hub.activate("r", 1, None);
        hub.activate("r", 2, None);
        hub.dispatch(&publication("r", 1));
        hub.dispatch(&RoomEvent::Join {
            room: "r".into(),
            info: ClientInfo::new("u", "c"),
        });
        let (mut fa, mut fb) = (Vec::new(), Vec::new());
        a.take(&mut fa);
        b.take(&mut fb);
        assert_eq!((fa.len(), fb.len()), (2, 1));
        match (&fa[0], &fb[0]) {
            (Out::Frame(x), Out::Frame(y)) => {
                assert_eq!(x.as_ptr(), y.as_ptr(), "same bytes, not a copy");
            }
            _ => panic!("frames expected"),
        }
        assert_eq!(hub.unsubscribe("r", 1), Some(1));
        assert_eq!(hub.unsubscribe("r", 2), Some(0));
        assert_eq!(hub.unsubscribe("r", 2), None);
        assert!(hub.channels().is_empty());
    }
}
