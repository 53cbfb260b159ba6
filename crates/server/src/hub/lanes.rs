//! Fan-out on every core: a large room's outbox writes split over lanes, one tokio task
//! each, as many lanes as the runtime has workers.
//!
//! A room above `Hub::parallel_above` live subscribers gets its lanes (once; they last as
//! long as the room, so a room that shrinks back never lets a direct write overtake what
//! its lanes still hold). `Hub::dispatch` still decides everything under the room's shard
//! lock (pending holds, offsets, gaps): only the pushes into outboxes, and the wake-ups of
//! the connection tasks that follow, move to the lanes. Each job carries the one encoding
//! of the publication (`Bytes`, shared) and the outboxes of one lane's part of the room.
//!
//! Order: a connection always falls in the same lane (by its id), a lane runs its jobs in
//! the order it got them, and jobs are sent under the shard lock in dispatch order, so a
//! connection's publications reach its outbox in offset order however many publications
//! of the room are being fanned out at once.
//!
//! Bounds: a lane holds at most `LANE_QUEUE` jobs. A lane that far behind means the node
//! cannot write this room out as fast as it publishes: the job's connections are closed as
//! "slow" (their SDKs reconnect and recover from their last offset), never queued without
//! bound and never written out of order.
//!
//! A subscription that leaves the room is flagged (`Target::alive`), so a job queued before
//! it left does not write to it afterwards (it may have resubscribed, with a reply that
//! already carries those publications).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::frames::{Frames, Shape};
use bytes::Bytes;
use roomcast_proto::{Disconnect, Format};
use tokio::sync::mpsc;

use super::{ConnId, Outbox};

/// Jobs a lane may hold before its connections are closed as slow.
pub(super) const LANE_QUEUE: usize = 1024;

/// One connection a job writes to.
pub(super) struct Target {
    pub(super) outbox: Arc<Outbox>,
    /// Cleared (under the shard lock) when the subscription leaves the room.
    pub(super) alive: Arc<AtomicBool>,
    /// Its shape of the frame (plain, delta-mode full or delta), decided under the lock.
    pub(super) shape: Shape,
}

struct Job {
    /// Consecutive publications of the room, each encoded once per format by the first
    /// lane that needs it; every target gets all of them.
    frames: Arc<[Frames]>,
    targets: Vec<Target>,
}

/// The lanes of one room.
pub(super) struct Lanes {
    /// One sender per lane task; dropping them (the room is gone) ends the tasks once
    /// they have run what they hold.
    lanes: Vec<mpsc::Sender<Job>>,
    /// Jobs refused by a full lane (their connections closed as slow).
    overflows: Arc<AtomicU64>,
}

impl Lanes {
    /// Starts one lane per runtime worker, or none outside a multi-worker runtime (the
    /// room then stays on the direct path).
    pub(super) fn start(deliveries: &Arc<AtomicU64>, overflows: &Arc<AtomicU64>) -> Option<Lanes> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let n = rt.metrics().num_workers();
        if n < 2 {
            return None;
        }
        let lanes = (0..n)
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_QUEUE);
                rt.spawn(run(rx, deliveries.clone()));
                tx
            })
            .collect();
        Some(Lanes {
            lanes,
            overflows: overflows.clone(),
        })
    }

    pub(super) fn len(&self) -> usize {
        self.lanes.len()
    }

    /// The lane a connection always falls in.
    pub(super) fn lane_of(&self, conn: ConnId) -> usize {
        (conn % self.lanes.len() as u64) as usize
    }

    /// Hands each lane its part (`parts[i]` to lane `i`; empty parts are skipped): each of
    /// its targets gets every frame of `frames`, in order.
    pub(super) fn send(&self, frames: &Arc<[Frames]>, parts: Vec<Vec<Target>>) {
        for (lane, targets) in self.lanes.iter().zip(parts) {
            if targets.is_empty() {
                continue;
            }
            let job = Job {
                frames: frames.clone(),
                targets,
            };
            if let Err(e) = lane.try_send(job) {
                let job = match e {
                    mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
                };
                self.overflows.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    connections = job.targets.len(),
                    "fan-out lane full; its connections are closed as slow"
                );
                for t in job.targets {
                    t.outbox.close(Disconnect::SLOW);
                }
            }
        }
    }
}

/// Jobs a lane takes at once. A lane that keeps up takes one at a time; one that has
/// fallen behind takes up to this many and writes consecutive jobs for the same part of the
/// room connection by connection (`Outbox::push_many`): one lock and one wake-up of each
/// cache-cold outbox per run of publications instead of per publication (the largest cost
/// of a 5,000-member room at 1,000/s in its profile, BENCHMARKS.md).
const BATCH: usize = 32;

