//! The group-commit writer every store shares, and the `Store` front built on it.
//!
//! A store is a [`Backend`] (how one database commits a batch, reads a range, reports a
//! position and forgets old idempotency keys) driven by one writer task:
//!
//! - `append`/`append_batch` queue requests to the writer (bounded: callers wait when it
//!   is behind) and then wait for their results, so one sender's pipelined publishes and
//!   every concurrent sender's share one transaction and one fsync;
//! - unless nobody is committing and the backend commits within one poll (SQLite on a
//!   multi-threaded runtime, in `block_in_place`): then the caller commits its appends on
//!   its own task, under the same lock the writer task commits under. A publish is then
//!   answered without two hand-offs between tasks: on a node busy fanning out, each waited
//!   behind thousands of woken connection tasks (~50 ms each, measured in the 5,000-member
//!   room at 1,000/s, BENCHMARKS.md), and a publisher's next publishes waited for both;
//! - the writer takes everything queued (up to [`MAX_BATCH`]) and hands it to
//!   [`Backend::commit`], which assigns offsets inside its transaction;
//! - once the backend reports the batch durable, the writer builds the committed messages
//!   (moving the payloads, never copying them) and hands them to the dispatcher, in commit
//!   order, **before** it answers any append of the batch;
//! - `close` queues a stop behind every pending append, so they are all committed (or
//!   failed) first, then joins the writer task: nothing runs after `close` returns (the
//!   writer marks itself closed under its lock, so no caller commits on its own either).
//!
//! Reads do not pass through the writer; they go straight to the backend's readers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Mutex as AsyncMutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::retention::{Limits, Policy, Retention};
use super::{Appended, Committed, Message, NewMessage, Position, Range, Store, StoreError};

/// Most appends one transaction takes.
pub(crate) const MAX_BATCH: usize = 1024;
/// Appends waiting for the writer; callers wait (backpressure) beyond it.
const QUEUE: usize = 8192;
/// Committed batches waiting for the dispatcher.
const COMMITTED_QUEUE: usize = 1024;
/// How often expired idempotency keys are deleted.
const CLEANUP_EVERY: Duration = Duration::from_secs(30);

/// One append as the backend commits it: the message, with the parts the writer
/// prepares once (its unique id, its sender info as JSON).
pub struct Entry {
    pub msg: NewMessage,
    pub uid: String,
    /// `msg.info` serialized, stored as text.
    pub info_json: Option<String>,
}

/// One batch to commit.
pub struct Batch {
    pub entries: Vec<Entry>,
    /// The commit's timestamp (milliseconds since the Unix epoch), stored with each message.
    pub now_ms: i64,
    /// Idempotency keys created before this are forgotten.
    pub key_cutoff_ms: i64,
    /// The rooms of the batch that have retention limits: after its inserts the commit
    /// trims their oldest rows beyond the limits (at most `retention::TRIM_PER_ROOM`
    /// each), in the same transaction.
    pub trims: Vec<(String, Limits)>,
}

/// What a database must do to be a store. Everything else (queueing, batching, the
/// committed stream, close) is the writer's.
#[async_trait]
pub trait Backend: super::ChatStore + super::NotifyStore + Send + Sync + 'static {
    /// The writer's half: only the writer task holds it.
    type Committer: Committer;
    /// Reads part of a room's stream and its position in one consistent read, leaving
    /// out what `limits` trims (whether or not it is deleted yet). `since` offsets beyond
    /// `i64::MAX` mean "beyond the top".
    async fn range(
        &self,
        room: &str,
        range: Range,
        limits: Limits,
    ) -> Result<(Vec<Message>, Position), StoreError>;
    /// See `Store::delete`.
    async fn delete(&self, room: &str, offset: u64) -> Result<Option<Message>, StoreError>;
    /// Deletes the room's rows up to `top`, at most `limit` of them (the oldest); returns
    /// how many.
    async fn clear_some(&self, room: &str, top: u64, limit: i64) -> Result<u64, StoreError>;
    /// A room's current position.
    async fn position(&self, room: &str) -> Result<Position, StoreError>;
    /// Releases the read connections (after the writer stopped).
    async fn close_readers(&self) {}
    /// Whether the database takes writes (checked from a read connection, so the writer's
    /// queue is not delayed by it).
    async fn writable(&self) -> Result<(), StoreError>;
}

