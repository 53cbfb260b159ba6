//! A connection's outbox: what the node has to send it, bounded in bytes.
//!
//! Hand-written rather than a tokio `mpsc` because the bound is in bytes, not messages,
//! and overflow must not wait: a connection that falls a full outbox behind is closed as
//! "slow" (its SDK reconnects and recovers from its last offset), its queued frames are
//! freed at once, and nobody else is delayed by it.
//!
//! Replies to the client's own commands have a budget of their own (`reply_max_bytes`,
//! larger than the fan-out limit: one history page may be megabytes): a client that
//! pipelines many large requests and does not read is closed as slow once its queued
//! replies pass it, so what it can pin is bounded.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use roomcast_proto::{Disconnect, Format, StreamPosition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::future::poll_fn;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Something for the connection task to do.
#[derive(Debug)]
pub enum Out {
    /// An encoded reply or push.
    Frame(Bytes),
    /// The server unsubscribes the connection from a channel.
    /// `code` is the push's (`roomcast_proto::codes::unsubscribe`).
    Unsubscribe { channel: Arc<str>, code: u32 },
    /// The server subscribes the connection to a channel (server API `subscribe`).
    Subscribe(Arc<ServerSubscribe>),
    /// The server sets when the connection expires (server API `refresh`): Unix seconds,
    /// `None` for never; `info` replaces the connection's info when given.
    Refresh {
        expire_at: Option<u64>,
        info: Option<Box<RawValue>>,
    },
}

/// A server-side subscription asked through the server API (`subscribe`): what the
/// user's connections subscribe to, and how.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerSubscribe {
    pub channel: String,
    /// Recover from this position (`recover_since`): the subscribe push carries what was
    /// missed since, as a client's own recovering subscribe would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_since: Option<StreamPosition>,
    /// Channel info of this subscription (in presence and join/leave), the API's `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
    /// Namespace options overridden for this subscription (the API's `override`).
    #[serde(default)]
    pub overrides: SubOverrides,
}

/// The namespace options a server-side subscription may override (`None`: as the
/// namespace says).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct SubOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_push_join_leave: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_positioning: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_recovery: Option<bool>,
}

#[derive(Default)]
struct State {
    /// In order; only ever appended to and taken whole, so a `Vec` (taken by a swap).
    queue: Vec<Out>,
    /// Bytes of the fan-out frames in `queue`.
    bytes: usize,
    /// Bytes of the replies in `queue`.
    reply_bytes: usize,
    /// Set once: the connection must be closed with this code.
    close: Option<Disconnect>,
}

pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the connection task when there is something to send. One waiter only (the
    /// connection's task), so an `AtomicWaker` rather than a `Notify` and its waiter node.
    waker: AtomicWaker,
    max_bytes: usize,
    /// Reply bytes queued before the connection is closed as slow.
    max_reply_bytes: usize,
    /// The format every frame put here is encoded in (the connection's, fixed at the
    /// handshake): the hub encodes a push once per format and puts each outbox's.
    format: Format,
}

/// Reply budget of an outbox built with `new`.
pub const DEFAULT_MAX_REPLY_BYTES: usize = 64 << 20;

/// Control items (unsubscribes) a connection may have queued before it is closed.
const MAX_CONTROL: usize = 256;

