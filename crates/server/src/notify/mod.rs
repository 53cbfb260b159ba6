//! Offline notifications: for each publication in a room of a `notify_offline`
//! namespace, the room's members with no connection anywhere in the cluster are POSTed
//! to `notify_webhook_url` in signed batches, so a backend can send mobile pushes.
//!
//! **Resumes from the store, not from memory.** Each room has a durable notifier cursor
//! ("notified up to offset N", `store/notify.rs`), advanced only after the webhook
//! answered 2xx for every batch of the publication at N. The in-memory queue only says
//! where to look first; on start, every `notify_sweep_secs`, and whenever the queue
//! overflowed, the notifier reads the store's backlog (rooms whose top is beyond their
//! cursor) and resumes each from its cursor. A webhook outage holds the cursor back (the
//! batch is retried with capped exponential backoff, the same idempotency key each time);
//! a restart loses only the queue.
//!
//! **Exactly one node notifies a publication: the holder of its room's lease.** A room's
//! cursor row carries a lease (owner node, expiry). The node that stored a publication
//! (its dispatcher sees it committed) wakes its notifier, which takes the room's lease and
//! notifies from the cursor to the top, so normally the accepting node notifies what it
//! accepted. When another node holds the lease at that moment, that node notifies it
//! instead: on finishing, a lease holder releases the lease and then re-reads the room's
//! top, so a publication committed while it held the lease is picked up either by it
//! (the top moved) or by the accepting node (whose claim comes after the release). If the
//! holder dies, its lease expires after `notify_lease_secs` and any node's next sweep
//! takes the room over from the cursor; a node that drains releases its leases at once.
//! A holder that is slower than its lease (the lease is renewed with every attempt and
//! advance) can overlap with a successor for one batch: the webhook then sees a
//! duplicate, with the same idempotency key.
//!
//! Files: `mod.rs` (settings, the notifier and its loop), `room.rs` (one room under its
//! lease), `offline.rs` (who is offline), `webhook.rs` (the request, signature, key,
//! backoff), `queue.rs` (the bounded queue of rooms).

mod offline;
mod queue;
mod room;
pub mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::outbound::{parse_url, HttpClient};
use crate::personal::Directory;
use crate::store::{Message, Store};
use queue::Queue;
use webhook::Webhook;

/// Rooms notified at once (each room's publications in order, by one worker).
const WORKERS: usize = 8;
/// Rooms read per backlog query of a sweep.
const SWEEP_PAGE: usize = 500;
/// Most users one webhook request names.
pub const MAX_BATCH: usize = 10_000;

/// What the notifier reads of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_size: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub queue_max: usize,
    pub lease: Duration,
    pub sweep: Duration,
    pub max_age: Duration,
    /// Namespaces with `notify_offline` ("" for the default one).
    pub namespaces: HashSet<String>,
}

impl Settings {
    /// The notifier's settings, `None` when no namespace has `notify_offline`; an error
    /// says which option cannot run.
    pub fn from_config(c: &Config) -> Result<Option<Settings>, String> {
        let namespaces: HashSet<String> = std::iter::once(("", &c.default_namespace))
            .chain(c.namespaces.iter().map(|(k, v)| (k.as_str(), v)))
            .filter(|(_, o)| o.notify_offline)
            .map(|(k, _)| k.to_owned())
            .collect();
        if namespaces.is_empty() {
            return Ok(None);
        }
        let Some(url) = c.notify_webhook_url.as_deref() else {
            return Err("a namespace has notify_offline but notify_webhook_url is unset".into());
        };
        parse_url(url).map_err(|e| format!("notify_webhook_url: {e}"))?;
        if c.notify_webhook_secret.as_deref().unwrap_or("").is_empty() {
            return Err("notify_offline needs notify_webhook_secret (requests are signed)".into());
        }
        if c.notify_batch_size == 0 || c.notify_batch_size > MAX_BATCH {
            return Err(format!("notify_batch_size must be 1 to {MAX_BATCH}"));
        }
        if c.notify_timeout_ms == 0
            || c.notify_retry_min_ms == 0
            || c.notify_retry_min_ms > c.notify_retry_max_ms
            || c.notify_queue_max == 0
            || c.notify_sweep_secs == 0
        {
            return Err("notify_timeout_ms, notify_retry_min_ms, notify_queue_max and notify_sweep_secs must be at least 1, and notify_retry_min_ms at most notify_retry_max_ms".into());
        }
        // A holder must be able to finish one attempt and renew within its lease.
        if c.notify_lease_secs * 1000 <= c.notify_timeout_ms.max(c.notify_retry_max_ms) {
            return Err(
                "notify_lease_secs must be longer than notify_timeout_ms and notify_retry_max_ms"
                    .into(),
            );
        }
        Ok(Some(Settings {
            batch_size: c.notify_batch_size,
            retry_min: Duration::from_millis(c.notify_retry_min_ms),
            retry_max: Duration::from_millis(c.notify_retry_max_ms),
            queue_max: c.notify_queue_max,
            lease: Duration::from_secs(c.notify_lease_secs),
            sweep: Duration::from_secs(c.notify_sweep_secs),
            max_age: Duration::from_secs(c.notify_max_age_secs),
            namespaces,
        }))
    }

    /// Whether publications in `room` are notified.
    pub fn wants(&self, room: &str) -> bool {
        let ns = room.split_once(':').map_or("", |(ns, _)| ns);
        self.namespaces.contains(ns)
    }
}

