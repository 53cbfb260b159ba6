//! One chaos run: start the cluster, the writers and the members, apply the fault
//! schedule, heal, stop writing, read the history, wait for every member to reach the
//! head, check, and write `report.json` and `summary.txt` into the output directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roomcast_testkit::try_api;
use serde::Serialize;
use serde_json::json;
use tokio::time::{sleep, Instant};

use crate::checker::{self, PubId, View};
use crate::cluster::Cluster;
use crate::faults::{self, Applied, Planned};
use crate::workload::{self, Member, MemberState, Shared, ROOM};

pub(crate) struct Options {
    pub seconds: u64,
    pub seed: u64,
    pub out: PathBuf,
    pub nodes: usize,
    /// WebSocket writers per node (plus one server API writer per node).
    pub ws_writers: usize,
    /// Members per node.
    pub members: usize,
    /// Pause between one writer's publishes.
    pub pace: Duration,
    /// How long members may take to reach the head after the heal.
    pub converge: Duration,
}

#[derive(Serialize)]
pub(crate) struct Output<'a> {
    pub seed: u64,
    pub seconds: u64,
    pub nodes: usize,
    pub writers: usize,
    pub members: usize,
    pub load_average: String,
    pub schedule: &'a [Planned],
    pub applied: &'a [Applied],
    pub node_starts: Vec<u32>,
    pub node_panics: Vec<u64>,
    pub last_fault_healed_ms: u64,
    pub check: &'a checker::Report,
}

/// Runs it; returns whether the checker (or a node) found a failure.
pub(crate) async fn run(o: Options) -> bool {
    std::fs::create_dir_all(&o.out).expect("create the output directory");
    let mut cluster = Cluster::start(o.nodes, &o.out).await;
    let shared = Shared::new();
    let mut members = Vec::new();
    let mut tasks = Vec::new();
    for (i, slot) in cluster.slots.iter().enumerate() {
        for m in 0..o.members {
            let member = Arc::new(Member {
                name: format!("node{i}-member{m}"),
                url: slot.ws_url(),
                state: Mutex::new(MemberState::default()),
                slow_until_ms: AtomicU64::new(0),
            });
            members.push(member.clone());
            tasks.push(tokio::spawn(member.run(shared.clone())));
        }
    }
    // Members subscribe before anyone writes, so each owes the whole stream.
    let ready = Instant::now() + Duration::from_secs(20);
    while !members.iter().all(|m| subscribed(m)) {
        assert!(
            Instant::now() < ready,
            "members did not subscribe within 20 s"
        );
        sleep(Duration::from_millis(50)).await;
    }
    let mut writer = 0;
    let mut writers = Vec::new();
    for slot in &cluster.slots {
        for _ in 0..o.ws_writers {
            writers.push(tokio::spawn(workload::ws_writer(
                shared.clone(),
                writer,
                slot.ws_url(),
                o.pace,
            )));
            writer += 1;
        }
        writers.push(tokio::spawn(workload::api_writer(
            shared.clone(),
            writer,
            slot.addr,
            o.pace,
        )));
        writer += 1;
    }

    let plan = faults::schedule(o.seed, o.seconds, o.nodes, members.len());
    let applied = faults::run(&plan, &mut cluster, &members, &shared).await;
    let last_fault_healed_ms = applied.last().map_or_else(
        || shared.start.elapsed().as_millis() as u64,
        |a| a.healed_ms,
    );
    // Writing stops with the last heal, so the time to the head is the members' own.
    shared.stop_writing.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }

    let history = read_history(&cluster).await;
    let head = history.iter().map(|h| h.0).max().unwrap_or(0);
    let deadline = Instant::now() + o.converge;
    while Instant::now() < deadline && members.iter().any(|m| last(m) < head) {
        cluster.drain_logs();
        sleep(Duration::from_millis(100)).await;
    }
    // A moment more, so a late duplicate still shows.
    sleep(Duration::from_millis(500)).await;
    shared.stop_reading.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    cluster.drain_logs();

    let ops = shared.ops.lock().unwrap().clone();
    let views: Vec<View> = members
        .iter()
        .map(|m| view(m, head, last_fault_healed_ms))
        .collect();
    let report = checker::check(&ops, &history, &views);
    let epoch_changes: u32 = members
        .iter()
        .map(|m| m.state.lock().unwrap().epoch_changes)
        .sum();
    let node_panics: Vec<u64> = cluster.slots.iter().map(|s| s.panics).collect();
    let out = Output {
        seed: o.seed,
        seconds: o.seconds,
        nodes: o.nodes,
        writers: writer as usize,
        members: members.len(),
        load_average: load_average(),
        schedule: &plan,
        applied: &applied,
        node_starts: cluster.slots.iter().map(|s| s.starts).collect(),
        node_panics: node_panics.clone(),
        last_fault_healed_ms,
        check: &report,
    };
    let json = serde_json::to_string_pretty(&out).unwrap();
    std::fs::write(o.out.join("report.json"), json).expect("write report.json");
    let failed = report.failed() || epoch_changes > 0 || node_panics.iter().any(|&p| p > 0);
    let summary = crate::summary::text(&out, epoch_changes, failed);
    std::fs::write(o.out.join("summary.txt"), &summary).expect("write summary.txt");
    print!("{summary}");
    failed
}

