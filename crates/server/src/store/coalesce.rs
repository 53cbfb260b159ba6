//! Shared reads: a `Store` wrapper that lets identical concurrent `range` calls share one
//! read of the backend. In a reconnect storm a room's members all come back at once and
//! all ask to recover from the same offset; without this every one of them reads the same
//! rows (15,000 members, 100 publications behind: 1.5 million rows instead of 15,000).
//!
//! Invariant (what recovery's pending/activate protocol needs, see `hub/mod.rs`): a caller
//! only ever gets the result of a read that *started after it called*. A subscriber
//! registers pending in the hub before it reads; a read that began before that could miss
//! a publication committed in between that the pending buffer did not see either. So a
//! caller that finds a read of its key in flight does not take that read's result: it
//! waits for it to finish and then shares the next read, which every caller that arrived
//! meanwhile shares too. Per key at most one read runs at a time; the number of reads is
//! bounded by the number of callers, and the map holds only keys with a caller waiting.
//!
//! Recent reads. Callers of a storm rarely overlap (1,500 recoveries/s over 150 rooms is
//! ten a second per room, each read ~1 ms), so the lanes alone shared little: every member
//! read its 100 rows. A finished read is therefore kept for `RECENT_TTL` and serves a later
//! identical call when the room's position, read *after* that call, is still the one the
//! read saw: nothing was committed since, so the kept rows are what a fresh read would
//! return, and the invariant above holds (positions are updated at commit, before a
//! publication is dispatched, on both stores). What the position does not show:
//! - a deletion or `history_remove` through this store bumps a generation and drops every
//!   kept read (a read that began before it is not kept); one made on another node of a
//!   cluster can be missing from a recovery this node serves within `RECENT_TTL` of it;
//! - `history_ttl`: a kept read whose oldest publication has aged past its room's TTL
//!   since is not served (the policy is kept here too, and a new one drops every read).
//!
//! Bounded: at most `RECENT_KEYS` reads and `RECENT_BYTES` of payload kept, oldest first out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Appended, Message, NewMessage, Position, Range, Store, StoreError};

type Read = Arc<(Vec<Message>, Position)>;
type Outcome = Result<Read, StoreError>;

/// Which read: the room and the range, field by field.
type Key = (String, Option<u64>, usize, bool);

/// The reads of one key.
#[derive(Default)]
struct Lane {
    /// Held while a read of this key runs, so reads of one key never overlap.
    reading: tokio::sync::Mutex<()>,
    /// Callers of this key so far (a ticket each, in arrival order).
    tickets: Mutex<u64>,
    /// The latest read's result and the ticket count when it started: it serves callers
    /// whose ticket is below that count (they called before it began).
    last: Mutex<Option<(u64, Arc<Outcome>)>>,
}

/// How long a finished read may serve later identical calls (while its room stays put).
const RECENT_TTL: Duration = Duration::from_secs(1);
/// Most reads kept.
const RECENT_KEYS: usize = 4096;
/// Most payload bytes kept (as `budget_bytes` counts them).
const RECENT_BYTES: usize = 32 << 20;

/// Finished reads, oldest first.
#[derive(Default)]
struct Recent {
    kept: HashMap<Key, (Instant, Arc<Outcome>, usize)>,
    order: VecDeque<(Key, Instant)>,
    bytes: usize,
    /// Bumped by every deletion and clear: a read that began under an older one is not kept.
    generation: u64,
}

impl Recent {
    fn get(&self, key: &Key, now: Instant) -> Option<Arc<Outcome>> {
        let (at, outcome, _) = self.kept.get(key)?;
        (now.duration_since(*at) < RECENT_TTL).then(|| outcome.clone())
    }

