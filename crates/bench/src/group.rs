//! A group is the share of members one process runs. Small runs use one group inside the bench
//! process; past `--per-process` connections (one process may hold at most ~20,000 files here) the
//! bench re-executes itself as `roomcast-bench worker` processes and talks to each over stdin/stdout
//! with JSON lines. Both kinds look the same to the scenarios: a command sender and an event receiver.

use crate::digest::{self, SubOpts};
use crate::member::{self, Cmd, Member, Shared};
use crate::stats::{self, GroupResult, Hists, Live, Snapshot};
use crate::target::Target;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch, Semaphore};

/// What one group runs: members `first..first+count` of the whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GroupJob {
    pub target: Target,
    pub first: u32,
    pub count: u32,
    pub rooms: u32,
    /// Members spread over 127.0.0.1 ..= 127.0.0.<src_ips>, ~28k ephemeral ports each (see Fleet).
    pub src_ips: u32,
    pub join_concurrency: usize,
    /// This group's share of a storm's concurrent reconnect handshakes.
    pub storm_concurrency: usize,
    /// Storm: publications each room gets while its members are away (see `member::Shared::behind`).
    pub behind: u64,
    /// Storm: reconnect delays spread over 0..this many ms.
    pub storm_jitter_ms: u64,
    /// How members subscribe (join/leave asked, digest members).
    #[serde(default)]
    pub opts: SubOpts,
}

