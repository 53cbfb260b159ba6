//! `roomcast-chaos`: a Jepsen-style run of a roomcast cluster, and a socket-level protocol
//! fuzzer of one node.
//!
//! - `roomcast-chaos --seconds N --seed S --out DIR`: three nodes on Redis and PostgreSQL,
//!   writers and members on every node, faults on a seeded schedule ([`faults`]), then the
//!   [`checker`]; exits 1 on any lost, duplicated, reordered or gap delivery.
//! - `roomcast-chaos fuzz --seconds N`: see [`fuzz`].
//!
//! The `roomcast` binary is the one beside this one (`target/<profile>/roomcast`) or
//! `ROOMCAST_BIN`.

mod checker;
mod cluster;
mod faults;
mod fuzz;
mod run;
mod summary;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Seconds of faults (the heal and the wait for members come after).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the fault schedule (random when not given; the report names it).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the report, the summary and the node logs go.
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
    /// WebSocket writers per node (each node also has one server API writer).
    #[arg(long, default_value_t = 2)]
    ws_writers: usize,
    /// Members per node.
    #[arg(long, default_value_t = 2)]
    members: usize,
    /// Milliseconds between one writer's publishes.
    #[arg(long, default_value_t = 20)]
    pace_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Fuzz one node's WebSocket endpoint (see the fuzz module).
    Fuzz {
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long)]
        seed: Option<u64>,
        /// Concurrent fuzzing connections.
        #[arg(long, default_value_t = 40)]
        connections: usize,
        /// The node's RSS may not exceed this many MiB.
        #[arg(long, default_value_t = 512)]
        max_rss_mib: u64,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let cli = Cli::parse();
    let failed = match cli.command {
        None => {
            let seed = cli.seed.unwrap_or_else(|| fastrand::u64(..));
            run::run(run::Options {
                seconds: cli.seconds,
                seed,
                out: cli.out,
                nodes: 3,
                ws_writers: cli.ws_writers,
                members: cli.members,
                pace: Duration::from_millis(cli.pace_ms),
                converge: Duration::from_secs(60),
            })
            .await
        }
        Some(Command::Fuzz {
            seconds,
            seed,
            connections,
            max_rss_mib,
        }) => {
            fuzz::run(fuzz::Options {
                seconds,
                seed: seed.unwrap_or_else(|| fastrand::u64(..)),
                connections,
                max_rss_mib,
            })
            .await
        }
    };
    std::process::exit(i32::from(failed));
}
