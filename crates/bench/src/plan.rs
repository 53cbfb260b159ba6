//! Turns the command line into the list of (target, case) runs: scenario parameters, the
//! `--preset seed500` worked example, and the small `--quick` plan that CI runs.

use crate::digest::SubOpts;
use crate::scenario::{Case, Publish, Storm};
use crate::target::{Kind, Target};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub(crate) struct RunArgs {
    /// A server to measure (repeatable), e.g. `kind=roomcast,addr=127.0.0.1:8000,pid=123,secret=S,api_key=K`.
    /// The limit baseline (`kind=limit`) is added unless --no-limit.
    #[arg(long = "target")]
    pub target: Vec<String>,
    #[arg(long)]
    pub no_limit: bool,
    /// The transport of roomcast members (publishers always use WebSocket): fan-out into
    /// SSE or HTTP-streaming responses with emulation, beside the limit baseline.
    #[arg(long, value_enum)]
    pub transport: Option<crate::target::Transport>,
    /// Limit server processes sharing one port (SO_REUSEPORT); above 1 the limit runs idle only, to
    /// hold more connections than one process's 20,000 files.
    #[arg(long, default_value_t = 1)]
    pub limit_processes: u32,
    /// Comma-separated subset of idle,fanout,storm,accept,large.
    #[arg(
        long,
        default_value = "idle,fanout,storm,accept",
        value_delimiter = ','
    )]
    pub scenarios: Vec<String>,
    /// Every scenario, small and fast (CI smoke run: correctness only, no timing asserted).
    #[arg(long)]
    pub quick: bool,
    /// `seed500`: the seed's worked example, one 500-member room at 1,000 msg/s.
    #[arg(long)]
    pub preset: Option<String>,

    /// idle: connected, subscribed members.
    #[arg(long, default_value_t = 10_000)]
    pub idle_members: u32,
    /// idle: members per room.
    #[arg(long, default_value_t = 100)]
    pub idle_room_size: u32,

    /// large: members joining one room (and, for comparison, the same number in rooms of 100).
    #[arg(long, default_value_t = 15_000)]
    pub large_members: u32,
    /// large: publications/s to the room of `--large-members` with live and digest members
    /// (roomcast targets; `--digest-live` of them live, default 100).
    #[arg(long, default_value_t = 100.0)]
    pub large_rate: f64,
    /// large: members of one room, all live, on one node: time from publish to the last delivery
    /// and the server's CPU per thread (0: no such case).
    #[arg(long, default_value_t = 19_900)]
    pub large_local: u32,
    /// large: publications/s to the `--large-local` room.
    #[arg(long, default_value_t = 10.0)]
    pub large_local_rate: f64,

    /// Members subscribe with `join_leave: true`. The idle scenario then runs each roomcast
    /// target twice, without and with (named `NAME-join-leave`), for the cost of asking.
    #[arg(long)]
    pub join_leave: bool,
    /// Members idx < N subscribe live, the others with `data: {"digest": true}` (roomcast
    /// targets; fanout cases, and the large publishing case where it defaults to 100).
    #[arg(long)]
    pub digest_live: Option<u32>,
    /// The server's `digest_interval_ms`: digest deliveries closer than this minus the tolerance
    /// are a problem.
    #[arg(long, default_value_t = 1000)]
    pub digest_interval_ms: u64,
    /// Slack for receipt jitter (a server that sends every publication or two ticks back to back
    /// gives gaps of milliseconds, far below it).
    #[arg(long, default_value_t = 250)]
    pub digest_tolerance_ms: u64,

    /// fanout: room sizes to sweep (members per room).
    #[arg(long, default_value = "10,100,500", value_delimiter = ',')]
    pub sizes: Vec<u32>,
    /// fanout: rooms (each with one publisher).
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// fanout: publications per second per room.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Payload size in bytes (the JSON data object).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Seconds of publishing per fanout/storm/accept case.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,

    /// storm: members; all drop at once, their rooms move on, all reconnect at once with recovery.
    #[arg(long, default_value_t = 15_000)]
    pub storm_members: u32,
    #[arg(long, default_value_t = 150)]
    pub storm_rooms: u32,
    /// storm: publications each room gets while its members are away (each recovery must bring
    /// exactly these).
    #[arg(long, default_value_t = 100)]
    pub storm_behind: u64,
    /// storm: concurrent reconnect handshakes over all bench processes ("at once", within the
    /// server's 1,024-deep accept queue).
    #[arg(long, default_value_t = 1000)]
    pub storm_concurrency: usize,
    /// storm: each member waits a delay spread over 0..this many ms before reconnecting (the
    /// SDKs' reconnect jitter); 0: all at once.
    #[arg(long, default_value_t = 0)]
    pub storm_jitter_ms: u64,

    /// accept: rooms, each with one unpaced publisher.
    #[arg(long, default_value_t = 4)]
    pub accept_rooms: u32,
    #[arg(long, default_value_t = 2)]
    pub accept_room_size: u32,
    /// Unacknowledged publishes a WebSocket publisher may have in flight.
    #[arg(long, default_value_t = 32)]
    pub window: usize,

    /// Members per process before spreading over worker processes (one process holds <= 20,000 files).
    #[arg(long, default_value_t = 15_000)]
    pub per_process: u32,
    /// Concurrent handshakes in flight (kept below the 128-deep default accept queue of many servers).
    #[arg(long, default_value_t = 100)]
    pub join_concurrency: usize,

    /// Write all results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Directory for SVG plots (default bench-results/).
    #[arg(long)]
    pub plots: Option<PathBuf>,
    #[arg(long)]
    pub no_plots: bool,
}