    fn keep(&mut self, key: Key, outcome: Arc<Outcome>, generation: u64) {
        let Ok(read) = &*outcome else { return };
        if generation != self.generation {
            return;
        }
        let bytes = super::budget_bytes(&read.0);
        if bytes > RECENT_BYTES / 4 {
            return;
        }
        let now = Instant::now();
        if let Some((_, _, old)) = self.kept.insert(key.clone(), (now, outcome, bytes)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        self.order.push_back((key, now));
        while self.kept.len() > RECENT_KEYS || self.bytes > RECENT_BYTES {
            let Some((k, at)) = self.order.pop_front() else {
                break;
            };
            // Only the entry this order slot was made for (a key kept again has a newer one).
            if self.kept.get(&k).is_some_and(|(t, _, _)| *t == at) {
                let (_, _, b) = self.kept.remove(&k).expect("present");
                self.bytes -= b;
            }
        }
        // Stale order slots of keys kept again are dropped as they reach the front; bound
        // them too, so a hot key cannot grow the queue.
        if self.order.len() > 2 * RECENT_KEYS {
            let kept = &self.kept;
            self.order
                .retain(|(k, at)| kept.get(k).is_some_and(|(t, _, _)| t == at));
        }
    }

    fn forget_all(&mut self) {
        self.generation += 1;
        self.kept.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

/// A `Store` whose `range` reads are shared by identical concurrent callers.
pub struct Coalesced {
    inner: Arc<dyn Store>,
    /// Lanes of keys with callers in progress, and how many (the last one out removes it).
    lanes: Mutex<HashMap<Key, (Arc<Lane>, usize)>>,
    recent: Mutex<Recent>,
    /// The retention policy the wrapped store applies, to age kept reads as it would.
    retention: std::sync::RwLock<Option<super::retention::Policy>>,
}

impl Coalesced {
    pub fn new(inner: Arc<dyn Store>) -> Coalesced {
        Coalesced {
            inner,
            lanes: Mutex::new(HashMap::new()),
            recent: Mutex::new(Recent::default()),
            retention: std::sync::RwLock::new(None),
        }
    }

    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Coalesced::new(inner))
    }

    /// Whether a kept read holds a publication its room's `history_ttl` now trims.
    fn aged(&self, room: &str, msgs: &[Message]) -> bool {
        let Some(policy) = self.retention.read().expect("retention lock").clone() else {
            return false;
        };
        let floor = policy(room).ts_floor(super::writer::now_ms());
        msgs.iter().any(|m| m.ts_ms < floor)
    }

    async fn shared_range(&self, room: &str, range: Range) -> Arc<Outcome> {
        let key: Key = (room.to_owned(), range.since, range.limit, range.reverse);
        let kept = self
            .recent
            .lock()
            .expect("recent lock")
            .get(&key, Instant::now());
        if let Some(outcome) = kept {
            // The room's position now, after this call began: unchanged means nothing was
            // committed since the kept read, so it is what a fresh read would return.
            if let (Ok(now), Ok(read)) = (self.inner.position(room).await, &*outcome) {
                if now == read.1 && !self.aged(room, &read.0) {
                    return outcome;
                }
            }
        }
        let lane = {
            let mut lanes = self.lanes.lock().expect("lanes lock");
            let entry = lanes.entry(key.clone()).or_default();
            entry.1 += 1;
            entry.0.clone()
        };
        // Leaves the lane on every way out, cancellation included.
        let _leave = Leave {
            owner: self,
            key: key.clone(),
            lane: lane.clone(),
        };
        let ticket = {
            let mut t = lane.tickets.lock().expect("tickets lock");
            *t += 1;
            *t - 1
        };
        let _reading = lane.reading.lock().await;
        if let Some((started_at, outcome)) = &*lane.last.lock().expect("last lock") {
            if ticket < *started_at {
                return outcome.clone();
            }
        }
        let started_at = *lane.tickets.lock().expect("tickets lock");
        let generation = self.recent.lock().expect("recent lock").generation;
        let outcome = Arc::new(self.inner.range(room, range).await.map(Arc::new));
        *lane.last.lock().expect("last lock") = Some((started_at, outcome.clone()));
        self.recent
            .lock()
            .expect("recent lock")
            .keep(key, outcome.clone(), generation);
        outcome
    }
}

/// Drops a caller's hold on its lane; the last caller removes the lane.
struct Leave<'a> {
    owner: &'a Coalesced,
    key: Key,
    lane: Arc<Lane>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut lanes = self.owner.lanes.lock().expect("lanes lock");
        if let Some((lane, users)) = lanes.get_mut(&self.key) {
            if Arc::ptr_eq(lane, &self.lane) {
                *users -= 1;
                if *users == 0 {
                    lanes.remove(&self.key);
                }
            }
        }
    }
}

/// An error for each sharer (the backend's errors carry only text).
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Backend(s) => StoreError::Backend(s.clone()),
        StoreError::Closed => StoreError::Closed,
        StoreError::Damaged(s) => StoreError::Damaged(s.clone()),
    }
}

