//! The nemesis: a schedule of faults drawn from a seeded RNG (the same seed gives the same
//! schedule), applied one at a time, each held for a while and then healed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::sleep;

use crate::cluster::Cluster;
use crate::workload::{Member, Shared};

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) enum Fault {
    /// kill -9 a node; restarted (same port and directory) when healed.
    KillNode(usize),
    /// SIGSTOP a node; SIGCONT when healed.
    PauseNode(usize),
    /// Redis killed and started again at once (empty: no persistence).
    RestartRedis,
    /// Redis kill -9, down for the hold, then started (empty).
    KillRedis,
    /// Redis SIGSTOP: connections open, nothing answers.
    PauseRedis,
    /// PostgreSQL fast restart (every connection cut).
    RestartPostgres,
    /// A node cut from Redis and PostgreSQL (its proxies drop and refuse connections).
    Partition(usize),
    /// A member stops reading (its socket stays open) for the hold.
    SlowReader(usize),
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Planned {
    /// When it starts, in ms after the workload started.
    pub at_ms: u64,
    pub hold_ms: u64,
    pub fault: Fault,
}

/// Faults over `seconds` (after a 2 s quiet start): a pause of 1-3 s, then a fault held
/// for 1.5-5 s (every kind once first), repeated while it ends within `seconds`. The writers stop when the
/// last one is healed.
pub(crate) fn schedule(seed: u64, seconds: u64, nodes: usize, members: usize) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let end = seconds * 1000;
    let mut at = 2000;
    let mut out = Vec::new();
    // The first eight faults are every kind once, in a seeded order, so even a short run
    // (CI's 60 s) has each of them.
    let mut kinds: Vec<u8> = (0..8).collect();
    rng.shuffle(&mut kinds);
    loop {
        at += rng.u64(1000..3000);
        let hold_ms = rng.u64(1500..5000);
        if at + hold_ms > end {
            return out;
        }
        let kind = kinds
            .get(out.len())
            .copied()
            .unwrap_or_else(|| rng.u8(0..8));
        let fault = match kind {
            0 => Fault::KillNode(rng.usize(0..nodes)),
            1 => Fault::PauseNode(rng.usize(0..nodes)),
            2 => Fault::RestartRedis,
            3 => Fault::KillRedis,
            4 => Fault::PauseRedis,
            5 => Fault::RestartPostgres,
            6 => Fault::Partition(rng.usize(0..nodes)),
            _ => Fault::SlowReader(rng.usize(0..members)),
        };
        out.push(Planned {
            at_ms: at,
            hold_ms,
            fault,
        });
        at += hold_ms;
    }
}

/// What happened, for the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Applied {
    pub fault: Fault,
    pub began_ms: u64,
    pub healed_ms: u64,
}

/// Applies `plan` in order on `cluster`; returns what was applied and when.
pub(crate) async fn run(
    plan: &[Planned],
    cluster: &mut Cluster,
    members: &[Arc<Member>],
    shared: &Shared,
) -> Vec<Applied> {
    let now_ms = || shared.start.elapsed().as_millis() as u64;
    let mut applied = Vec::new();
    for p in plan {
        while now_ms() < p.at_ms {
            cluster.drain_logs();
            sleep(Duration::from_millis(100)).await;
        }
        let began_ms = now_ms();
        let hold = Duration::from_millis(p.hold_ms);
        eprintln!("[{:>6} ms] {:?} for {} ms", began_ms, p.fault, p.hold_ms);
        match p.fault {
            Fault::KillNode(i) => {
                cluster.slots[i].kill();
                sleep(hold).await;
                cluster.slots[i].start();
            }
            Fault::PauseNode(i) => {
                cluster.slots[i].signal("STOP");
                sleep(hold).await;
                cluster.slots[i].signal("CONT");
            }
            Fault::RestartRedis => {
                tokio::task::block_in_place(|| cluster.redis.restart());
                sleep(hold).await;
            }
            Fault::KillRedis => {
                cluster.redis.kill();
                sleep(hold).await;
                tokio::task::block_in_place(|| cluster.redis.restart());
            }
            Fault::PauseRedis => {
                cluster.redis.signal("STOP");
                sleep(hold).await;
                cluster.redis.signal("CONT");
            }
            Fault::RestartPostgres => {
                tokio::task::block_in_place(|| cluster.pg.restart());
                sleep(hold).await;
            }
            Fault::Partition(i) => {
                cluster.slots[i].redis_proxy.cut();
                cluster.slots[i].pg_proxy.cut();
                sleep(hold).await;
                cluster.slots[i].redis_proxy.heal();
                cluster.slots[i].pg_proxy.heal();
            }
            Fault::SlowReader(m) => {
                let until = now_ms() + p.hold_ms;
                members[m].slow_until_ms.store(until, Ordering::Relaxed);
                sleep(hold).await;
            }
        }
        applied.push(Applied {
            fault: p.fault,
            began_ms,
            healed_ms: now_ms(),
        });
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_with_every_kind_in_a_minute() {
        let a = schedule(1, 60, 3, 6);
        let b = schedule(1, 60, 3, 6);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(format!("{a:?}"), format!("{:?}", schedule(2, 60, 3, 6)));
        let mut kinds: Vec<String> = a
            .iter()
            .map(|p| {
                format!("{:?}", p.fault)
                    .split('(')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), 8, "{a:?}");
        assert!(a.iter().all(|p| p.at_ms + p.hold_ms <= 60_000));
    }
}