/// A lane: writes each job's frame to each of its live targets, in order.
async fn run(mut rx: mpsc::Receiver<Job>, deliveries: Arc<AtomicU64>) {
    let mut jobs = Vec::with_capacity(BATCH);
    // The run's frames per (format, shape) its targets need, encoded once per run.
    let mut frames: Vec<((Format, Shape), Vec<Bytes>)> = Vec::new();
    while rx.recv_many(&mut jobs, BATCH).await > 0 {
        let mut n = 0;
        let mut start = 0;
        while start < jobs.len() {
            let mut end = start + 1;
            while end < jobs.len() && same_targets(&jobs[start].targets, &jobs[end].targets) {
                end += 1;
            }
            let run = &jobs[start..end];
            frames.clear();
            for t in &run[0].targets {
                let key = (t.outbox.format(), t.shape);
                let i = match frames.iter().position(|(k, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        let encoded = run
                            .iter()
                            .flat_map(|j| j.frames.iter())
                            .map(|f| f.get(key.0, key.1))
                            .collect();
                        frames.push((key, encoded));
                        frames.len() - 1
                    }
                };
                // Checked right before the push (the encoding above can take a while), once
                // per run: as if its jobs were all written at this moment.
                if t.alive.load(Ordering::Acquire) {
                    n += t.outbox.push_many(&frames[i].1);
                }
            }
            start = end;
        }
        jobs.clear();
        deliveries.fetch_add(n, Ordering::Relaxed);
    }
}

