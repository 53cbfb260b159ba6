//! All members of one scenario run, split into groups: in this process while they fit, otherwise in
//! worker processes. The scenarios see one fleet: summed progress, one drop, one merged result.

use crate::digest::SubOpts;
use crate::group::{self, Expect, GroupCmd, GroupEvent, GroupJob, Handle};
use crate::stats::{GroupResult, Snapshot};
use crate::target::Target;
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

pub(crate) struct FleetPlan {
    pub members: u32,
    pub rooms: u32,
    /// Members per process before the fleet spreads over worker processes.
    pub per_process: u32,
    pub join_concurrency: usize,
    /// Concurrent handshakes of a storm's reconnect burst, over all groups.
    pub storm_concurrency: usize,
    /// Storm: publications each room gets while its members are away.
    pub behind: u64,
    /// Storm: reconnect delays spread over 0..this.
    pub storm_jitter: Duration,
    /// How members subscribe (join/leave asked, digest members).
    pub opts: SubOpts,
}

pub(crate) struct Fleet {
    groups: Vec<Handle>,
    /// Latest progress per group; progress events are cumulative, so the latest one is enough.
    latest: Vec<Snapshot>,
    pub members: u32,
}

impl Fleet {
    pub(crate) fn start(target: &Target, plan: &FleetPlan) -> Result<Fleet> {
        let per = plan.per_process.max(1);
        let n_groups = plan.members.div_ceil(per).max(1);
        // ~28k ephemeral ports per source address towards one server port, but bind(port 0) (needed
        // for any source other than 127.0.0.1) searches the range and slows as it fills: one source
        // address per 10k members keeps each range mostly free.
        let src_ips = plan.members.div_ceil(10_000).max(1);
        let mut groups = Vec::new();
        let chunk = plan.members.div_ceil(n_groups);
        for g in 0..n_groups {
            let first = g * chunk;
            let count = chunk.min(plan.members - first);
            let job = GroupJob {
                target: target.clone(),
                first,
                count,
                rooms: plan.rooms,
                src_ips,
                join_concurrency: (plan.join_concurrency / n_groups as usize).max(8),
                storm_concurrency: (plan.storm_concurrency / n_groups as usize).max(8),
                behind: plan.behind,
                storm_jitter_ms: plan.storm_jitter.as_millis() as u64,
                opts: plan.opts,
            };
            groups.push(if n_groups == 1 {
                group::spawn_local(job)
            } else {
                group::spawn_worker(job)?
            });
        }
        let latest = vec![Snapshot::default(); groups.len()];
        Ok(Fleet {
            groups,
            latest,
            members: plan.members,
        })
    }

    pub(crate) fn processes(&self) -> usize {
        self.groups.iter().filter(|g| g.child.is_some()).count()
    }

    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        self.groups
            .iter()
            .filter_map(|g| g.child.as_ref().and_then(tokio::process::Child::id))
            .collect()
    }

    /// Takes in whatever progress has arrived and returns the sum over groups.
    pub(crate) fn progress(&mut self) -> Snapshot {
        for (i, g) in self.groups.iter_mut().enumerate() {
            while let Ok(ev) = g.events.try_recv() {
                if let GroupEvent::Progress(s) = ev {
                    self.latest[i] = s;
                }
            }
        }
        let mut sum = Snapshot::default();
        for s in &self.latest {
            sum.add(s);
        }
        sum
    }

    /// Waits until every member has joined or given up, calling `tick` with progress; bounded by `limit`.
    pub(crate) async fn wait_joined(
        &mut self,
        limit: Duration,
        mut tick: impl FnMut(&Snapshot),
    ) -> Result<Snapshot> {
        let t0 = Instant::now();
        loop {
            let s = self.progress();
            tick(&s);
            if s.joined + s.join_failed >= u64::from(self.members) {
                return Ok(s);
            }
            if t0.elapsed() > limit {
                bail!(
                    "only {} of {} members joined within {limit:?}",
                    s.joined,
                    self.members
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Storm, part one: every member drops its connection abruptly and stays offline.
    pub(crate) async fn drop_all(&self) {
        for g in &self.groups {
            let _ = g.cmds.send(GroupCmd::Drop).await;
        }
    }

    /// Storm, part two: every member reconnects with recovery at once.
    pub(crate) async fn reconnect_all(&self) {
        for g in &self.groups {
            let _ = g.cmds.send(GroupCmd::Reconnect).await;
        }
    }

    /// Polls progress every 50 ms until `done` holds or `limit` passes; returns the last progress
    /// and whether `done` held.
    pub(crate) async fn wait_for(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Snapshot) -> bool,
    ) -> (Snapshot, bool) {
        let t0 = Instant::now();
        loop {
            let s = self.progress();
            if done(&s) {
                return (s, true);
            }
            if t0.elapsed() > limit {
                return (s, false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every member and merges the groups' results; a group silent for 60 s is an error.
    pub(crate) async fn stop(mut self, expected: Vec<Expect>) -> Result<GroupResult> {
        for g in &self.groups {
            let _ = g.cmds.send(GroupCmd::Stop(expected.clone())).await;
        }
        let mut total = GroupResult::default();
        for g in &mut self.groups {
            let done = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(ev) = g.events.recv().await {
                    if let GroupEvent::Done(r) = ev {
                        return Some(r);
                    }
                }
                None
            })
            .await;
            match done {
                Ok(Some(r)) => total.add(&r),
                _ => bail!("a member group did not report its result"),
            }
            if let Some(c) = g.child.as_mut() {
                let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
            }
        }
        Ok(total)
    }
}
