//! The reconnect storm (issue #10): every member joins, then all drop their connections at once (no
//! close handshake, like a network loss); while they are away each room gets exactly `behind`
//! publications (acknowledged, so stored); then every member reconnects at the same instant and
//! subscribes with `recover`, its last offset and epoch, as the SDKs do.
//!
//! Measured: the first-join rate, each member's time from the reconnect order to its recovered
//! subscription (p50/p99/max; the max is the time until all are back), and members back per second.
//! Checked: every member back, `recovered: true`, and the recovery carrying exactly the `behind`
//! publications it missed, in order (`recover_wrong` counts the others), on top of the usual
//! missing/duplicate/out-of-order counts over the whole stream.
//!
//! The limit baseline runs the same sequence without publications (it has no recovery), so the
//! reconnect rate has a ceiling beside it in the same run.

use crate::procfs;
use crate::publisher::{self, PubJob, PubResult};
use crate::report::{Percentiles, RunResult};
use crate::scenario::{self, Case, Joined};
use crate::stats;
use crate::target::Target;
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long the members may take to be offline, and the server to release their sockets.
const SETTLE: Duration = Duration::from_secs(30);

pub(crate) async fn run(target: &Target, case: &Case) -> Result<RunResult> {
    let storm = case.storm.context("storm case without storm parameters")?;
    let Joined {
        mut fleet,
        result: mut r,
        label,
        bench_cpu0,
        ..
    } = scenario::join(target, case).await?;
    let joined = fleet.progress().joined;
    let server = target.pids.first().copied();
    // What the server holds with everyone connected, to see it let go of the dropped sockets.
    let files_joined = server.and_then(procfs::open_files);

    // 1. Everyone away at once.
    fleet.drop_all().await;
    let (s, all_off) = fleet.wait_for(SETTLE, |s| s.offline >= joined).await;
    let not_offline =
        (!all_off).then(|| format!("only {} of {joined} members went offline", s.offline));

    // 2. The rooms move on: exactly `behind` acknowledged publications each.
    let mut pubs: Vec<PubResult> = Vec::new();
    let publish = case.publish.as_ref().filter(|_| storm.behind > 0);
    if let Some(p) = publish {
        let t0 = Instant::now();
        let (stop_tx, stop_rx) = watch::channel(false);
        // Bounded: past this the publishers are stopped, drain 10 s, and report what is unacked.
        let limit = Duration::from_secs(60 + storm.behind * u64::from(case.rooms) / 1000);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let _ = stop_tx.send(true);
        });
        let handles: Vec<_> = (0..case.rooms)
            .map(|room| {
                let job = PubJob {
                    target: target.clone(),
                    room,
                    rate: None,
                    window: p.window,
                    payload_size: p.payload,
                    via_http: false,
                    count: Some(storm.behind),
                };
                tokio::spawn(publisher::run(job, stop_rx.clone()))
            })
            .collect();
        for h in handles {
            pubs.push(h.await?);
        }
        stopper.abort();
        r.storm_publish_s = Some(t0.elapsed().as_secs_f64());
    }

    // 3. Wait (bounded) until the server has closed the dropped sockets: the reconnects would
    // otherwise need twice the files the server may hold.
    if let (Some(pid), Some(before)) = (server, files_joined) {
        let floor = before.saturating_sub(joined * 9 / 10);
        let t0 = Instant::now();
        while procfs::open_files(pid).is_some_and(|n| n > floor) && t0.elapsed() < SETTLE {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // 4. Everyone back at once, recovering.
    let pb = scenario::bar(joined, &label);
    fleet.reconnect_all().await;
    let back_limit = Duration::from_secs(60 + joined / 200);
    let (s, _) = fleet
        .wait_for(back_limit, |s| {
            pb.set_position(s.rejoined + s.lost);
            s.rejoined + s.lost >= s.offline
        })
        .await;
    pb.finish_and_clear();
    eprintln!(
        "   storm: {} of {} back, {} recovered, {} not exactly the missed publications",
        s.rejoined, s.offline, s.recovered, s.recover_wrong
    );

    // 5. Stop and count.
    let (_, worker_cpu) = scenario::stop_and_count(fleet, &pubs, &mut r).await?;
    r.rejoins_per_s = r
        .recover_all_ms
        .filter(|ms| *ms > 0)
        .map(|ms| r.rejoined as f64 * 1000.0 / ms as f64);
    let ack = scenario::count_publishers(&mut r, &pubs);
    r.ack_us = Percentiles::of(&stats::to_buckets(&ack));
    r.bench_cpu_s = bench_cpu0
        .and_then(|c0| procfs::cpu_seconds(std::process::id()).map(|c1| c1 - c0 + worker_cpu));
    r.judge();
    r.problems.extend(not_offline);
    Ok(r)
}