/// The writer's half of a backend.
#[async_trait]
pub trait Committer: Send + 'static {
    /// Whether `commit` completes in the poll that starts it (it never waits on another
    /// task), so a caller may commit on its own task: a commit it starts cannot be left
    /// half done by the caller's future being dropped.
    fn inline(&self) -> bool {
        false
    }
    /// A reason this append can never be stored, so it fails alone instead of failing
    /// its whole batch.
    fn refuse(&self, _msg: &NewMessage) -> Option<StoreError> {
        None
    }
    /// Commits the batch durably in one transaction, assigning each new message the
    /// room's next offset. Returns the batch (by value, so a blocking backend can move it
    /// to a thread) and one result per entry, in order (`duplicate` for a key seen within
    /// the TTL: nothing stored). Either everything is durable or nothing.
    async fn commit(&mut self, batch: Batch) -> (Batch, Result<Vec<Appended>, StoreError>);
    /// Deletes idempotency keys created before `cutoff_ms`.
    async fn cleanup(&mut self, cutoff_ms: i64) -> Result<(), StoreError>;
    /// The retention sweep of rooms that receive nothing: trims (as a commit does) the
    /// first `retention::SWEEP_ROOMS` rooms in name order after `after` whose `policy`
    /// has limits. Returns the last room visited, `None` once past the last room.
    async fn sweep(
        &mut self,
        after: String,
        policy: Policy,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError>;
}

/// The reply channel of one queued append.
type Reply = oneshot::Sender<Result<Appended, StoreError>>;

enum Request {
    Append(NewMessage, Reply),
    /// Everything queued before it is committed when it is answered.
    Close(oneshot::Sender<()>),
}

/// Rows `clear` deletes per transaction: a huge room is cleared in steps, each short.
const CLEAR_STEP: i64 = 10_000;

/// A store: a backend's readers plus the writer task that commits for it.
pub struct GroupStore<B: Backend> {
    backend: B,
    /// The retention policy, shared with the writer (reads filter, commits trim).
    retention: Arc<Retention>,
    /// Queue to the writer task (bounded: appends wait when the writer is behind).
    writer: mpsc::Sender<Request>,
    /// What commits: the writer task, or a caller committing its own appends inline.
    core: Arc<AsyncMutex<Writer<B::Committer>>>,
    /// The writer task, joined by `close` (taken then, so a second close returns at once).
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<B: Backend> GroupStore<B> {
    /// Starts the writer task (on the current Tokio runtime) for `committer` and returns
    /// the store and its committed-messages stream.
    pub(crate) fn start(
        backend: B,
        committer: B::Committer,
        idempotency_ttl: Duration,
    ) -> (GroupStore<B>, Committed) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (committed_tx, committed_rx) = mpsc::channel(COMMITTED_QUEUE);
        let retention = Arc::new(Retention::default());
        let writer = Writer {
            committer,
            retention: retention.clone(),
            swept_after: Some(String::new()),
            uids: Uids::new(),
            committed: committed_tx,
            idempotency_ttl,
            closed: false,
        };
        let core = Arc::new(AsyncMutex::new(writer));
        let task = tokio::spawn(run(core.clone(), rx));
        let store = GroupStore {
            backend,
            retention,
            writer: tx,
            core,
            task: Mutex::new(Some(task)),
        };
        (store, committed_rx)
    }

    /// Commits `msgs` on the caller's task if nothing else is committing and the backend
    /// commits inline; gives them back otherwise.
    async fn commit_here(
        &self,
        msgs: Vec<NewMessage>,
    ) -> Result<Vec<Result<Appended, StoreError>>, Vec<NewMessage>> {
        let Ok(mut w) = self.core.try_lock() else {
            return Err(msgs);
        };
        if w.closed || !w.committer.inline() {
            return Err(msgs);
        }
        // Answered without a channel: a wait for each of many answers would use up the
        // task's scheduling budget and send it to the back of the run queue. At most
        // `MAX_BATCH` per transaction, as the writer task commits.
        let mut out = Vec::with_capacity(msgs.len());
        let mut msgs = msgs;
        while !msgs.is_empty() {
            let rest = msgs.split_off(msgs.len().min(MAX_BATCH));
            out.extend(w.commit(std::mem::replace(&mut msgs, rest)).await);
        }
        drop(w);
        Ok(out)
    }