impl RunArgs {
    pub(crate) fn targets(&self) -> Result<Vec<Target>> {
        let mut ts: Vec<Target> = self
            .target
            .iter()
            .map(|s| Target::parse(s))
            .collect::<Result<_>>()?;
        if let Some(tr) = self.transport {
            for t in ts.iter_mut().filter(|t| t.kind == Kind::Roomcast) {
                if t.proto && tr != crate::target::Transport::Websocket {
                    anyhow::bail!("target {}: proto=1 is for WebSocket members only", t.name);
                }
                t.transport = tr;
                t.name.push_str(tr.suffix());
            }
        }
        if !self.no_limit && !ts.iter().any(|t| t.kind == Kind::Limit) {
            ts.push(Target::parse("kind=limit")?);
        }
        // The limit runs first in every scenario, so later tables can show ratios to it.
        ts.sort_by_key(|t| t.kind != Kind::Limit);
        Ok(ts)
    }

    fn wants(&self, s: &str) -> bool {
        self.scenarios.iter().any(|x| x == s)
    }

    pub(crate) fn cases(&self, all: &[Target]) -> Vec<(Target, Case)> {
        // A multi-process limit has one room table per process: fine for idle, wrong for fan-out.
        let split_limit = |t: &&Target| !(t.kind == Kind::Limit && t.pids.len() > 1);
        let fanning: Vec<Target> = all.iter().filter(split_limit).cloned().collect();
        let mut a = self.clone();
        if self.quick {
            a.idle_members = 300;
            a.idle_room_size = 50;
            // Two worker processes, so CI exercises the multi-process path too.
            a.per_process = 150;
            a.sizes = vec![10, 50];
            a.rooms = 2;
            a.rate = 100.0;
            a.duration = 3;
            a.storm_members = 200;
            a.storm_rooms = 4;
            a.storm_behind = 20;
            a.accept_rooms = 2;
            a.window = 8;
        }
        if self.preset.as_deref() == Some("seed500") {
            a.sizes = vec![500];
            a.rooms = 1;
            a.rate = 1000.0;
        }
        let dur = Duration::from_secs(a.duration.max(1));
        let base = |scenario, members, rooms, publish, storm: bool, per_process| Case {
            scenario,
            members,
            rooms,
            publish,
            duration: dur,
            storm: storm.then_some(Storm {
                behind: a.storm_behind,
                concurrency: a.storm_concurrency,
                jitter: Duration::from_millis(a.storm_jitter_ms),
            }),
            per_process,
            join_concurrency: a.join_concurrency,
            opts: SubOpts {
                join_leave: a.join_leave,
                digest_live: None,
                digest_interval_ms: a.digest_interval_ms,
                digest_tolerance_ms: a.digest_tolerance_ms,
            },
        };
        let roomcast = |t: &Target| t.kind == Kind::Roomcast;
        let paced = |rate| {
            Some(Publish {
                rate_per_room: Some(rate),
                window: a.window.max(256),
                payload: a.payload,
                via_http: false,
            })
        };
        let mut out = Vec::new();
        if self.wants("idle") {
            let rooms = a.idle_members.div_ceil(a.idle_room_size.max(1));
            for t in all {
                let mut c = base("idle", a.idle_members, rooms, None, false, a.per_process);
                c.opts.join_leave = false;
                out.push((t.clone(), c.clone()));
                if a.join_leave && roomcast(t) {
                    let mut named = t.clone();
                    named.name = format!("{}-join-leave", t.name);
                    c.opts.join_leave = true;
                    out.push((named, c));
                }
            }
        }
        if self.wants("large") {
            // One room of every member, then the same members in rooms of 100: RSS per
            // connection and join rate of the large room against the small-room figure.
            let n = if self.quick { 300 } else { a.large_members };
            for t in all {
                for rooms in [1, n.div_ceil(100)] {
                    out.push((
                        t.clone(),
                        base("large", n, rooms, None, false, a.per_process),
                    ));
                }
            }
            // The same room publishing, a few members live and the rest on digest: only roomcast
            // has digests, the limit would send every member everything.
            for t in all.iter().filter(|t| roomcast(t)) {
                let mut c = base("large", n, 1, paced(a.large_rate), false, a.per_process);
                c.opts.digest_live = Some(a.digest_live.unwrap_or(100).min(n));
                out.push((t.clone(), c));
            }
            // One room of `large_local` live members on one node: publish to the last delivery.
            let local = if self.quick {
                a.large_local.min(200)
            } else {
                a.large_local
            };
            if local > 0 {
                for t in all.iter().filter(|t| t.nodes() == 1 && split_limit(t)) {
                    let c = base(
                        "large",
                        local,
                        1,
                        paced(a.large_local_rate),
                        false,
                        a.per_process,
                    );
                    out.push((t.clone(), c));
                }
            }
        }
        // Heaviest last: a peer that falls over in the biggest fan-out cannot spoil the other cases.
        let targets = &fanning;
        if self.wants("accept") {
            let members = a.accept_rooms * a.accept_room_size;
            let unpaced = |via_http| {
                Some(Publish {
                    rate_per_room: None,
                    window: a.window,
                    payload: a.payload,
                    via_http,
                })
            };
            for t in targets {
                out.push((
                    t.clone(),
                    base(
                        "accept",
                        members,
                        a.accept_rooms,
                        unpaced(false),
                        false,
                        15_000,
                    ),
                ));
                if t.kind == Kind::Roomcast {
                    let mut named = t.clone();
                    named.name = format!("{}-http", t.name);
                    out.push((
                        named,
                        base(
                            "accept",
                            members,
                            a.accept_rooms,
                            unpaced(true),
                            false,
                            15_000,
                        ),
                    ));
                }
            }
        }
        if self.wants("storm") {
            // The limit has no recovery: it runs the drop and reconnect without publications, the
            // ceiling for the reconnect rate. Peers without recovery are not stormed.
            for t in targets
                .iter()
                .filter(|t| t.recovers() || t.kind == Kind::Limit)
            {
                let mut c = base(
                    "storm",
                    a.storm_members,
                    a.storm_rooms,
                    t.recovers().then(|| Publish {
                        rate_per_room: None,
                        window: a.window.max(256),
                        payload: a.payload,
                        via_http: false,
                    }),
                    true,
                    a.per_process,
                );
                if !t.recovers() {
                    c.storm = c.storm.map(|s| Storm { behind: 0, ..s });
                }
                out.push((t.clone(), c));
            }
        }
        if self.wants("fanout") {
            for &size in &a.sizes {
                for t in targets {
                    let mut c = base(
                        "fanout",
                        size * a.rooms,
                        a.rooms,
                        paced(a.rate),
                        false,
                        15_000,
                    );
                    if roomcast(t) {
                        c.opts.digest_live = a.digest_live;
                    }
                    out.push((t.clone(), c));
                }
            }
        }
        out
    }
}
