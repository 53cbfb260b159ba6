//! Server-side refresh of connections and subscriptions through the refresh and
//! sub_refresh proxies: who is due when, the calls, and what each answer does.
//!
//! A session registers a connection (connect proxy result with `expire_at`) or a
//! subscription (subscribe proxy result with `expire_at`, namespace `proxy_sub_refresh`)
//! with its due time; one ticker (`run`, once a second) starts the calls of the entries
//! that are due, and applies each answer to the entry if it is still registered:
//!
//! - a new `expire_at` in the future: due again then; new connection `info` is left in
//!   the connection's `Refreshed` slot, which its session reads before its next command;
//! - `expired: true`, an `expire_at` already past, or an `error` answer: the connection is
//!   closed with 3005 "expired", the subscription unsubscribed with 2501 "subscription
//!   expired" (the session leaves the room when its outbox runs the item);
//! - `expire_at` 0: it no longer expires (the entry is dropped);
//! - a `disconnect` answer: the connection closes with it;
//! - the backend down, slow or answering garbage: due again in `RETRY`, as Centrifugo
//!   gives the connection one more minute rather than ending it for the backend's fault.
//!
//! Bounds: entries are at most one per connection plus one per subscription (the session
//! removes its own when they end); at most `max_calls` calls run at once (each also within
//! the proxies' own slots and timeout), the rest wait in the queue for a later tick.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use roomcast_proto::codes::unsubscribe;
use roomcast_proto::Disconnect;
use serde_json::value::RawValue;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Caller, Outcome, Proxies, RefreshProxyRequest, RefreshProxyResult};
use super::{ProxyError, SubRefreshProxyRequest};
use crate::auth::now_secs;
use crate::hub::{ConnId, Out, Outbox};

/// Seconds until a refresh the backend did not answer is tried again.
pub const RETRY: u64 = 60;

/// A connection's entry, or one of its subscriptions' (`Some(channel)`).
type Key = (ConnId, Option<Arc<str>>);

/// New connection info from the refresh proxy, for the session to take.
#[derive(Default)]
pub struct Refreshed {
    info: Mutex<Option<Box<RawValue>>>,
}

impl Refreshed {
    /// The info the backend sent since the last call, if any.
    pub fn take_info(&self) -> Option<Box<RawValue>> {
        self.info.lock().expect("refreshed lock").take()
    }
}

/// Who an entry refreshes, as the proxy request describes it.
#[derive(Clone)]
pub struct Subject {
    pub client: Arc<str>,
    pub user: Arc<str>,
    /// "json" or "protobuf".
    pub protocol: &'static str,
    pub outbox: Arc<Outbox>,
    /// Headers of the upgrade request forwarded to the backend (`proxy_http_headers`).
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
    /// The connection's slot for new info (connection entries only).
    pub refreshed: Option<Arc<Refreshed>>,
}

struct Entry {
    subject: Subject,
    due: u64,
}

#[derive(Default)]
struct Table {
    entries: HashMap<Key, Entry>,
    /// (due, key) of every entry not being called right now, soonest first.
    queue: BTreeSet<(u64, Key)>,
    /// Keys of each connection (its own and its subscriptions'), to forget them together.
    by_conn: HashMap<ConnId, Vec<Option<Arc<str>>>>,
}

/// The node's schedule of server-side refreshes.
pub struct Refresher {
    table: Mutex<Table>,
    /// Calls running now; at most `max_calls`.
    calls: AtomicUsize,
    max_calls: usize,
    max_data_depth: usize,
}

impl Refresher {
    pub fn new(max_calls: usize, max_data_depth: usize) -> Refresher {
        Refresher {
            table: Mutex::new(Table::default()),
            calls: AtomicUsize::new(0),
            max_calls: max_calls.max(1),
            max_data_depth,
        }
    }

    /// Refreshes the connection `conn` (`channel` `None`) or its subscription to
    /// `channel` at `due` (Unix seconds), replacing what it had.
    pub fn schedule(&self, conn: ConnId, channel: Option<Arc<str>>, subject: Subject, due: u64) {
        let mut t = self.table.lock().expect("refresher lock");
        let key = (conn, channel);
        if let Some(old) = t.entries.remove(&key) {
            t.queue.remove(&(old.due, key.clone()));
        } else {
            t.by_conn.entry(conn).or_default().push(key.1.clone());
        }
        t.queue.insert((due, key.clone()));
        t.entries.insert(key, Entry { subject, due });
    }

    /// Stops refreshing a subscription (unsubscribed).
    pub fn forget_sub(&self, conn: ConnId, channel: &str) {
        let mut t = self.table.lock().expect("refresher lock");
        let key: Key = (conn, Some(channel.into()));
        if let Some(e) = t.entries.remove(&key) {
            t.queue.remove(&(e.due, key.clone()));
            if let Some(keys) = t.by_conn.get_mut(&conn) {
                keys.retain(|k| k.as_deref() != Some(channel));
            }
        }
    }