#[async_trait]
impl Store for Coalesced {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.inner.append(msg).await
    }

    async fn append_batch(&self, msgs: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        self.inner.append_batch(msgs).await
    }

    async fn range(
        &self,
        room: &str,
        range: Range,
    ) -> Result<(Vec<Message>, Position), StoreError> {
        match &*self.shared_range(room, range).await {
            Ok(read) => Ok((read.0.clone(), read.1.clone())),
            Err(e) => Err(copy_error(e)),
        }
    }

    async fn range_shared(&self, room: &str, range: Range) -> Result<Read, StoreError> {
        match &*self.shared_range(room, range).await {
            Ok(read) => Ok(read.clone()),
            Err(e) => Err(copy_error(e)),
        }
    }

    async fn position(&self, room: &str) -> Result<Position, StoreError> {
        self.inner.position(room).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready().await
    }

    fn set_retention(&self, policy: super::retention::Policy) {
        *self.retention.write().expect("retention lock") = Some(policy.clone());
        self.inner.set_retention(policy);
        self.recent.lock().expect("recent lock").forget_all();
    }

    async fn delete(&self, room: &str, offset: u64) -> Result<Option<Message>, StoreError> {
        let out = self.inner.delete(room, offset).await;
        // After the change and before the caller announces it (see the module's note).
        self.recent.lock().expect("recent lock").forget_all();
        out
    }

    async fn clear(&self, room: &str) -> Result<u64, StoreError> {
        let out = self.inner.clear(room).await;
        self.recent.lock().expect("recent lock").forget_all();
        out
    }
}

/// The chat tables are not coalesced: straight to the wrapped store.
#[async_trait]
impl super::ChatStore for Coalesced {
    async fn add_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
        self.inner.add_members(room, users).await
    }
    async fn remove_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
        self.inner.remove_members(room, users).await
    }
    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.members(room, after, limit).await
    }
    async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.inner.is_member(room, user).await
    }
    async fn set_cursor(
        &self,
        user: &str,
        room: &str,
        offset: u64,
    ) -> Result<super::Cursor, StoreError> {
        self.inner.set_cursor(user, room, offset).await
    }
    async fn cursor(&self, user: &str, room: &str) -> Result<super::Cursor, StoreError> {
        self.inner.cursor(user, room).await
    }
    async fn unread_total(&self, user: &str) -> Result<(u64, u64), StoreError> {
        self.inner.unread_total(user).await
    }
    async fn rooms(
        &self,
        user: &str,
        after: Option<&super::RoomsAfter>,
        limit: usize,
    ) -> Result<Vec<super::RoomEntry>, StoreError> {
        self.inner.rooms(user, after, limit).await
    }
}