/// How many publications each room's publisher got accepted, for the missing-count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Expect {
    pub room: u32,
    pub sent: u64,
    /// Sequence numbers refused by the server or whose fate is unknown; reported apart.
    pub excluded: Vec<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum GroupCmd {
    /// Every member drops its connection and waits offline.
    Drop,
    /// Every member reconnects with recovery, all at once.
    Reconnect,
    Stop(Vec<Expect>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum GroupEvent {
    Progress(Snapshot),
    Done(Box<GroupResult>),
}

/// Runs a group until it is told to stop; reports progress every 200 ms.
pub(crate) async fn run(
    job: GroupJob,
    mut cmds: mpsc::Receiver<GroupCmd>,
    events: mpsc::Sender<GroupEvent>,
) {
    let shared = Arc::new(Shared {
        target: job.target.clone(),
        live: Live::default(),
        hists: Hists::default(),
        reconnect_at_ns: AtomicU64::new(0),
        join_gate: Semaphore::new(job.join_concurrency.max(1)),
        storm_gate: Semaphore::new(job.storm_concurrency.max(1)),
        behind: job.behind,
        jitter: Duration::from_millis(job.storm_jitter_ms),
        opts: job.opts,
    });
    let (cmd_tx, cmd_rx) = watch::channel(Cmd::Run);
    let mut handles = Vec::with_capacity(job.count as usize);
    for idx in job.first..job.first + job.count {
        let me = Member {
            idx,
            room: idx % job.rooms.max(1),
            src: Ipv4Addr::new(127, 0, 0, 1 + (idx % job.src_ips.clamp(1, 250)) as u8),
            digest: job.opts.is_digest(idx),
        };
        handles.push(tokio::spawn(member::run(
            shared.clone(),
            me,
            cmd_rx.clone(),
        )));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut storms = 0;
    let expected = loop {
        tokio::select! {
            _ = tick.tick() => {
                if events.send(GroupEvent::Progress(shared.live.snapshot())).await.is_err() {
                    break Vec::new();
                }
            }
            c = cmds.recv() => match c {
                Some(GroupCmd::Drop) => {
                    storms += 1;
                    let _ = cmd_tx.send(Cmd::Drop(storms));
                }
                Some(GroupCmd::Reconnect) => {
                    shared.reconnect_at_ns.store(crate::wire::now_ns(), Relaxed);
                    let _ = cmd_tx.send(Cmd::Reconnect(storms));
                }
                Some(GroupCmd::Stop(e)) => break e,
                None => break Vec::new(),
            }
        }
    };
    let _ = cmd_tx.send(Cmd::Stop);
    let mut result = GroupResult::default();
    for (idx, h) in (job.first..).zip(handles) {
        let Ok(member::Outcome {
            tracker: t,
            digest: d,
        }) = h.await
        else {
            continue;
        };
        result.duplicates += t.duplicates;
        result.out_of_order += t.out_of_order;
        let room = idx % job.rooms.max(1);
        let expect = expected.iter().find(|e| e.room == room);
        if job.opts.is_digest(idx) {
            let c = &mut result.digest;
            c.members += 1;
            c.deliveries += d.deliveries;
            c.too_soon += d.too_soon;
            c.not_newer += d.not_newer;
            c.min_gap_ms = stats::min_some(c.min_gap_ms, d.min_gap_ns.map(|g| g / 1_000_000));
            // After publishing stopped, the last digest must be the room's newest publication.
            if let Some(e) = expect.filter(|e| e.sent > 0 && t.joined) {
                if !d.has_newest(digest::newest_acked(e.sent, &e.excluded), e.sent) {
                    c.stale += 1;
                }
            }
            continue;
        }
        // Only members that joined could have received anything; failed joins are counted apart.
        if t.joined {
            if let Some(e) = expect {
                result.missing += t.missing(e.sent, &e.excluded);
            }
        }
    }
    result.snap = shared.live.snapshot();
    {
        let l = shared.hists.latency.lock().unwrap();
        result.latency_us = stats::to_buckets(&l.hist);
        result.last_us = l.last_list();
    }
    result.join_us = stats::to_buckets(&shared.hists.join.lock().unwrap());
    result.recover_ms = stats::to_buckets(&shared.hists.recover.lock().unwrap());
    let _ = events.send(GroupEvent::Done(Box::new(result))).await;
}

/// A group as seen by the parent.
pub(crate) struct Handle {
    pub cmds: mpsc::Sender<GroupCmd>,
    pub events: mpsc::Receiver<GroupEvent>,
    /// The worker process, if remote; killed on drop so a failed run leaves no stray workers.
    pub child: Option<Child>,
}

pub(crate) fn spawn_local(job: GroupJob) -> Handle {
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    tokio::spawn(run(job, cmd_rx, ev_tx));
    Handle {
        cmds: cmd_tx,
        events: ev_rx,
        child: None,
    }
}

/// Starts `roomcast-bench worker` and bridges its stdin/stdout to channels.
pub(crate) fn spawn_worker(job: GroupJob) -> Result<Handle> {
    let exe = std::env::current_exe().context("own executable")?;
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawn worker")?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<GroupCmd>(8);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let first = serde_json::to_string(&job)?;
    tokio::spawn(async move {
        let mut line = first + "\n";
        loop {
            if stdin.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            let _ = stdin.flush().await;
            match cmd_rx.recv().await {
                Some(c) => line = serde_json::to_string(&c).expect("serialisable") + "\n",
                None => return,
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            match serde_json::from_str::<GroupEvent>(&l) {
                Ok(ev) => {
                    if ev_tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("worker sent an unreadable line ({e}): {l}"),
            }
        }
    });
    Ok(Handle {
        cmds: cmd_tx,
        events: ev_rx,
        child: Some(child),
    })
}

/// Entry point of `roomcast-bench worker`: first stdin line is the job, later lines are commands.
pub(crate) async fn worker_main() -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let job: GroupJob =
        serde_json::from_str(&lines.next_line().await?.context("no job on stdin")?)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    tokio::spawn(run(job, cmd_rx, ev_tx));
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            match serde_json::from_str::<GroupCmd>(&l) {
                Ok(c) => {
                    if cmd_tx.send(c).await.is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("worker: bad command ({e})"),
            }
        }
    });
    let mut out = tokio::io::stdout();
    while let Some(ev) = ev_rx.recv().await {
        let done = matches!(ev, GroupEvent::Done(_));
        out.write_all((serde_json::to_string(&ev)? + "\n").as_bytes())
            .await?;
        out.flush().await?;
        if done {
            break;
        }
    }
    Ok(())
}