fn subscribed(m: &Member) -> bool {
    m.state.lock().unwrap().subscribed
}

fn last(m: &Member) -> u64 {
    let s = m.state.lock().unwrap();
    s.pubs.iter().map(|p| p.0).max().unwrap_or(s.start)
}

/// The member's view for the checker, with the time it first held `head` after the last
/// fault was healed (0 when it already held it then).
fn view(m: &Member, head: u64, healed_ms: u64) -> View {
    let s = m.state.lock().unwrap();
    let mut max = s.start;
    let mut reached = (head <= s.start).then_some(0);
    for &(o, _, at) in &s.pubs {
        max = max.max(o);
        if reached.is_none() && max >= head {
            reached = Some(at);
        }
    }
    View {
        name: m.name.clone(),
        start: s.start,
        pubs: s.pubs.iter().map(|&(o, id, _)| (o, id)).collect(),
        head_after_ms: reached.map(|at| at.saturating_sub(healed_ms)),
        reconnects: s.reconnects,
        unrecovered: s.unrecovered,
    }
}

/// The room's whole history through the server API of the first node that answers,
/// paged forward from offset 0.
async fn read_history(cluster: &Cluster) -> Vec<(u64, Option<PubId>)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    'retry: loop {
        assert!(
            Instant::now() < deadline,
            "no node served the history within 60 s"
        );
        for slot in &cluster.slots {
            let head = try_api(
                slot.addr,
                "history",
                &json!({"channel": ROOM, "limit": 0}),
                workload::OP_TIMEOUT,
            )
            .await;
            let Ok(head) = head else { continue };
            let epoch = head["result"]["epoch"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let top = head["result"]["offset"].as_u64().unwrap_or(0);
            let mut out = Vec::new();
            let mut from = 0;
            while from < top {
                let body = json!({"channel": ROOM, "limit": 1000, "since": {"offset": from, "epoch": epoch}});
                let Ok(page) = try_api(slot.addr, "history", &body, workload::OP_TIMEOUT).await
                else {
                    sleep(Duration::from_millis(500)).await;
                    continue 'retry;
                };
                let pubs = page["result"]["publications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if pubs.is_empty() {
                    break;
                }
                for p in pubs {
                    let o = p["offset"].as_u64().unwrap_or(0);
                    out.push((o, workload::pub_id(&p["data"])));
                    from = from.max(o);
                }
            }
            return out;
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// `/proc/loadavg`'s first three figures.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
