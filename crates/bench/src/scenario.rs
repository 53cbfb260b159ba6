//! One measured case: a fleet of members joins, publishers publish (or not), then everything is
//! drained, stopped, counted and judged.
//!
//! The scenarios are this one engine with different knobs:
//! idle = no publishers; fanout = paced publishers; accept = unpaced publishers limited by their ack
//! window, into small rooms. The storm (every member away while its room moves on, then all back at
//! once) has its own sequence in `storm`, built from the join and count steps here.

use crate::digest::SubOpts;
use crate::fleet::{Fleet, FleetPlan};
use crate::group::Expect;
use crate::procfs;
use crate::publisher::{self, PubJob, PubResult};
use crate::report::{self, Params, Percentiles, RunResult};
use crate::stats::{self, GroupResult};
use crate::target::Target;
use anyhow::Result;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub(crate) struct Case {
    pub scenario: &'static str,
    pub members: u32,
    pub rooms: u32,
    /// None: no publishers (idle).
    pub publish: Option<Publish>,
    pub duration: Duration,
    /// Some: the storm sequence (`storm::run`) instead of publishing for `duration`.
    pub storm: Option<Storm>,
    pub per_process: u32,
    pub join_concurrency: usize,
    /// How members subscribe: join/leave asked, digest members (issue #8).
    pub opts: SubOpts,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Storm {
    /// Publications each room gets while its members are away.
    pub behind: u64,
    /// Concurrent reconnect handshakes, over all bench processes.
    pub concurrency: usize,
    /// Each member waits a delay spread evenly over 0..jitter before reconnecting, as SDKs do;
    /// zero: all at once.
    pub jitter: Duration,
}

#[derive(Clone, Debug)]
pub(crate) struct Publish {
    pub rate_per_room: Option<f64>,
    pub window: usize,
    pub payload: usize,
    pub via_http: bool,
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// What the join step hands to the rest of a case.
pub(crate) struct Joined {
    pub fleet: Fleet,
    pub result: RunResult,
    pub label: String,
    pub rss_pids: Vec<u32>,
    pub rss0: Option<u64>,
    pub tcp0: Option<u64>,
    pub bench_cpu0: Option<f64>,
}

/// Step 1 of every case: starts the fleet, waits (bounded) for every member to join, and fills the
/// run's parameters and join rate.
pub(crate) async fn join(target: &Target, case: &Case) -> Result<Joined> {
    let label = format!("{} {}", case.scenario, target.name);
    // RSS of the server: one pid per node (Node, not the Redis beside it), or all limit processes.
    let rss_pids = target.rss_pids();
    let rss0 = procfs::rss_kib_all(&rss_pids);
    let tcp0 = procfs::tcp_mem_kib();
    let load0 = procfs::loadavg();
    let bench_cpu0 = procfs::cpu_seconds(std::process::id());

    let plan = FleetPlan {
        members: case.members,
        rooms: case.rooms,
        per_process: case.per_process,
        join_concurrency: case.join_concurrency,
        storm_concurrency: case.storm.map_or(1, |s| s.concurrency),
        behind: case.storm.map_or(0, |s| s.behind),
        storm_jitter: case.storm.map_or(Duration::ZERO, |s| s.jitter),
        opts: case.opts,
    };
    if target.chat {
        crate::chat::add_fleet_members(target, case.members, case.rooms).await?;
    }
    let mut fleet = Fleet::start(target, &plan)?;
    let pb = bar(case.members.into(), &label);
    let t_join_ns = crate::wire::now_ns();
    let join_limit = Duration::from_secs(60 + u64::from(case.members) / 200);
    let joined = fleet
        .wait_joined(join_limit, |s| pb.set_position(s.joined + s.join_failed))
        .await?;
    // Up to the last successful join, not to when the 100 ms progress poll noticed it.
    let join_secs = joined.last_join_ns.saturating_sub(t_join_ns) as f64 / 1e9;
    pb.finish_and_clear();

    let result = RunResult {
        scenario: case.scenario.into(),
        target: target.name.clone(),
        bench_processes: fleet.processes().max(1),
        loadavg_at_start: load0,
        joins_per_s: joined.joined as f64 / join_secs.max(1e-9),
        server_rss_kib_before: rss0,
        params: Params {
            members: case.members,
            rooms: case.rooms,
            room_size: case.members / case.rooms.max(1),
            rate_per_room: case.publish.as_ref().and_then(|p| p.rate_per_room),
            payload_bytes: case.publish.as_ref().map_or(0, |p| p.payload),
            duration_s: case.duration.as_secs_f64(),
            window: case.publish.as_ref().map_or(0, |p| p.window),
            via_http: case.publish.as_ref().is_some_and(|p| p.via_http),
            storm_behind: case.storm.map(|s| s.behind),
            storm_jitter_ms: case.storm.map(|s| s.jitter.as_millis() as u64),
            join_leave: case.opts.join_leave,
            digest_live: case.opts.digest_live,
            nodes: target.nodes(),
        },
        ..Default::default()
    };
    Ok(Joined {
        fleet,
        result,
        label,
        rss_pids,
        rss0,
        tcp0,
        bench_cpu0,
    })
}

pub(crate) async fn run(target: &Target, case: &Case) -> Result<RunResult> {
    if case.storm.is_some() {
        return crate::storm::run(target, case).await;
    }
    let Joined {
        mut fleet,
        result: mut r,
        label,
        rss_pids,
        rss0,
        tcp0,
        bench_cpu0,
    } = join(target, case).await?;
    let me = std::process::id();
    let joined = fleet.progress();

    // 2. Idle: let the server settle, then read its memory with everyone connected.
    if case.publish.is_none() {
        tokio::time::sleep(case.duration.min(Duration::from_secs(3))).await;
        fill_memory(&mut r, &rss_pids, rss0, tcp0, joined.joined);
    }

    // 3. Publish (and storm) for the duration, then drain.
    let mut pubs: Vec<PubResult> = Vec::new();
    let cpu0 = procfs::cpu_seconds_all(&target.pids);
    let server_pid = target.pids.first().copied();
    let threads0 = server_pid
        .map(procfs::thread_cpu_seconds)
        .unwrap_or_default();
    let bus0 = match (target.redis, &case.publish) {
        (Some(a), Some(_)) => Some(crate::bus::read(a).await?),
        _ => None,
    };
    let t_pub_ns = crate::wire::now_ns();
    if let Some(p) = &case.publish {
        let (stop_tx, stop_rx) = watch::channel(false);
        let handles: Vec<_> = (0..case.rooms)
            .map(|room| {
                let job = PubJob {
                    target: target.clone(),
                    room,
                    rate: p.rate_per_room,
                    window: p.window,
                    payload_size: p.payload,
                    via_http: p.via_http,
                    count: None,
                };
                tokio::spawn(publisher::run(job, stop_rx.clone()))
            })
            .collect();
        let pb = bar(case.duration.as_secs().max(1), &label);
        let t0 = Instant::now();
        while t0.elapsed() < case.duration {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let s = fleet.progress();
            let secs = t0.elapsed().as_secs_f64();
            pb.set_position(secs as u64);
            pb.set_message(format!(
                "{:.0} deliveries/s, {} recovered",
                s.delivered as f64 / secs,
                s.recovered
            ));
        }
        let _ = stop_tx.send(true);
        for h in handles {
            pubs.push(h.await?);
        }
        pb.finish_and_clear();
        // Drain: wait for deliveries to stop growing (bounded), so late ones are not called missing.
        // Live members only count in `delivered`; digest members get the newest publication at
        // their room's next tick, so the drain lasts two intervals at least when there are some.
        let expect_total: u64 = pubs
            .iter()
            .map(|p| p.acked * case.opts.live_in_room(case.members, case.rooms, p.room))
            .sum();
        let digest_wait = if case.opts.digest_live.is_some() {
            Duration::from_millis(2 * case.opts.digest_interval_ms + case.opts.digest_tolerance_ms)
        } else {
            Duration::ZERO
        };
        let t_drain = Instant::now();
        let mut last = (fleet.progress().delivered, Instant::now());
        while t_drain.elapsed() < Duration::from_secs(30).max(digest_wait) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s = fleet.progress();
            let waited = t_drain.elapsed() >= digest_wait;
            if s.delivered >= expect_total && waited {
                break;
            }
            if s.delivered != last.0 {
                last = (s.delivered, Instant::now());
            } else if last.1.elapsed() > STALL && waited {
                break;
            }
        }
    }
    if let (Some(a), Some(c0)) = (target.redis, bus0) {
        let acked = pubs.iter().map(|p| p.acked).sum();
        let c1 = crate::bus::read(a).await?;
        r.bus = Some(crate::bus::BusTraffic::between(
            &c0,
            &c1,
            acked,
            target.nodes(),
        ));
    }
    let cpu1 = procfs::cpu_seconds_all(&target.pids);
    if case.publish.is_some() {
        let threads1 = server_pid
            .map(procfs::thread_cpu_seconds)
            .unwrap_or_default();
        r.server_thread_cpu_s = procfs::thread_cpu_delta(&threads0, &threads1);
    }

    // 4. Stop and count.
    let (g, worker_cpu) = stop_and_count(fleet, &pubs, &mut r).await?;
    if case.publish.is_some() {
        let ack = count_publishers(&mut r, &pubs);
        r.ack_us = Percentiles::of(&stats::to_buckets(&ack));
        r.acks_per_s = r.acked as f64 / case.duration.as_secs_f64();
        if let Some(d) = r.digest.as_mut() {
            let span = case.duration + Duration::from_millis(case.opts.digest_interval_ms);
            d.per_member_per_s = d.deliveries as f64 / d.members.max(1) as f64 / span.as_secs_f64();
        }
        let span = g.snap.last_delivery_ns.saturating_sub(t_pub_ns) as f64 / 1e9;
        r.deliveries_per_s = if span > 0.0 {
            r.deliveries as f64 / span
        } else {
            0.0
        };
        // A server that died mid-run would make its CPU time go backwards: report none then.
        let alive = target
            .pids
            .iter()
            .all(|p| procfs::cpu_seconds(*p).is_some());
        if !target.pids.is_empty() && alive {
            r.server_cpu_s = Some(cpu1 - cpu0);
            if r.deliveries > 0 {
                r.server_cpu_us_per_delivery = Some((cpu1 - cpu0) * 1e6 / r.deliveries as f64);
            }
            if r.acked > 0 {
                r.server_cpu_us_per_publication = Some((cpu1 - cpu0) * 1e6 / r.acked as f64);
            }
        }
    }
    r.bench_cpu_s =
        bench_cpu0.and_then(|c0| procfs::cpu_seconds(me).map(|c1| c1 - c0 + worker_cpu));
    r.judge();
    Ok(r)
}

/// How long the drain waits with deliveries not growing before it calls the rest missing.
/// 10 s: a cluster node whose bus probe timed out under load resubscribes and catches up
/// from the store, which took 14-26 s in the 100,000-member run (3 s called those late
/// deliveries missing); the drain as a whole stays bounded by 30 s.
const STALL: Duration = Duration::from_secs(10);

/// Step 4 of every case: stops the members, telling them what each room's publisher got
/// accepted, and merges their counts into `r`; returns them and the worker processes' CPU
/// seconds.
pub(crate) async fn stop_and_count(
    fleet: Fleet,
    pubs: &[PubResult],
    r: &mut RunResult,
) -> Result<(GroupResult, f64)> {
    let expected: Vec<Expect> = pubs
        .iter()
        .map(|p| Expect {
            room: p.room,
            sent: p.sent,
            excluded: p.failed.clone(),
        })
        .collect();
    let mut worker_cpu = 0.0;
    for pid in fleet.worker_pids() {
        worker_cpu += procfs::cpu_seconds(pid).unwrap_or(0.0);
    }
    let g = fleet.stop(expected).await?;
    count(r, &g);
    Ok((g, worker_cpu))
}

/// The publishers' totals into `r`; returns their merged ack latencies.
pub(crate) fn count_publishers(r: &mut RunResult, pubs: &[PubResult]) -> Histogram<u64> {
    let mut ack = stats::histogram();
    for p in pubs {
        stats::merge_into(&mut ack, &p.ack_us);
        r.published += p.sent;
        r.acked += p.acked;
        r.publish_failed += p.failed.len() as u64;
        r.publish_errors
            .extend(p.error.iter().map(|e| format!("room {}: {e}", p.room)));
    }
    ack
}

/// The members' merged counts and histograms into the run's result.
fn count(r: &mut RunResult, g: &GroupResult) {
    r.joined = g.snap.joined;
    r.join_failed = g.snap.join_failed;
    r.join_us = Percentiles::of(&g.join_us);
    r.deliveries = g.snap.delivered;
    r.missing = g.missing;
    r.duplicates = g.duplicates;
    r.out_of_order = g.out_of_order;
    r.misrouted = g.snap.misrouted;
    r.lost_connections = g.snap.lost;
    r.reconnects = g.snap.reconnects;
    r.recovered = g.snap.recovered;
    r.recover_failed = g.snap.recover_failed;
    r.latency_us = Percentiles::of(&g.latency_us);
    r.latency_cdf = report::cdf(&g.latency_us);
    r.recover_ms = Percentiles::of(&g.recover_ms);
    r.recover_all_ms = r.recover_ms.as_ref().map(|p| p.max);
    r.rejoined = g.snap.rejoined;
    r.recover_wrong = g.snap.recover_wrong;
    r.join_leave_pushes = g.snap.join_leave_pushes;
    r.last_delivery_us = Percentiles::of(&g.last_delivery_us());
    if g.digest.members > 0 {
        r.digest = Some(report::DigestFigures {
            members: g.digest.members,
            deliveries: g.digest.deliveries,
            per_member_per_s: 0.0,
            too_soon: g.digest.too_soon,
            not_newer: g.digest.not_newer,
            stale: g.digest.stale,
            min_gap_ms: g.digest.min_gap_ms,
        });
    }
    r.reads = g.snap.reads;
    r.read_failed = g.snap.read_failed;
}

fn fill_memory(r: &mut RunResult, pids: &[u32], rss0: Option<u64>, tcp0: Option<u64>, n: u64) {
    let n = n.max(1) as f64;
    r.server_rss_kib_after = procfs::rss_kib_all(pids);
    if let (Some(a), Some(b)) = (r.server_rss_kib_after, rss0) {
        r.server_kib_per_conn = Some(a.saturating_sub(b) as f64 / n);
    }
    if let (Some(a), Some(b)) = (procfs::tcp_mem_kib(), tcp0) {
        r.tcp_kib_per_conn = Some(a.saturating_sub(b) as f64 / n);
    }
}