/// The notifier's cursors, not coalesced: straight to the wrapped store.
#[async_trait]
impl super::NotifyStore for Coalesced {
    async fn notify_claim(
        &self,
        room: &str,
        node: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.notify_claim(room, node, now_ms, until_ms).await
    }
    async fn notify_advance(
        &self,
        room: &str,
        node: &str,
        offset: u64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        self.inner
            .notify_advance(room, node, offset, until_ms)
            .await
    }
    async fn notify_release(&self, room: &str, node: &str) -> Result<(), StoreError> {
        self.inner.notify_release(room, node).await
    }
    async fn notify_backlog(
        &self,
        ns: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.notify_backlog(ns, after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::msg;
    use crate::store::sqlite::SqliteStore;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    crate::store_conformance!(
        coalesced_sqlite_store_conformance,
        tempfile::tempdir().unwrap(),
        |dir, n| {
            let (s, c) = SqliteStore::open(
                &dir.path().join(format!("{n}.db")),
                Duration::from_secs(300),
            )
            .unwrap();
            (Coalesced::new(Arc::new(s)), c)
        }
    );

    /// A store that counts its range reads and makes each take 50 ms.
    struct Slow {
        inner: Arc<dyn Store>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl Store for Slow {
        async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
            self.inner.append(m).await
        }
        async fn range(
            &self,
            room: &str,
            r: Range,
        ) -> Result<(Vec<Message>, Position), StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let out = self.inner.range(room, r).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            out
        }
        async fn position(&self, room: &str) -> Result<Position, StoreError> {
            self.inner.position(room).await
        }
        async fn delete(&self, room: &str, offset: u64) -> Result<Option<Message>, StoreError> {
            self.inner.delete(room, offset).await
        }
        async fn close(&self) {
            self.inner.close().await;
        }
        async fn ready(&self) -> Result<(), StoreError> {
            self.inner.ready().await
        }
    }

    #[async_trait]
    impl crate::store::ChatStore for Slow {
        async fn add_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
            self.inner.add_members(room, users).await
        }
        async fn remove_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
            self.inner.remove_members(room, users).await
        }
        async fn members(
            &self,
            room: &str,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<String>, StoreError> {
            self.inner.members(room, after, limit).await
        }
        async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
            self.inner.is_member(room, user).await
        }
        async fn set_cursor(
            &self,
            user: &str,
            room: &str,
            offset: u64,
        ) -> Result<crate::store::Cursor, StoreError> {
            self.inner.set_cursor(user, room, offset).await
        }
        async fn cursor(&self, user: &str, room: &str) -> Result<crate::store::Cursor, StoreError> {
            self.inner.cursor(user, room).await
        }
        async fn unread_total(&self, user: &str) -> Result<(u64, u64), StoreError> {
            self.inner.unread_total(user).await
        }
        async fn rooms(
            &self,
            user: &str,
            after: Option<&crate::store::RoomsAfter>,
            limit: usize,
        ) -> Result<Vec<crate::store::RoomEntry>, StoreError> {
            self.inner.rooms(user, after, limit).await
        }
    }

    #[async_trait]
    impl crate::store::NotifyStore for Slow {
        async fn notify_claim(
            &self,
            room: &str,
            node: &str,
            now_ms: i64,
            until_ms: i64,
        ) -> Result<Option<u64>, StoreError> {
            self.inner.notify_claim(room, node, now_ms, until_ms).await
        }
        async fn notify_advance(
            &self,
            room: &str,
            node: &str,
            offset: u64,
            until_ms: i64,
        ) -> Result<bool, StoreError> {
            self.inner
                .notify_advance(room, node, offset, until_ms)
                .await
        }
        async fn notify_release(&self, room: &str, node: &str) -> Result<(), StoreError> {
            self.inner.notify_release(room, node).await
        }
        async fn notify_backlog(
            &self,
            ns: &str,
            after: &str,
            limit: usize,
        ) -> Result<Vec<String>, StoreError> {
            self.inner.notify_backlog(ns, after, limit).await
        }
    }

    fn slow_sqlite(dir: &tempfile::TempDir) -> Arc<Slow> {
        let (s, _c) =
            SqliteStore::open(&dir.path().join("m.db"), Duration::from_secs(300)).unwrap();
        Arc::new(Slow {
            inner: Arc::new(s),
            reads: AtomicUsize::new(0),
        })
    }

    const FROM_1: Range = Range {
        since: Some(1),
        limit: 100,
        reverse: false,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identical_concurrent_reads_share_a_few_reads() {
        let dir = tempfile::tempdir().unwrap();
        let slow = slow_sqlite(&dir);
        let store = Coalesced::wrap(slow.clone());
        for i in 0..5 {
            store.append(msg("r", &i.to_string(), None)).await.unwrap();
        }
        let calls: Vec<_> = (0..100)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.range("r", FROM_1).await.unwrap() })
            })
            .collect();
        for c in calls {
            let (msgs, pos) = c.await.unwrap();
            assert_eq!(msgs.len(), 4);
            assert_eq!(pos.offset, 5);
        }
        // The first read, then (at most) one more for everyone who came while it ran.
        let reads = slow.reads.load(Ordering::SeqCst);
        assert!(reads <= 3, "{reads} reads for 100 identical calls");
        assert!(store
            .range(
                "r",
                Range {
                    since: Some(3),
                    ..FROM_1
                }
            )
            .await
            .is_ok());
        assert_eq!(
            slow.reads.load(Ordering::SeqCst),
            reads + 1,
            "other keys read alone"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_never_gets_a_read_that_began_before_it_called() {
        let dir = tempfile::tempdir().unwrap();
        let slow = slow_sqlite(&dir);
        let store = Coalesced::wrap(slow.clone());
        store.append(msg("r", "1", None)).await.unwrap();
        let early = {
            let s = store.clone();
            tokio::spawn(async move { s.range("r", FROM_1).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await; // the early read is running
        store.append(msg("r", "2", None)).await.unwrap();
        let (late, pos) = store.range("r", FROM_1).await.unwrap();
        assert_eq!(
            (late.len(), pos.offset),
            (1, 2),
            "the late caller sees offset 2"
        );
        let (early, _) = early.await.unwrap();
        assert!(early.len() <= 1);
        assert_eq!(slow.reads.load(Ordering::SeqCst), 2);
        assert!(store.clone().range("r", FROM_1).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_read_serves_later_calls_only_while_the_room_stays_put() {
        let dir = tempfile::tempdir().unwrap();
        let slow = slow_sqlite(&dir);
        let store = Coalesced::wrap(slow.clone());
        store.append(msg("r", "1", None)).await.unwrap();
        store.append(msg("r", "2", None)).await.unwrap();
        // One read, then callers one after another (never overlapping) share it.
        for _ in 0..10 {
            let (msgs, pos) = store.range("r", FROM_1).await.unwrap();
            assert_eq!((msgs.len(), pos.offset), (1, 2));
        }
        assert_eq!(
            slow.reads.load(Ordering::SeqCst),
            1,
            "later calls share the kept read"
        );
        // A commit moves the room: the next call reads again and sees it.
        store.append(msg("r", "3", None)).await.unwrap();
        let (msgs, pos) = store.range("r", FROM_1).await.unwrap();
        assert_eq!((msgs.len(), pos.offset), (2, 3));
        assert_eq!(slow.reads.load(Ordering::SeqCst), 2);
        // A deletion does not move the position, yet the next call sees the tombstone.
        store.delete("r", 2).await.unwrap();
        let (msgs, _) = store.range("r", FROM_1).await.unwrap();
        assert_eq!(
            msgs[0].tombstone,
            Some(2),
            "a kept read never hides a deletion"
        );
        assert_eq!(slow.reads.load(Ordering::SeqCst), 3);
        // And a kept read ages out.
        tokio::time::sleep(RECENT_TTL + Duration::from_millis(50)).await;
        store.range("r", FROM_1).await.unwrap();
        assert_eq!(
            slow.reads.load(Ordering::SeqCst),
            4,
            "past its time it is read again"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_began_before_a_deletion_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let slow = slow_sqlite(&dir);
        let store = Coalesced::wrap(slow.clone());
        store.append(msg("r", "1", None)).await.unwrap();
        store.append(msg("r", "2", None)).await.unwrap();
        let early = {
            let s = store.clone();
            tokio::spawn(async move { s.range("r", FROM_1).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await; // the early read is running
        store.delete("r", 2).await.unwrap();
        early.await.unwrap();
        let (msgs, _) = store.range("r", FROM_1).await.unwrap();
        assert_eq!(msgs[0].tombstone, Some(2));
        assert_eq!(slow.reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn kept_reads_are_bounded_in_count_and_bytes() {
        let read = |n: usize, size: usize| -> Arc<Outcome> {
            let m = Message {
                room: "r".into(),
                offset: 1,
                uid: String::new(),
                user: String::new(),
                client: String::new(),
                data: serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(size)))
                    .unwrap(),
                info: None,
                ts_ms: 0,
                tombstone: None,
            };
            let pos = Position {
                offset: 1,
                epoch: "e".into(),
            };
            Arc::new(Ok(Arc::new((vec![m; n], pos))))
        };
        let mut recent = Recent::default();
        for i in 0..RECENT_KEYS + 100 {
            recent.keep((i.to_string(), None, 1, false), read(1, 10), 0);
            assert!(recent.order.len() <= 2 * RECENT_KEYS + 1);
        }
        assert_eq!(recent.kept.len(), RECENT_KEYS);
        // The oldest went first.
        let now = Instant::now();
        assert!(recent.get(&("0".into(), None, 1, false), now).is_none());
        assert!(recent
            .get(&((RECENT_KEYS + 99).to_string(), None, 1, false), now)
            .is_some());
        // Bytes: reads of ~1 MiB each, at most RECENT_BYTES kept.
        for i in 0..100 {
            recent.keep((format!("b{i}"), None, 1, false), read(1, 1 << 20), 0);
            assert!(recent.bytes <= RECENT_BYTES);
        }
        // A hot key kept again and again does not grow the order queue without bound.
        for _ in 0..5 * RECENT_KEYS {
            recent.keep(("hot".into(), None, 1, false), read(1, 10), 0);
        }
        assert!(recent.order.len() <= 2 * RECENT_KEYS + 1);
        // One read bigger than a quarter of the budget is not kept at all; nor is one made
        // under an older generation.
        recent.keep(("big".into(), None, 1, false), read(9, 1 << 20), 0);
        assert!(recent.get(&("big".into(), None, 1, false), now).is_none());
        recent.forget_all();
        assert_eq!((recent.kept.len(), recent.bytes), (0, 0));
        recent.keep(("old".into(), None, 1, false), read(1, 10), 0);
        assert!(
            recent.kept.is_empty(),
            "a read begun before forget_all is not kept"
        );
    }
}
