//! Keepalive for every connection of the node, from one ticker instead of a timer per
//! connection.
//!
//! Connections are spread over `ping_interval` buckets by id. Each second the ticker
//! (1) closes with "no pong" the connections of the bucket pinged `pong_timeout` seconds
//! ago that have not answered, (2) pings the bucket whose turn it is, closing those whose
//! token has expired, and (3) closes as "stale" sockets that were upgraded more than
//! `CONNECT_TIMEOUT` ago and never sent `connect`. A ping is the protocol's empty frame (`{}` in JSON) put
//! into the connection's outbox, so an idle connection has no timer and its task sleeps
//! until it has something to send or receive.
//!
//! `pong_timeout` must be shorter than `ping_interval` (checked at start), so a bucket is
//! never pinged again before its pongs are checked. Token expiry is enforced at ping time,
//! that is within `ping_interval` of the `exp` claim.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use roomcast_proto::Disconnect;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::auth::now_secs;
use crate::hub::{ConnId, Outbox};

/// Time an upgraded socket has to send its `connect` command.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the ticker knows of one connection.
pub struct Peer {
    pub outbox: Arc<Outbox>,
    /// Set when a ping goes out, cleared by the client's pong.
    awaiting_pong: AtomicBool,
    /// Set once `connect` succeeded; only connected peers are pinged.
    connected: AtomicBool,
    /// When the connection's token expires (Unix seconds); 0 for never.
    expires_at: AtomicU64,
}

impl Peer {
    pub fn new(outbox: Arc<Outbox>) -> Peer {
        Peer {
            outbox,
            awaiting_pong: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            expires_at: AtomicU64::new(0),
        }
    }

    pub fn pong(&self) {
        self.awaiting_pong.store(false, Ordering::Relaxed);
    }

    pub fn set_connected(&self, expires_at: Option<u64>) {
        self.set_expiry(expires_at);
        self.connected.store(true, Ordering::Release);
    }

    pub fn set_expiry(&self, expires_at: Option<u64>) {
        self.expires_at
            .store(expires_at.unwrap_or(0), Ordering::Relaxed);
    }
}

type Bucket = Mutex<HashMap<ConnId, Arc<Peer>>>;

pub struct Keepalive {
    /// Connections by `id % ping_interval`.
    buckets: Box<[Bucket]>,
    /// Sockets waiting for `connect`, oldest first, with their deadline.
    handshakes: Mutex<VecDeque<(Instant, Weak<Peer>)>>,
    pong_timeout: u64,
}

impl Keepalive {
    pub fn new(ping_interval_secs: u64, pong_timeout_secs: u64) -> Keepalive {
        let n = ping_interval_secs.max(1);
        Keepalive {
            buckets: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            handshakes: Mutex::new(VecDeque::new()),
            pong_timeout: pong_timeout_secs.min(n - 1).max(if n > 1 { 1 } else { 0 }),
        }
    }

    fn bucket(&self, id: ConnId) -> &Bucket {
        &self.buckets[(id % self.buckets.len() as u64) as usize]
    }

    pub fn register(&self, id: ConnId, peer: &Arc<Peer>) {
        self.bucket(id)
            .lock()
            .expect("keepalive lock")
            .insert(id, peer.clone());
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        self.handshakes
            .lock()
            .expect("keepalive lock")
            .push_back((deadline, Arc::downgrade(peer)));
    }

    pub fn unregister(&self, id: ConnId) {
        self.bucket(id).lock().expect("keepalive lock").remove(&id);
    }

    /// Number of registered connections.
    pub fn len(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| b.lock().expect("keepalive lock").len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks every connection to close (node shutdown).
    pub fn close_all(&self, why: Disconnect) {
        for b in &self.buckets {
            for peer in b.lock().expect("keepalive lock").values() {
                peer.outbox.close(why.clone());
            }
        }
    }

    /// Runs the ticker until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut t: u64 = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.tick(t);
            t += 1;
        }
    }

    fn tick(&self, t: u64) {
        let n = self.buckets.len() as u64;
        if t >= self.pong_timeout && self.pong_timeout > 0 {
            let checked = &self.buckets[((t - self.pong_timeout) % n) as usize];
            for peer in checked.lock().expect("keepalive lock").values() {
                if peer.awaiting_pong.load(Ordering::Relaxed) {
                    peer.outbox.close(Disconnect::NO_PONG);
                }
            }
        }
        let now = now_secs();
        for peer in self.buckets[(t % n) as usize]
            .lock()
            .expect("keepalive lock")
            .values()
        {
            if !peer.connected.load(Ordering::Acquire) {
                continue;
            }
            let exp = peer.expires_at.load(Ordering::Relaxed);
            if exp != 0 && now >= exp {
                peer.outbox.close(Disconnect::EXPIRED);
                continue;
            }
            if peer.outbox.push(peer.outbox.format().ping()) {
                peer.awaiting_pong.store(true, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        let mut waiting = self.handshakes.lock().expect("keepalive lock");
        while waiting
            .front()
            .is_some_and(|(deadline, _)| *deadline <= now)
        {
            let (_, peer) = waiting.pop_front().expect("front exists");
            if let Some(peer) = peer.upgrade() {
                if !peer.connected.load(Ordering::Acquire) {
                    peer.outbox.close(Disconnect::STALE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Arc<Peer> {
        Arc::new(Peer::new(Arc::new(Outbox::new(1 << 16))))
    }

    fn close_of(p: &Peer) -> Option<Disconnect> {
        p.outbox.take(&mut Vec::new())
    }

    #[test]
    fn pings_its_bucket_and_closes_without_pong() {
        let k = Keepalive::new(3, 1);
        let (a, b) = (peer(), peer());
        k.register(0, &a);
        k.register(1, &b);
        a.set_connected(None);
        b.set_connected(None);
        k.tick(0); // pings bucket 0 (a)
        let mut out = Vec::new();
        assert_eq!(a.outbox.take(&mut out), None);
        assert_eq!(out.len(), 1, "a got a ping");
        k.tick(1); // checks bucket 0: a did not answer; pings b
        assert_eq!(close_of(&a), Some(Disconnect::NO_PONG));
        b.pong();
        k.tick(2); // checks bucket 1: b answered
        assert_eq!(close_of(&b), None);
    }

    #[test]
    fn expired_tokens_are_closed_at_ping_time() {
        let k = Keepalive::new(2, 1);
        let a = peer();
        k.register(0, &a);
        a.set_connected(Some(now_secs() - 1));
        k.tick(0);
        assert_eq!(close_of(&a), Some(Disconnect::EXPIRED));
    }

    #[tokio::test(start_paused = true)]
    async fn sockets_that_never_connect_are_closed_as_stale() {
        let k = Keepalive::new(25, 8);
        let (a, b) = (peer(), peer());
        k.register(0, &a);
        k.register(1, &b);
        b.set_connected(None);
        tokio::time::advance(CONNECT_TIMEOUT + Duration::from_millis(1)).await;
        k.tick(5);
        assert_eq!(close_of(&a), Some(Disconnect::STALE));
        assert_eq!(close_of(&b), None);
    }
}