    /// Commits the appends here or queues them, in order, then waits for every result.
    async fn queue(&self, msgs: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        let msgs = match self.commit_here(msgs).await {
            Ok(done) => return done,
            Err(msgs) => msgs,
        };
        let mut waiting = Vec::with_capacity(msgs.len());
        for m in msgs {
            let (tx, rx) = oneshot::channel();
            let queued = self.writer.send(Request::Append(m, tx)).await.is_ok();
            waiting.push(queued.then_some(rx));
        }
        let mut out = Vec::with_capacity(waiting.len());
        for rx in waiting {
            out.push(match rx {
                Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
                None => Err(StoreError::Closed),
            });
        }
        out
    }
}

#[async_trait]
impl<B: Backend> Store for GroupStore<B> {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        let mut results = self.queue(vec![msg]).await;
        results.pop().unwrap_or(Err(StoreError::Closed))
    }

    async fn append_batch(&self, msgs: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        // Queued together, committed together.
        self.queue(msgs).await
    }

    async fn range(
        &self,
        room: &str,
        range: Range,
    ) -> Result<(Vec<Message>, Position), StoreError> {
        let limits = self.retention.limits(room);
        self.backend.range(room, range, limits).await
    }

    fn set_retention(&self, policy: Policy) {
        self.retention.set(policy);
    }

    async fn delete(&self, room: &str, offset: u64) -> Result<Option<Message>, StoreError> {
        if offset == 0 {
            return Ok(None);
        }
        let limits = self.retention.limits(room);
        // A trimmed publication is gone already: nothing to delete, whatever its row.
        let (found, _) = self
            .backend
            .range(
                room,
                Range {
                    since: Some(offset - 1),
                    limit: 1,
                    reverse: false,
                },
                limits,
            )
            .await?;
        if found.first().map(|m| m.offset) != Some(offset) {
            return Ok(None);
        }
        self.backend.delete(room, offset).await
    }

    async fn clear(&self, room: &str) -> Result<u64, StoreError> {
        // Up to the top as it is now: publications committed meanwhile stay.
        let top = self.backend.position(room).await?.offset;
        let mut removed = 0;
        loop {
            let n = self.backend.clear_some(room, top, CLEAR_STEP).await?;
            removed += n;
            if n < CLEAR_STEP as u64 {
                return Ok(removed);
            }
        }
    }

    async fn position(&self, room: &str) -> Result<Position, StoreError> {
        self.backend.position(room).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        self.backend.writable().await
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Request::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let task = self.task.lock().expect("writer task lock").take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "store writer task failed");
            }
        }
        self.backend.close_readers().await;
    }
}

/// The chat tables are read and written straight on the backend (not through the writer).
#[async_trait]
impl<B: Backend> super::ChatStore for GroupStore<B> {
    async fn add_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
        self.backend.add_members(room, users).await
    }
    async fn remove_members(&self, room: &str, users: &[String]) -> Result<u64, StoreError> {
        self.backend.remove_members(room, users).await
    }
    async fn members(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.backend.members(room, after, limit).await
    }
    async fn is_member(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.backend.is_member(room, user).await
    }
    async fn set_cursor(
        &self,
        user: &str,
        room: &str,
        offset: u64,
    ) -> Result<super::Cursor, StoreError> {
        self.backend.set_cursor(user, room, offset).await
    }
    async fn cursor(&self, user: &str, room: &str) -> Result<super::Cursor, StoreError> {
        self.backend.cursor(user, room).await
    }
    async fn unread_total(&self, user: &str) -> Result<(u64, u64), StoreError> {
        self.backend.unread_total(user).await
    }
    async fn rooms(
        &self,
        user: &str,
        after: Option<&super::RoomsAfter>,
        limit: usize,
    ) -> Result<Vec<super::RoomEntry>, StoreError> {
        self.backend.rooms(user, after, limit).await
    }
}