impl Outbox {
    pub fn new(max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            max_bytes,
            max_reply_bytes: DEFAULT_MAX_REPLY_BYTES,
            format: Format::Json,
        }
    }

    /// Sets the format of the frames this outbox carries (JSON by default).
    pub fn with_format(mut self, format: Format) -> Outbox {
        self.format = format;
        self
    }

    /// The format of the frames this outbox carries.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Sets the reply budget (see the module doc).
    pub fn with_reply_limit(mut self, max_reply_bytes: usize) -> Outbox {
        self.max_reply_bytes = max_reply_bytes;
        self
    }

    /// Closes as slow and frees the backlog. Caller holds the lock and wakes the task.
    fn overflow(s: &mut State) {
        if s.close.is_none() {
            if let Some(m) = crate::metrics::get() {
                m.slow_closes.inc();
            }
        }
        s.close = Some(Disconnect::SLOW);
        s.queue = Vec::new();
        s.bytes = 0;
        s.reply_bytes = 0;
    }

    /// Queues a reply to one of the client's own commands. Replies do not count against
    /// the fan-out byte limit: each is bounded by what the client asked for (history by
    /// `history_max_bytes`, recovery by `recovery_max_bytes`), and the connection reads no
    /// further commands while its writes are backed up. They count against the reply
    /// budget: past it (many large requests read in one go, none of the replies read by
    /// the client) the outbox is closed as slow and its backlog freed. A closed outbox
    /// takes nothing.
    pub fn push_reply(&self, frame: Bytes) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.close.is_some() {
            return;
        }
        if s.reply_bytes + frame.len() > self.max_reply_bytes {
            Self::overflow(&mut s);
            drop(s);
            self.waker.wake();
            return;
        }
        s.reply_bytes += frame.len();
        let was_empty = s.queue.is_empty();
        s.queue.push(Out::Frame(frame));
        drop(s);
        if was_empty {
            self.waker.wake();
        }
    }

    /// Queues a frame the node sends on its own (fan-out, pings). Returns false, and closes
    /// the outbox as slow, when the frame would take the queued fan-out over the byte
    /// limit; a closed outbox takes nothing.
    pub fn push(&self, frame: Bytes) -> bool {
        let mut s = self.state.lock().expect("outbox lock");
        if s.close.is_some() {
            return false;
        }
        let was_empty = s.queue.is_empty();
        let queued = self.queue_frame(&mut s, frame);
        drop(s);
        if !queued || was_empty {
            self.waker.wake();
        }
        queued
    }

    /// `push` of several frames in order under one lock and at most one wake-up: a fan-out
    /// lane that has fallen behind writes a run of publications to each connection at once,
    /// so the connection's (cache-cold) outbox is touched once per run, not per frame.
    /// Stops at the first frame `push` would refuse; returns how many were queued.
    pub fn push_many(&self, frames: &[Bytes]) -> u64 {
        let mut s = self.state.lock().expect("outbox lock");
        if s.close.is_some() {
            return 0;
        }
        let was_empty = s.queue.is_empty();
        let mut queued = 0;
        let mut refused = false;
        for frame in frames {
            if !self.queue_frame(&mut s, frame.clone()) {
                refused = true;
                break;
            }
            queued += 1;
        }
        drop(s);
        if refused || (was_empty && queued > 0) {
            self.waker.wake();
        }
        queued
    }

    /// Queues one fan-out frame under the lock: false, with the outbox closed as slow and
    /// its backlog freed, when the frame would take the queued fan-out over the byte limit.
    fn queue_frame(&self, s: &mut State, frame: Bytes) -> bool {
        if s.bytes + frame.len() > self.max_bytes {
            Self::overflow(s);
            return false;
        }
        s.bytes += frame.len();
        s.queue.push(Out::Frame(frame));
        true
    }

    /// Bytes queued and not yet taken (fan-out and replies), for `/metrics`.
    pub fn queued_bytes(&self) -> usize {
        let s = self.state.lock().expect("outbox lock");
        s.bytes + s.reply_bytes
    }

    /// Queues a control item.
    pub fn control(&self, item: Out) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.close.is_some() {
            return;
        }
        if s.queue.len() >= MAX_CONTROL && !matches!(item, Out::Frame(_)) {
            Self::overflow(&mut s);
        } else {
            s.queue.push(item);
        }
        drop(s);
        self.waker.wake();
    }

    /// Asks the connection to close with `why` after what is already queued. The first
    /// reason given wins.
    pub fn close(&self, why: Disconnect) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.close.is_none() {
            s.close = Some(why);
        }
        drop(s);
        self.waker.wake();
    }

    /// Ready when the outbox is closed or, when `frames` is true, has something queued.
    /// (A connection whose socket is not keeping up waits with `frames` false: it takes no
    /// more until it has written what it has, but still learns at once that it must close.)
    pub fn poll_wait(&self, cx: &mut Context<'_>, frames: bool) -> Poll<()> {
        // Register first, then look: a push between the two still wakes us.
        self.waker.register(cx.waker());
        let s = self.state.lock().expect("outbox lock");
        if (frames && !s.queue.is_empty()) || s.close.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// `poll_wait` as a future.
    pub async fn wait(&self, frames: bool) {
        poll_fn(|cx| self.poll_wait(cx, frames)).await;
    }

    /// Takes everything queued, and the close reason if one is set. After a slow close the
    /// queue is already empty: nothing of a slow connection's backlog is written.
    pub fn take(&self, into: &mut Vec<Out>) -> Option<Disconnect> {
        let mut s = self.state.lock().expect("outbox lock");
        if into.is_empty() {
            // The whole queue at once (no copy per item); `into`'s spare room becomes the
            // queue's.
            std::mem::swap(into, &mut s.queue);
        } else {
            into.append(&mut s.queue);
        }
        s.bytes = 0;
        s.reply_bytes = 0;
        if s.queue.capacity() > 64 {
            s.queue.shrink_to(16);
        }
        s.close.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_as_slow_and_frees_the_backlog() {
        let o = Outbox::new(10);
        assert!(o.push(Bytes::from_static(b"12345")));
        assert!(o.push(Bytes::from_static(b"12345")));
        assert!(!o.push(Bytes::from_static(b"1")));
        let mut out = Vec::new();
        assert_eq!(o.take(&mut out), Some(Disconnect::SLOW));
        assert!(out.is_empty());
        assert!(!o.push(Bytes::from_static(b"1")));
    }

    #[test]
    fn push_many_queues_in_order_and_stops_at_the_bound_as_slow() {
        let o = Outbox::new(10);
        let f = |b: &'static [u8]| Bytes::from_static(b);
        assert_eq!(o.push_many(&[f(b"123"), f(b"456")]), 2);
        let mut out = Vec::new();
        assert_eq!(o.take(&mut out), None);
        assert!(matches!(&out[0], Out::Frame(b) if &b[..] == b"123"));
        assert!(matches!(&out[1], Out::Frame(b) if &b[..] == b"456"));
        assert_eq!(o.push_many(&[]), 0);
        // 4 + 4 fit in 10, the third does not: two queued, then closed as slow, freed.
        assert_eq!(o.push_many(&[f(b"aaaa"), f(b"bbbb"), f(b"cccc")]), 2);
        out.clear();
        assert_eq!(o.take(&mut out), Some(Disconnect::SLOW));
        assert!(out.is_empty());
        assert_eq!(o.push_many(&[f(b"x")]), 0, "nothing after the close");
    }

    #[tokio::test]
    async fn push_many_wakes_a_waiting_connection_once_it_queues() {
        let o = Arc::new(Outbox::new(100));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.wait(true).await });
        tokio::task::yield_now().await;
        o.push_many(&[Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    #[test]
    fn replies_do_not_count_against_the_limit() {
        let o = Outbox::new(10);
        o.push_reply(Bytes::from(vec![b'x'; 100]));
        assert!(o.push(Bytes::from_static(b"12345")));
        let mut out = Vec::new();
        assert_eq!(o.take(&mut out), None);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn replies_past_their_budget_close_as_slow() {
        let o = Outbox::new(10).with_reply_limit(150);
        o.push_reply(Bytes::from(vec![b'x'; 100]));
        let mut out = Vec::new();
        assert_eq!(o.take(&mut out), None);
        // Taken (written): the budget is free again.
        o.push_reply(Bytes::from(vec![b'x'; 100]));
        o.push_reply(Bytes::from(vec![b'x'; 100]));
        out.clear();
        assert_eq!(o.take(&mut out), Some(Disconnect::SLOW));
        assert!(out.is_empty());
    }

    #[test]
    fn take_returns_frames_in_order() {
        let o = Outbox::new(100);
        o.push(Bytes::from_static(b"a"));
        o.control(Out::Unsubscribe {
            channel: "c".into(),
            code: roomcast_proto::codes::unsubscribe::SERVER,
        });
        o.push(Bytes::from_static(b"b"));
        let mut out = Vec::new();
        assert_eq!(o.take(&mut out), None);
        assert!(matches!(&out[0], Out::Frame(b) if &b[..] == b"a"));
        assert!(matches!(&out[1], Out::Unsubscribe { .. }));
        assert!(matches!(&out[2], Out::Frame(b) if &b[..] == b"b"));
    }

    #[tokio::test]
    async fn ready_wakes_on_push_and_close() {
        let o = Arc::new(Outbox::new(100));
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.wait(true).await });
        tokio::task::yield_now().await;
        o.push(Bytes::from_static(b"x"));
        t.await.unwrap();
        let o = Arc::new(Outbox::new(100));
        let o2 = o.clone();
        let t = tokio::spawn(async move { o2.wait(true).await });
        o.close(Disconnect::SHUTDOWN);
        t.await.unwrap();
    }
}
