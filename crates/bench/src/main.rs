//! `roomcast-bench`: the load generator every performance claim of roomcast rests on.
//!
//! `roomcast-bench run --target SPEC ...` runs the scenarios (idle, fanout, storm, accept, large) against each
//! target, always including the `limit` baseline (a raw fan-out server this binary starts as a child)
//! so that every figure has a ratio to what the machine can do at all. `limit-server` and `worker` are
//! the roles the binary re-executes itself in. See BENCHMARKS.md for the commands and results.

mod backend;
mod bus;
mod chat;
mod codec;
mod digest;
mod fleet;
mod group;
mod http;
mod limit;
mod member;
mod notify;
mod pb;
mod personal;
mod plan;
mod plot;
mod procfs;
mod publisher;
mod report;
mod scenario;
mod stats;
mod storm;
mod stream;
mod target;
mod tracker;
mod wire;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use target::{Kind, Target};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    name = "roomcast-bench",
    version,
    about = "Load generator for roomcast and its peers"
)]
struct Cli {
    /// Tokio worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios against targets and report.
    Run(Box<plan::RunArgs>),
    /// The raw fan-out limit server (started by `run`; usable alone).
    LimitServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Share the port with other limit processes (SO_REUSEPORT).
        #[arg(long)]
        reuseport: bool,
    },
    /// A member-group worker process (started by `run`; reads its job on stdin).
    Worker,
    /// Latency of the chat reads (`roomcast.read`, a full `roomcast.rooms` listing) for one
    /// user in many rooms, against a running node.
    ChatCost(chat::ChatArgs),
    /// An application backend that accepts every proxy request (publish-proxy runs).
    AcceptBackend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Send-to-user deliveries/s across running roomcast nodes (`bench/user-publish.sh`).
    UserPublish(personal::Args),
    /// Offline notifications/s to a built-in webhook receiver, beside the seed example's
    /// deliveries/s (notifications off, then on), against a running node.
    Notify(notify::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    let outcome = rt.block_on(async move {
        match cli.cmd {
            Cmd::Run(args) => run(*args).await,
            Cmd::LimitServer { listen, reuseport } => {
                limit::serve(&listen, reuseport).await.map(|_| true)
            }
            Cmd::Worker => group::worker_main().await.map(|_| true),
            Cmd::ChatCost(args) => chat::run(args).await,
            Cmd::AcceptBackend { listen } => backend::serve(&listen).await.map(|_| true),
            Cmd::UserPublish(args) => personal::run(args).await,
            Cmd::Notify(args) => notify::run(args).await,
        }
    });
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("roomcast-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts this binary as the limit server on a free loopback port, as `processes` processes sharing
/// it when more than one; returns the children (killed on drop).
async fn start_limit(t: &mut Target, processes: u32) -> Result<Vec<tokio::process::Child>> {
    let mut children = Vec::new();
    let mut listen = "127.0.0.1:0".to_string();
    for _ in 0..processes.max(1) {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.args(["limit-server", "--listen", &listen]);
        if processes > 1 {
            cmd.arg("--reuseport");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start limit server")?;
        let out = child.stdout.take().context("limit stdout")?;
        let mut lines = tokio::io::BufReader::new(out).lines();
        let line = lines
            .next_line()
            .await?
            .context("limit server printed nothing")?;
        listen = line
            .strip_prefix("LISTEN ")
            .context("unexpected limit server output")?
            .to_string();
        t.pids.push(child.id().context("limit pid")?);
        children.push(child);
    }
    t.addr = Some(listen.parse()?);
    Ok(children)
}

/// Returns Ok(true) when every run passed its correctness checks.
async fn run(args: plan::RunArgs) -> Result<bool> {
    let mut targets = args.targets()?;
    let mut own = Vec::new();
    for t in targets
        .iter_mut()
        .filter(|t| t.kind == Kind::Limit && t.addr.is_none())
    {
        own.extend(start_limit(t, args.limit_processes).await?);
    }
    let cases = args.cases(&targets);
    let mut runs = Vec::new();
    for (target, case) in &cases {
        eprintln!(
            "== {} on {}: {} members in {} rooms{}",
            case.scenario,
            target.name,
            case.members,
            case.rooms,
            case.publish
                .as_ref()
                .map(|p| format!(
                    ", rate/room {:?}, window {}{}",
                    p.rate_per_room,
                    p.window,
                    if p.via_http { ", via HTTP API" } else { "" }
                ))
                .unwrap_or_default()
        );
        let r = match scenario::run(target, case).await {
            Ok(r) => r,
            Err(e) => report::RunResult {
                scenario: case.scenario.into(),
                target: target.name.clone(),
                problems: vec![format!("run error: {e:#}")],
                ..Default::default()
            },
        };
        if !r.problems.is_empty() {
            eprintln!("   PROBLEMS: {}", r.problems.join("; "));
        }
        runs.push(r);
        // Let the server close the previous fleet's sockets before the next case.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for mut c in own {
        let _ = c.kill().await;
    }
    println!("{}", report::summary(&runs));
    if let Some(t) = report::storm_summary(&runs) {
        println!("{t}");
    }
    if let Some(t) = report::large_summary(&runs) {
        println!("{t}");
    }
    let doc = report::Report {
        date: procfs::utc_now(),
        machine: procfs::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        runs,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        eprintln!("results: {}", path.display());
    }
    let dir = args
        .plots
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench-results"));
    if !args.no_plots {
        for p in plot::write_all(&doc.runs, &dir)? {
            eprintln!("plot: {}", p.display());
        }
    }
    let bad: Vec<String> = doc
        .runs
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| format!("{} on {}: {}", r.scenario, r.target, r.problems.join("; ")))
        .collect();
    if bad.is_empty() {
        eprintln!("all correctness counters are zero");
        Ok(true)
    } else {
        eprintln!("FAILED correctness checks:\n  {}", bad.join("\n  "));
        Ok(false)
    }
}