/// The notifier's cursors, straight on the backend (not through the writer).
#[async_trait]
impl<B: Backend> super::NotifyStore for GroupStore<B> {
    async fn notify_claim(
        &self,
        room: &str,
        node: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.backend
            .notify_claim(room, node, now_ms, until_ms)
            .await
    }
    async fn notify_advance(
        &self,
        room: &str,
        node: &str,
        offset: u64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        self.backend
            .notify_advance(room, node, offset, until_ms)
            .await
    }
    async fn notify_release(&self, room: &str, node: &str) -> Result<(), StoreError> {
        self.backend.notify_release(room, node).await
    }
    async fn notify_backlog(
        &self,
        ns: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.backend.notify_backlog(ns, after, limit).await
    }
}

/// What commits, behind the store's lock: the writer task takes it for each batch it
/// received, a caller committing inline for its own.
struct Writer<C> {
    committer: C,
    /// Whose limits each commit trims to, and the sweep applies.
    retention: Arc<Retention>,
    /// Where the next retention sweep resumes (`None`: start over from the first room).
    swept_after: Option<String>,
    /// Makes every message's unique id.
    uids: Uids,
    /// Where committed messages go, in commit order (bounded: the writer waits for the
    /// dispatcher rather than growing memory).
    committed: mpsc::Sender<Vec<Arc<Message>>>,
    idempotency_ttl: Duration,
    /// Set by the writer task on `close`: nothing commits after it.
    closed: bool,
}

/// The writer task: commits what is queued, batch by batch, under the store's lock.
async fn run<C: Committer>(core: Arc<AsyncMutex<Writer<C>>>, mut rx: mpsc::Receiver<Request>) {
    let mut last_cleanup = Instant::now();
    let mut batch = Vec::with_capacity(64);
    loop {
        // Wakes at least every `CLEANUP_EVERY`, so an idle store still forgets old keys
        // and sweeps retention.
        let waited = tokio::time::timeout(CLEANUP_EVERY, rx.recv_many(&mut batch, MAX_BATCH));
        if let Ok(0) = waited.await {
            break; // every sender gone: the store was dropped without close
        }
        let mut w = core.lock().await;
        if w.step(&mut batch, &mut last_cleanup).await {
            break;
        }
    }
    tracing::debug!("store writer stopped");
}

