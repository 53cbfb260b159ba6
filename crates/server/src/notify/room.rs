//! One room under its lease: from the room's notifier cursor to its top, each
//! publication's offline members in batches, the cursor advanced (once per page of
//! publications, and with every lease renewal) to the last publication whose batches were
//! all acknowledged.
//!
//! A failed webhook request or directory lookup is retried with capped exponential
//! backoff, forever: the cursor stays behind it, so nothing after it in the room is
//! notified out of order and nothing is skipped. The lease is renewed with every retry
//! and at least every third of `notify_lease_secs` while batches go out, and the worker
//! gives the room up at once if another node took the lease over (it expired).

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::offline::OfflineScan;
use super::webhook::{idempotency_key, Backoff, Batch};
use super::Notifier;
use crate::personal::now_ms;
use crate::store::{Message, Range, StoreError};

/// Publications read from the store at once.
const PAGE: usize = 64;

/// Why a room's worker stopped early.
enum Stop {
    /// The node is draining.
    Draining,
    /// Another node holds the room's lease now.
    Lost,
}

/// The lease a worker holds on one room.
struct Held<'a> {
    room: &'a str,
    /// The cursor: every publication up to it is notified.
    done: u64,
    renewed: Instant,
}

impl Notifier {
    /// Notifies `room` from its cursor while this node can hold its lease; store errors
    /// are retried with backoff.
    pub(super) async fn process(&self, room: &Arc<str>, stop: &CancellationToken) {
        let mut backoff = Backoff::new(self.settings.retry_min, self.settings.retry_max);
        loop {
            match self.drain(room, stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "notifier store error; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    fn lease_until(&self) -> i64 {
        now_ms() + self.settings.lease.as_millis() as i64
    }

    async fn drain(&self, room: &str, stop: &CancellationToken) -> Result<(), StoreError> {
        let claimed = self
            .store
            .notify_claim(room, &self.node, now_ms(), self.lease_until())
            .await?;
        let Some(done) = claimed else {
            // Another node holds it: it notifies this room's new publications (see mod.rs).
            return Ok(());
        };
        let mut held = Held {
            room,
            done,
            renewed: Instant::now(),
        };
        loop {
            if stop.is_cancelled() {
                // Draining: what is done is written (each page); any node may go on at once.
                self.store.notify_release(room, &self.node).await?;
                return Ok(());
            }
            let range = Range {
                since: Some(held.done),
                limit: PAGE,
                reverse: false,
            };
            let (msgs, _) = self.store.range(room, range).await?;
            if msgs.is_empty() {
                self.store.notify_release(room, &self.node).await?;
                // Published while we held the lease? Then look again (see mod.rs).
                if self.store.position(room).await?.offset > held.done {
                    self.queue
                        .lock()
                        .expect("notify queue lock")
                        .push(&Arc::from(room));
                }
                return Ok(());
            }
            for m in &msgs {
                let max_age = self.settings.max_age.as_millis() as i64;
                if m.ts_ms >= now_ms() - max_age {
                    match self.publication(m, &mut held, stop).await {
                        Ok(()) => {}
                        Err(Stop::Draining) => {
                            // Keep what is done, then let any node take the room at once.
                            self.store
                                .notify_advance(room, &self.node, held.done, now_ms())
                                .await?;
                            self.store.notify_release(room, &self.node).await?;
                            return Ok(());
                        }
                        Err(Stop::Lost) => return Ok(()),
                    }
                }
                held.done = m.offset;
            }
            // One cursor write per page, not per publication: a crash repeats at most a
            // page's batches, with their keys.
            if !self
                .store
                .notify_advance(room, &self.node, held.done, self.lease_until())
                .await?
            {
                tracing::info!(room, "notifier lease taken over by another node");
                return Ok(());
            }
            held.renewed = Instant::now();
        }
    }

    /// Every batch of one publication, each acknowledged (retried until it is).
    async fn publication(
        &self,
        m: &Message,
        held: &mut Held<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Stop> {
        let sender = (!m.user.is_empty()).then_some(m.user.as_str());
        let mut scan = OfflineScan::new(&self.store, &self.directory, &m.room, sender);
        let mut backoff = Backoff::new(self.settings.retry_min, self.settings.retry_max);
        let mut pending: Vec<String> = Vec::new();
        let mut index = 0u32;
        let mut finished = false;
        while !finished {
            match scan.next_page().await {
                Ok(Some(users)) => pending.extend(users),
                Ok(None) => finished = true,
                Err(e) => {
                    tracing::warn!(room = %m.room, error = %e, "offline members unknown; retrying");
                    self.pause(&mut backoff, held, stop).await?;
                    continue;
                }
            }
            while pending.len() >= self.settings.batch_size || (finished && !pending.is_empty()) {
                let n = pending.len().min(self.settings.batch_size);
                let users: Vec<String> = pending.drain(..n).collect();
                let key = idempotency_key(&m.room, m.offset, index);
                let batch = Batch {
                    room: &m.room,
                    offset: m.offset,
                    publication_id: &m.uid,
                    sender,
                    batch: index,
                    users: &users,
                    idempotency_key: &key,
                };
                while let Err(e) = self.webhook.post(&batch).await {
                    if let Some(mt) = crate::metrics::get() {
                        mt.notify_failures.inc();
                    }
                    tracing::warn!(room = %m.room, offset = m.offset, error = %e, "notification webhook failed; retrying");
                    self.pause(&mut backoff, held, stop).await?;
                }
                if let Some(mt) = crate::metrics::get() {
                    mt.notify_requests.inc();
                    mt.notify_users.inc_by(users.len() as u64);
                }
                backoff.reset();
                index += 1;
                if held.renewed.elapsed() > self.settings.lease / 3 {
                    self.renew(held).await?;
                }
            }
        }
        Ok(())
    }

    /// Waits out a backoff step (unless draining), then renews the lease.
    async fn pause(
        &self,
        backoff: &mut Backoff,
        held: &mut Held<'_>,
        stop: &CancellationToken,
    ) -> Result<(), Stop> {
        tokio::select! {
            _ = stop.cancelled() => return Err(Stop::Draining),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
        self.renew(held).await
    }

    /// Renews the lease; `Lost` when another node took it. A store error keeps going (the
    /// lease may lapse, and a successor would resend with the same keys).
    async fn renew(&self, held: &mut Held<'_>) -> Result<(), Stop> {
        match self
            .store
            .notify_advance(held.room, &self.node, held.done, self.lease_until())
            .await
        {
            Ok(true) => {
                held.renewed = Instant::now();
                Ok(())
            }
            Ok(false) => Err(Stop::Lost),
            Err(e) => {
                tracing::warn!(room = held.room, error = %e, "notifier lease not renewed");
                Ok(())
            }
        }
    }
}