    /// Stops refreshing a connection and its subscriptions (it is gone).
    pub fn forget(&self, conn: ConnId) {
        let mut t = self.table.lock().expect("refresher lock");
        for channel in t.by_conn.remove(&conn).unwrap_or_default() {
            let key = (conn, channel);
            if let Some(e) = t.entries.remove(&key) {
                t.queue.remove(&(e.due, key));
            }
        }
    }

    /// Entries registered (connections and subscriptions).
    pub fn len(&self) -> usize {
        self.table.lock().expect("refresher lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries due at `now` that may be called now (taken off the queue; they stay
    /// registered, so an answer finds them unless they were forgotten meanwhile).
    fn take_due(&self, now: u64) -> Vec<(Key, Subject)> {
        let mut t = self.table.lock().expect("refresher lock");
        let mut out = Vec::new();
        while self.calls.load(Ordering::Relaxed) + out.len() < self.max_calls {
            let Some((due, key)) = t.queue.first().cloned() else {
                break;
            };
            if due > now {
                break;
            }
            t.queue.pop_first();
            if let Some(e) = t.entries.get(&key) {
                out.push((key, e.subject.clone()));
            }
        }
        self.calls.fetch_add(out.len(), Ordering::Relaxed);
        out
    }

    /// Puts a called entry back on the queue at `due`, if it is still registered.
    fn requeue(&self, key: Key, due: u64) {
        let mut t = self.table.lock().expect("refresher lock");
        if let Some(e) = t.entries.get_mut(&key) {
            e.due = due;
            t.queue.insert((due, key));
        }
    }

    /// Drops a called entry; false when it was forgotten while being called (its
    /// connection or subscription is gone: the answer must not act on it).
    fn finish(&self, key: &Key) -> bool {
        let mut t = self.table.lock().expect("refresher lock");
        let Some(_) = t.entries.remove(key) else {
            return false;
        };
        if let Some(keys) = t.by_conn.get_mut(&key.0) {
            keys.retain(|k| k != &key.1);
        }
        true
    }

    /// Runs the ticker until `stop` is cancelled; calls go through `proxies`.
    pub async fn run(self: Arc<Self>, proxies: Arc<Proxies>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (key, subject) in self.take_due(now_secs()) {
                let (me, proxies) = (self.clone(), proxies.clone());
                tokio::spawn(async move {
                    let answer = me.call(&proxies, &key, &subject).await;
                    me.apply(key, &subject, answer);
                    me.calls.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }

    async fn call(
        &self,
        proxies: &Proxies,
        key: &Key,
        s: &Subject,
    ) -> Option<Result<Outcome<RefreshProxyResult>, ProxyError>> {
        let caller = Caller {
            client: &s.client,
            transport: "websocket",
            protocol: s.protocol,
            encoding: s.protocol,
        };
        match &key.1 {
            None => {
                let req = RefreshProxyRequest {
                    caller,
                    user: &s.user,
                };
                proxies.refresh(&req, &s.headers).await
            }
            Some(channel) => {
                let req = SubRefreshProxyRequest {
                    caller,
                    user: &s.user,
                    channel,
                };
                proxies.sub_refresh(&req, &s.headers).await
            }
        }
    }

    /// What an answer does to the entry (see the module doc).
    fn apply(
        &self,
        key: Key,
        s: &Subject,
        answer: Option<Result<Outcome<RefreshProxyResult>, ProxyError>>,
    ) {
        let now = now_secs();
        let expire = |me: &Refresher, key: &Key| {
            if !me.finish(key) {
                return;
            }
            match &key.1 {
                None => s.outbox.close(Disconnect::EXPIRED),
                Some(channel) => s.outbox.control(Out::Unsubscribe {
                    channel: channel.clone(),
                    code: unsubscribe::EXPIRED,
                }),
            }
        };
        let what = if key.1.is_some() {
            "sub_refresh"
        } else {
            "refresh"
        };
        match answer {
            Some(Ok(Outcome::Accept(mut r))) => {
                let info = match r.new_info(self.max_data_depth) {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::warn!(error = %e, "{what} proxy answered garbage info");
                        return self.requeue(key, now + RETRY);
                    }
                };
                if r.expired || (r.expire_at > 0 && r.expire_at <= now) {
                    return expire(self, &key);
                }
                if let (Some(info), Some(slot)) = (info, &s.refreshed) {
                    *slot.info.lock().expect("refreshed lock") = Some(info);
                }
                if r.expire_at == 0 {
                    self.finish(&key);
                } else {
                    self.requeue(key, r.expire_at);
                }
            }
            Some(Ok(Outcome::Refuse(code, _))) => {
                tracing::debug!(code = code.code, "{what} proxy refused: expired");
                expire(self, &key);
            }
            Some(Ok(Outcome::Disconnect(d))) => {
                if self.finish(&key) {
                    s.outbox.close(d);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "{what} proxy failed; asking again in {RETRY} s");
                self.requeue(key, now + RETRY);
            }
            // No such proxy (not configured): nothing to refresh with; never expires.
            None => {
                self.finish(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(outbox: &Arc<Outbox>, refreshed: Option<Arc<Refreshed>>) -> Subject {
        Subject {
            client: "c".into(),
            user: "u".into(),
            protocol: "json",
            outbox: outbox.clone(),
            headers: Vec::new().into(),
            refreshed,
        }
    }

    fn accept(
        expired: bool,
        expire_at: u64,
        info: Option<&str>,
    ) -> Option<Result<Outcome<RefreshProxyResult>, ProxyError>> {
        Some(Ok(Outcome::Accept(RefreshProxyResult {
            expired,
            expire_at,
            info: info.map(|i| RawValue::from_string(i.into()).unwrap()),
            b64info: None,
        })))
    }

    fn queued(r: &Refresher) -> Vec<(u64, Key)> {
        r.table.lock().unwrap().queue.iter().cloned().collect()
    }

    #[test]
    fn due_entries_are_taken_soonest_first_within_the_call_bound() {
        let r = Refresher::new(2, 64);
        let ob = Arc::new(Outbox::new(1 << 16));
        r.schedule(1, None, subject(&ob, None), 30);
        r.schedule(2, None, subject(&ob, None), 10);
        r.schedule(2, Some("a".into()), subject(&ob, None), 20);
        r.schedule(3, None, subject(&ob, None), 99);
        let keys: Vec<Key> = r.take_due(50).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![(2, None), (2, Some("a".into()))],
            "two calls at most"
        );
        assert!(r.take_due(50).is_empty(), "no slot until a call ends");
        r.calls.fetch_sub(2, Ordering::Relaxed);
        assert_eq!(r.take_due(50).len(), 1, "then the next due one");
        assert_eq!(queued(&r), vec![(99, (3, None))]);
        r.forget(2);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn answers_extend_update_info_or_expire() {
        let r = Refresher::new(8, 64);
        let now = now_secs();
        let ob = Arc::new(Outbox::new(1 << 16));
        let slot = Arc::new(Refreshed::default());
        let s = subject(&ob, Some(slot.clone()));
        r.schedule(1, None, s.clone(), now);
        let taken = r.take_due(now);
        assert_eq!(taken.len(), 1);
        r.apply((1, None), &s, accept(false, now + 100, Some(r#"{"v":2}"#)));
        assert_eq!(queued(&r), vec![(now + 100, (1, None))]);
        assert_eq!(slot.take_info().unwrap().get(), r#"{"v":2}"#);
        // Backend trouble: asked again a minute later, never closed for it.
        r.apply((1, None), &s, Some(Err(ProxyError::Garbage("x".into()))));
        assert_eq!(queued(&r)[0].0, now + RETRY);
        assert_eq!(ob.take(&mut Vec::new()), None);
        r.apply((1, None), &s, accept(true, 0, None));
        assert_eq!(ob.take(&mut Vec::new()), Some(Disconnect::EXPIRED));
        assert!(r.is_empty());
    }

    #[test]
    fn an_expired_subscription_is_unsubscribed_and_a_forgotten_one_left_alone() {
        let r = Refresher::new(8, 64);
        let ob = Arc::new(Outbox::new(1 << 16));
        let s = subject(&ob, None);
        r.schedule(1, Some("room".into()), s.clone(), 0);
        r.apply((1, Some("room".into())), &s, accept(false, 1, None)); // already past
        let mut out = Vec::new();
        assert_eq!(ob.take(&mut out), None);
        assert!(matches!(&out[..], [Out::Unsubscribe { channel, code }]
            if &**channel == "room" && *code == unsubscribe::EXPIRED));
        // Forgotten while its call ran: the answer does nothing.
        r.schedule(2, Some("room".into()), s.clone(), 0);
        r.forget_sub(2, "room");
        r.apply((2, Some("room".into())), &s, accept(true, 0, None));
        r.schedule(3, None, s.clone(), 0);
        r.forget(3);
        r.apply(
            (3, None),
            &s,
            Some(Ok(Outcome::Disconnect(Disconnect::FORCE_NO_RECONNECT))),
        );
        assert_eq!(ob.take(&mut out), None);
        assert_eq!(out.len(), 1, "nothing more");
        assert!(r.is_empty());
    }
}