impl<C: Committer> Writer<C> {
    /// Commits one received batch (and cleans up when due); true once closed.
    async fn step(&mut self, batch: &mut Vec<Request>, last_cleanup: &mut Instant) -> bool {
        let mut closing = None;
        let mut msgs = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for req in batch.drain(..) {
            match req {
                Request::Append(m, reply) => {
                    msgs.push(m);
                    replies.push(reply);
                }
                Request::Close(reply) => closing = Some(reply),
            }
        }
        if !msgs.is_empty() {
            let results = self.commit(msgs).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        if last_cleanup.elapsed() > CLEANUP_EVERY {
            *last_cleanup = Instant::now();
            if let Err(e) = self.committer.cleanup(self.key_cutoff()).await {
                tracing::warn!(error = %e, "idempotency cleanup failed");
            }
            self.sweep().await;
        }
        match closing {
            Some(reply) => {
                self.closed = true;
                let _ = reply.send(());
                true
            }
            None => false,
        }
    }

    /// One step of the retention sweep (bounded: `retention::SWEEP_ROOMS` rooms).
    async fn sweep(&mut self) {
        let Some(policy) = self.retention.policy() else {
            return;
        };
        let after = self.swept_after.take().unwrap_or_default();
        match self.committer.sweep(after, policy, now_ms()).await {
            Ok(next) => self.swept_after = next,
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        }
    }

    fn key_cutoff(&self) -> i64 {
        now_ms() - self.idempotency_ttl.as_millis() as i64
    }

    /// Commits `msgs` in one transaction; one result per message, in order.
    async fn commit(&mut self, msgs: Vec<NewMessage>) -> Vec<Result<Appended, StoreError>> {
        let mut out: Vec<Option<Result<Appended, StoreError>>> = Vec::with_capacity(msgs.len());
        let mut entries = Vec::with_capacity(msgs.len());
        for msg in msgs {
            if let Some(e) = self.committer.refuse(&msg) {
                out.push(Some(Err(e)));
                continue;
            }
            out.push(None);
            let info_json = msg
                .info
                .as_ref()
                .map(|i| serde_json::to_string(i).expect("client info serializes"));
            entries.push(Entry {
                msg,
                uid: self.uids.next(),
                info_json,
            });
        }
        if !entries.is_empty() {
            let results = self.commit_entries(entries).await;
            let mut results = results.into_iter();
            for slot in out.iter_mut().filter(|r| r.is_none()) {
                *slot = results.next();
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
            .collect()
    }

    /// Commits entries the backend does not refuse; one result per entry, in order.
    async fn commit_entries(&mut self, entries: Vec<Entry>) -> Vec<Result<Appended, StoreError>> {
        let mut rooms = std::collections::HashSet::new();
        let trims: Vec<(String, Limits)> = entries
            .iter()
            .filter(|e| rooms.insert(e.msg.room.as_str()))
            .map(|e| (e.msg.room.clone(), self.retention.limits(&e.msg.room)))
            .filter(|(_, l)| !l.keeps_all())
            .collect();
        let batch = Batch {
            entries,
            now_ms: now_ms(),
            key_cutoff_ms: self.key_cutoff(),
            trims,
        };
        // The dispatcher's room is taken before the commit, so that once committed nothing
        // waits (a caller committing inline may be dropped at any wait: not between the
        // commit and handing its messages on).
        let permit = self.committed.reserve().await.ok();
        let started = std::time::Instant::now();
        let size = batch.entries.len();
        let (batch, outcome) = self.committer.commit(batch).await;
        if let Some(m) = crate::metrics::get() {
            m.store_commit(started.elapsed(), size);
        }
        match outcome {
            Ok(results) => {
                debug_assert_eq!(results.len(), batch.entries.len());
                let now = batch.now_ms;
                let fresh: Vec<Arc<Message>> = batch
                    .entries
                    .into_iter()
                    .zip(&results)
                    .filter(|(_, r)| !r.duplicate)
                    .map(|(e, r)| {
                        Arc::new(Message {
                            room: e.msg.room.into(),
                            offset: r.offset,
                            uid: e.uid,
                            user: e.msg.user,
                            client: e.msg.client,
                            data: e.msg.data,
                            info: e.msg.info,
                            ts_ms: now,
                            tombstone: None,
                        })
                    })
                    .collect();
                // Handed to the dispatcher before anyone is answered, so that they are
                // published in commit order.
                match permit {
                    Some(permit) if !fresh.is_empty() => permit.send(fresh),
                    Some(_) => {}
                    None => {
                        tracing::debug!("dispatcher gone; committed messages are in history only");
                    }
                }
                results.into_iter().map(Ok).collect()
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                let why = e.to_string();
                (0..size)
                    .map(|_| Err(StoreError::Backend(why.clone())))
                    .collect()
            }
        }
    }
}

/// Unique message ids in the UUID v4 format without a system call each: 122 random bits
/// drawn once per writer, with a counter folded into the low 64. Ids stay unique per
/// writer for 2^64 messages, and across writers (nodes, restarts) as random v4 ids do.
struct Uids {
    base: u128,
    next: u64,
}

impl Uids {
    fn new() -> Uids {
        Uids {
            base: uuid::Uuid::new_v4().as_u128(),
            next: 0,
        }
    }

    fn next(&mut self) -> String {
        self.next = self.next.wrapping_add(1);
        let bits = self.base ^ u128::from(self.next);
        uuid::Builder::from_random_bytes(bits.to_le_bytes())
            .into_uuid()
            .to_string()
    }
}

/// Server time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Clamps an offset or limit into the databases' signed 64-bit integers, so a client's
/// offset of 2^63 or more means "beyond the top" instead of wrapping around to negative.
pub(crate) fn big(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_distinct_v4_uuids() {
        let mut a = Uids::new();
        let mut b = Uids::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            for uid in [a.next(), b.next()] {
                let parsed = uuid::Uuid::parse_str(&uid).unwrap();
                assert_eq!(parsed.get_version_num(), 4);
                assert!(seen.insert(uid), "ids repeat");
            }
        }
    }

    #[test]
    fn big_clamps_instead_of_wrapping() {
        assert_eq!(big(5), 5);
        assert_eq!(big(1 << 63), i64::MAX);
        assert_eq!(big(u64::MAX), i64::MAX);
    }
}