/// Whether two jobs write to the same connections with the same shapes, in the same order.
fn same_targets(a: &[Target], b: &[Target]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            Arc::ptr_eq(&x.outbox, &y.outbox)
                && Arc::ptr_eq(&x.alive, &y.alive)
                && x.shape == y.shape
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{offsets, publication};
    use super::super::{Hub, SubMode};
    use super::*;

    const CONNS: u64 = 64;

    /// Subscribes `CONNS` connections to "r" (positioned from offset 1 when `positioned`).
    fn room(hub: &Hub, positioned: bool) -> Vec<Arc<Outbox>> {
        (0..CONNS)
            .map(|c| {
                let ob = Arc::new(Outbox::new(64 << 20));
                hub.subscribe("r", c, ob.clone(), SubMode::default());
                hub.activate("r", c, positioned.then_some(1));
                ob
            })
            .collect()
    }

    /// What each outbox got, once every one has `n` publications (lanes run on their own).
    async fn collect(outboxes: &[Arc<Outbox>], n: usize) -> Vec<Vec<u64>> {
        let mut got = vec![Vec::new(); outboxes.len()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.iter().any(|g| g.len() < n) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "lanes did not deliver"
            );
            for (ob, g) in outboxes.iter().zip(&mut got) {
                let (offs, close) = offsets(ob);
                assert_eq!(close, None, "no connection closed");
                g.extend(offs);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_large_room_fans_out_on_every_worker_in_offset_order_exactly_once() {
        let hub = Hub::new().with_parallel_above(8);
        let outboxes = room(&hub, true);
        const N: u64 = 500;
        // Dispatched back to back: many publications of the room in the lanes at once.
        for o in 1..=N {
            hub.dispatch(&publication("r", o));
        }
        assert_eq!(hub.lanes_of("r"), 4, "one lane per worker");
        let want: Vec<u64> = (1..=N).collect();
        for got in collect(&outboxes, N as usize).await {
            assert_eq!(got, want);
        }
        assert_eq!(hub.deliveries.load(Ordering::Relaxed), N * CONNS);
        assert_eq!(hub.gaps.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_dispatches_reach_every_connection_in_one_order() {
        let hub = Arc::new(Hub::new().with_parallel_above(8));
        let outboxes = room(&hub, false);
        const N: u64 = 400;
        // Two threads dispatch at once (unpositioned subscriptions take any order): every
        // connection must see the same order, each publication once.
        let threads: Vec<_> = [0, 1]
            .into_iter()
            .map(|parity| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    for o in (1..=N).filter(|o| o % 2 == parity) {
                        hub.dispatch(&publication("r", o));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = collect(&outboxes, N as usize).await;
        let mut sorted = got[0].clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=N).collect::<Vec<_>>(), "each once");
        for g in &got {
            assert_eq!(g, &got[0], "one order for every connection");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_left_gets_nothing_queued_before() {
        let hub = Hub::new().with_parallel_above(8);
        let outboxes = room(&hub, true);
        for o in 1..=200 {
            hub.dispatch(&publication("r", o));
        }
        hub.unsubscribe("r", 0);
        let (before, _) = offsets(&outboxes[0]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (after, _) = offsets(&outboxes[0]);
        assert!(after.is_empty(), "{} written after it left", after.len());
        assert!(before.len() <= 200);
    }

    /// `dispatch_many` of runs gives every kind of subscriber exactly what `dispatch` of
    /// each publication gives it, frame for frame: positioned from the first offset or
    /// past part of a run, unpositioned, pending until after the runs, and delta. (A gap
    /// closes a subscriber at once, overtaking what its lane still holds, with either.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_dispatched_together_deliver_what_one_by_one_does() {
        use super::super::frames::tests::{document, frames};
        use super::super::RoomEvent;
        // conn -> (mode, activated with this next offset before the runs, or after them)
        let kinds: Vec<(SubMode, Option<Option<u64>>)> = (0..40)
            .map(|c| match c % 5 {
                0 => (SubMode::default(), Some(Some(1))),
                1 => (SubMode::default(), Some(Some(4))),
                2 => (SubMode::default(), Some(None)),
                3 => (SubMode::default(), None),
                _ => (
                    SubMode {
                        delta: true,
                        ..SubMode::default()
                    },
                    Some(Some(1)),
                ),
            })
            .collect();
        let setup = || {
            let hub = Hub::new().with_parallel_above(8);
            let outboxes: Vec<_> = kinds
                .iter()
                .enumerate()
                .map(|(c, (mode, at))| {
                    let ob = Arc::new(Outbox::new(64 << 20));
                    hub.subscribe("r", c as u64, ob.clone(), *mode);
                    if let Some(next) = at {
                        hub.activate("r", c as u64, *next);
                    }
                    ob
                })
                .collect();
            (hub, outboxes)
        };
        let (one, one_out) = setup();
        let (many, many_out) = setup();
        // Runs of 1, 9, 40 (more than one `RUN`) and 20 publications.
        let runs: Vec<Vec<u64>> = vec![
            vec![1],
            (2..=10).collect(),
            (11..=50).collect(),
            (51..=70).collect(),
        ];
        for run in &runs {
            let events: Vec<RoomEvent> = run.iter().map(|o| document(*o)).collect();
            for e in &events {
                one.dispatch(e);
            }
            many.dispatch_many(&events);
        }
        for (c, (_, at)) in kinds.iter().enumerate() {
            if at.is_none() {
                one.activate("r", c as u64, Some(30));
                many.activate("r", c as u64, Some(30));
            }
        }
        // Lanes run on their own: wait until both hubs have written the same number.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (a, b) = (
                one.deliveries.load(Ordering::Relaxed),
                many.deliveries.load(Ordering::Relaxed),
            );
            if a == b && a > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if one.deliveries.load(Ordering::Relaxed) == a
                    && many.deliveries.load(Ordering::Relaxed) == b
                {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{a} vs {b} delivered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (c, (a, b)) in one_out.iter().zip(&many_out).enumerate() {
            let closed = |ob: &Outbox| {
                let mut v = Vec::new();
                ob.take(&mut v)
            };
            let (fa, fb) = (frames(a), frames(b));
            assert!(!fa.is_empty(), "conn {c} got nothing");
            assert_eq!(fa, fb, "conn {c} (kind {})", c % 5);
            assert_eq!(closed(a), closed(b), "conn {c}");
        }
        assert_eq!(many.gaps.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_rooms_stay_on_the_direct_path() {
        let hub = Hub::new().with_parallel_above(CONNS as usize);
        let outboxes = room(&hub, true);
        hub.dispatch(&publication("r", 1));
        assert_eq!(hub.lanes_of("r"), 0);
        // Written before dispatch returns.
        assert_eq!(offsets(&outboxes[5]).0, vec![1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delta_subscribers_on_lanes_get_full_then_deltas_in_order() {
        use super::super::frames::tests::{decode, document, frames};
        use roomcast_proto::Format;
        let hub = Hub::new().with_parallel_above(8);
        let mode = SubMode {
            delta: true,
            ..SubMode::default()
        };
        let outboxes: Vec<_> = (0..32)
            .map(|c| {
                let ob = Arc::new(Outbox::new(64 << 20));
                hub.subscribe("r", c, ob.clone(), mode);
                hub.activate("r", c, Some(1));
                ob
            })
            .collect();
        const N: u64 = 50;
        for o in 1..=N {
            hub.dispatch(&document(o));
        }
        assert_eq!(hub.lanes_of("r"), 2);
        let mut got: Vec<Vec<Bytes>> = vec![Vec::new(); outboxes.len()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.iter().any(|g| g.len() < N as usize) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "lanes did not deliver"
            );
            for (ob, g) in outboxes.iter().zip(&mut got) {
                g.extend(frames(ob));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for g in &got {
            let decoded = decode(g, Format::Json);
            for (o, (data, delta)) in (1..=N).zip(&decoded) {
                assert!(data.contains(&format!(r#""rev":{o},"#)), "{data}");
                assert_eq!(*delta, o > 1, "full first, then deltas");
            }
        }
    }
}