/// The node's notifier.
pub struct Notifier {
    settings: Settings,
    webhook: Webhook,
    store: Arc<dyn Store>,
    directory: Arc<dyn Directory>,
    /// This node's id: the owner name of the leases it takes.
    node: String,
    /// Rooms to look at (a std mutex: held for a few set operations, never across await).
    queue: Mutex<Queue>,
    /// Wakes the loop when rooms were queued or a worker finished.
    wake: Notify,
}

impl Notifier {
    /// The notifier of a node configured for it (`None` when no namespace notifies).
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        directory: Arc<dyn Directory>,
        node: &str,
        client: HttpClient,
    ) -> anyhow::Result<Option<Arc<Notifier>>> {
        let Some(settings) = Settings::from_config(config).map_err(anyhow::Error::msg)? else {
            return Ok(None);
        };
        let webhook = Webhook {
            client,
            uri: parse_url(config.notify_webhook_url.as_deref().unwrap_or_default())?,
            secret: config
                .notify_webhook_secret
                .clone()
                .unwrap_or_default()
                .into_bytes(),
            timeout: Duration::from_millis(config.notify_timeout_ms),
        };
        Ok(Some(Arc::new(Notifier {
            queue: Mutex::new(Queue::new(settings.queue_max)),
            settings,
            webhook,
            store,
            directory,
            node: node.to_owned(),
            wake: Notify::new(),
        })))
    }

    /// Publications this node committed: their rooms are looked at soon.
    pub fn committed(&self, batch: &[Arc<Message>]) {
        let mut woke = false;
        {
            let mut q = self.queue.lock().expect("notify queue lock");
            for m in batch.iter().filter(|m| self.settings.wants(&m.room)) {
                q.push(&m.room);
                woke = true;
            }
        }
        if woke {
            self.wake.notify_one();
        }
    }

    /// Runs until `stop`: hands queued rooms to at most `WORKERS` workers and sweeps the
    /// store's backlog at start and every `notify_sweep_secs`. Returns once every worker
    /// has stopped (each releases its lease).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let workers = Arc::new(Semaphore::new(WORKERS));
        let tasks = TaskTracker::new();
        let mut sweep = interval(self.settings.sweep);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            while let Ok(permit) = workers.clone().try_acquire_owned() {
                let Some(room) = self.queue.lock().expect("notify queue lock").pop() else {
                    break;
                };
                let me = self.clone();
                let stop = stop.clone();
                tasks.spawn(async move {
                    me.process(&room, &stop).await;
                    me.queue.lock().expect("notify queue lock").finish(&room);
                    drop(permit);
                    me.wake.notify_one();
                });
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sweep.tick() => self.sweep().await,
                _ = self.wake.notified() => {}
            }
            let overflowed = self
                .queue
                .lock()
                .expect("notify queue lock")
                .take_overflow();
            if overflowed {
                self.sweep().await;
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Queues the rooms the store says have publications not yet notified (as many as
    /// the queue takes; the next sweep finds the rest).
    async fn sweep(&self) {
        for ns in &self.settings.namespaces {
            let mut after = String::new();
            loop {
                let rooms = match self.store.notify_backlog(ns, &after, SWEEP_PAGE).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "notify backlog sweep failed; the next one retries");
                        return;
                    }
                };
                let full = {
                    let mut q = self.queue.lock().expect("notify queue lock");
                    for r in &rooms {
                        q.push(&Arc::from(r.as_str()));
                    }
                    q.take_overflow() || q.is_full()
                };
                match rooms.last() {
                    Some(last) if rooms.len() == SWEEP_PAGE && !full => after = last.clone(),
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamespaceOptions;

    fn notifying() -> Config {
        let mut c = Config::default();
        c.namespaces.insert(
            "team".into(),
            NamespaceOptions {
                notify_offline: true,
                ..Default::default()
            },
        );
        c.notify_webhook_url = Some("http://127.0.0.1:9/hook".into());
        c.notify_webhook_secret = Some("s".into());
        c
    }

    #[test]
    fn settings_need_a_webhook_and_a_secret_and_bounds_that_can_run() {
        assert!(Settings::from_config(&Config::default()).unwrap().is_none());
        let s = Settings::from_config(&notifying()).unwrap().unwrap();
        assert!(s.wants("team:general") && s.wants("team:#alice"));
        assert!(!s.wants("general") && !s.wants("other:x") && !s.wants("teams:x"));
        let refused = |tune: fn(&mut Config)| {
            let mut c = notifying();
            tune(&mut c);
            assert!(c.validate().is_err());
            Settings::from_config(&c).unwrap_err()
        };
        assert!(refused(|c| c.notify_webhook_url = None).contains("notify_webhook_url"));
        assert!(refused(|c| c.notify_webhook_url = Some("https://x/y".into())).contains("http://"));
        assert!(refused(|c| c.notify_webhook_secret = Some(String::new())).contains("secret"));
        refused(|c| c.notify_batch_size = 0);
        refused(|c| c.notify_batch_size = MAX_BATCH + 1);
        refused(|c| c.notify_retry_min_ms = c.notify_retry_max_ms + 1);
        refused(|c| c.notify_queue_max = 0);
        assert!(refused(|c| c.notify_lease_secs = 20).contains("notify_lease_secs"));
        // The default namespace too, named "".
        let mut c = notifying();
        c.default_namespace.notify_offline = true;
        assert!(Settings::from_config(&c).unwrap().unwrap().wants("general"));
    }
}
