//! What a run produced: one `RunResult` per (scenario, target), the JSON document written by `--json`,
//! the correctness verdict, and the human summary with ratios to the limit baseline.

use crate::stats::{self, Buckets};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
}

impl Percentiles {
    pub(crate) fn of(b: &Buckets) -> Option<Percentiles> {
        let mut h = stats::histogram();
        stats::merge_into(&mut h, b);
        (!h.is_empty()).then(|| Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        })
    }
}

/// Points (quantile, value) for a CDF plot, log-spaced towards the tail.
pub(crate) fn cdf(b: &Buckets) -> Vec<(f64, u64)> {
    let mut h = stats::histogram();
    stats::merge_into(&mut h, b);
    if h.is_empty() {
        return vec![];
    }
    let mut out = Vec::new();
    let mut q: f64 = 0.0;
    while q < 0.99999 {
        out.push((q, h.value_at_quantile(q)));
        // Step by a tenth of the remaining tail: dense near 99%, 99.9%, 99.99%.
        q += ((1.0 - q) / 10.0).max(0.00001);
    }
    out.push((1.0, h.max()));
    out
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Params {
    pub members: u32,
    pub rooms: u32,
    pub room_size: u32,
    /// Publications per second per room; None = unpaced (as fast as the ack window allows).
    pub rate_per_room: Option<f64>,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub window: usize,
    pub via_http: bool,
    /// Storm: publications each room got while its members were away.
    pub storm_behind: Option<u64>,
    /// Storm: reconnect delays spread over 0..this many ms (0: all at once).
    pub storm_jitter_ms: Option<u64>,
    /// Members subscribed with `join_leave: true`.
    pub join_leave: bool,
    /// Some(n): members idx < n live, the rest on digest (`data: {"digest": true}`).
    pub digest_live: Option<u32>,
    /// Server nodes the members were spread over (idx % nodes).
    pub nodes: usize,
}

/// What the digest members got (issue #8).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct DigestFigures {
    pub members: u64,
    pub deliveries: u64,
    /// Digest deliveries per digest member per second, over the publishing plus one interval
    /// (the newest comes at the tick after the last publication): at most about 1/interval.
    pub per_member_per_s: f64,
    /// Deliveries sooner than the interval (minus the tolerance) after the previous one.
    pub too_soon: u64,
    /// Deliveries not newer than the previous one.
    pub not_newer: u64,
    /// Members whose last delivery, after publishing stopped, was not the newest publication.
    pub stale: u64,
    /// The shortest gap between two digest deliveries of one member, ms.
    pub min_gap_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct RunResult {
    pub scenario: String,
    pub target: String,
    pub params: Params,
    pub bench_processes: usize,
    /// 1-minute load average when the case started (2 cores here: above ~1 someone else was busy too).
    pub loadavg_at_start: Option<f64>,
    pub joined: u64,
    pub join_failed: u64,
    pub joins_per_s: f64,
    /// Connect + authenticate + subscribe time per member, µs.
    pub join_us: Option<Percentiles>,
    pub server_rss_kib_before: Option<u64>,
    pub server_rss_kib_after: Option<u64>,
    pub server_kib_per_conn: Option<f64>,
    /// Machine-wide kernel TCP memory growth per connection (both loopback ends), KiB.
    pub tcp_kib_per_conn: Option<f64>,
    pub server_cpu_s: Option<f64>,
    /// CPU seconds of each busy server thread (name, seconds; above 10 ms, busiest first)
    /// over the publishing: how the fan-out spreads over the cores.
    pub server_thread_cpu_s: Vec<(String, f64)>,
    pub bench_cpu_s: Option<f64>,
    pub published: u64,
    pub acked: u64,
    pub acks_per_s: f64,
    pub publish_failed: u64,
    pub publish_errors: Vec<String>,
    /// Send-to-ack latency, µs.
    pub ack_us: Option<Percentiles>,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Server CPU (summed over the nodes) per acknowledged publication, µs.
    pub server_cpu_us_per_publication: Option<f64>,
    /// Per publication: µs from publish to its last delivery (over every live member).
    pub last_delivery_us: Option<Percentiles>,
    /// Digest members' figures, when some members were on digest.
    pub digest: Option<DigestFigures>,
    /// Cluster runs with `redis=`: the bus traffic per publication.
    pub bus: Option<crate::bus::BusTraffic>,
    /// Publish-to-receipt latency of live deliveries, µs.
    pub latency_us: Option<Percentiles>,
    pub latency_cdf: Vec<(f64, u64)>,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub misrouted: u64,
    pub lost_connections: u64,
    pub reconnects: u64,
    pub recovered: u64,
    pub recover_failed: u64,
    /// Storm: ms from the reconnect order until every member was back and recovered (max over
    /// members).
    pub recover_all_ms: Option<u64>,
    /// Storm: ms from the reconnect order to each member's recovered re-subscription.
    pub recover_ms: Option<Percentiles>,
    /// Storm: members back after the reconnect order.
    pub rejoined: u64,
    /// Storm: members back per second, from the reconnect order to the last one back.
    pub rejoins_per_s: Option<f64>,
    /// Storm: recoveries that were not exactly the missed publications, in order.
    pub recover_wrong: u64,
    /// Storm: seconds the publishers took to put every room `storm_behind` ahead.
    pub storm_publish_s: Option<f64>,
    /// Chat targets: read cursors the members moved (`roomcast.read`), and those refused.
    #[serde(default)]
    pub reads: u64,
    #[serde(default)]
    pub read_failed: u64,
    /// Join and leave pushes the members received (after their own join).
    pub join_leave_pushes: u64,
    /// Correctness problems; any entry fails the run.
    pub problems: Vec<String>,
}

impl RunResult {
    /// Fills `problems` from the correctness counters (never from timings).
    pub(crate) fn judge(&mut self) {
        let mut p = Vec::new();
        let d = self.digest.clone().unwrap_or_default();
        for (name, v) in [
            ("digest deliveries sooner than the interval", d.too_soon),
            ("digest deliveries not newer than the previous", d.not_newer),
            (
                "digest members whose last delivery is not the newest",
                d.stale,
            ),
            ("missing deliveries", self.missing),
            ("duplicate deliveries", self.duplicates),
            ("out-of-order deliveries", self.out_of_order),
            ("misrouted deliveries", self.misrouted),
            ("failed joins", self.join_failed),
            ("failed publishes", self.publish_failed),
            ("recoveries that did not recover", self.recover_failed),
            ("connections lost for good", self.lost_connections),
            ("read cursors refused", self.read_failed),
            (
                "recoveries not exactly the missed publications in order",
                self.recover_wrong,
            ),
            (
                "members not back after the storm",
                if self.params.storm_behind.is_some() {
                    self.joined.saturating_sub(self.rejoined)
                } else {
                    0
                },
            ),
        ] {
            if v > 0 {
                p.push(format!("{v} {name}"));
            }
        }
        p.extend(
            self.publish_errors
                .iter()
                .map(|e| format!("publisher: {e}")),
        );
        self.problems = p;
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub runs: Vec<RunResult>,
}

fn ratio(v: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    }
}

fn us(p: &Option<Percentiles>) -> String {
    p.as_ref().map_or_else(
        || "-".into(),
        |p| {
            format!(
                "{}/{}/{}/{}",
                fmt_us(p.p50),
                fmt_us(p.p90),
                fmt_us(p.p99),
                fmt_us(p.p999)
            )
        },
    )
}

fn fmt_us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.0}ms", v as f64 / 1000.0)
    } else if v >= 1000 {
        format!("{:.1}ms", v as f64 / 1000.0)
    } else {
        format!("{v}µs")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// A plain-text (and Markdown-compatible) table per run; ratios are to the `limit` run of the same
/// scenario and parameters.
pub(crate) fn summary(runs: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario | target | members | rooms x size | rate/room | joins/s | KiB/conn (server) | deliveries/s | vs limit | CPU µs/delivery | latency p50/p90/p99/p99.9 | acks/s | ack p50/p90/p99/p99.9 | recover all | problems |"
    );
    let _ = writeln!(s, "|{}", "---|".repeat(15));
    for r in runs {
        let base = runs.iter().find(|b| {
            b.target == "limit"
                && b.scenario == r.scenario
                && b.params.room_size == r.params.room_size
        });
        let key = if r.scenario == "accept" {
            r.acks_per_s
        } else {
            r.deliveries_per_s
        };
        let base_key = base.map(|b| {
            if r.scenario == "accept" {
                b.acks_per_s
            } else {
                b.deliveries_per_s
            }
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} x {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} |",
            r.scenario,
            r.target,
            r.joined,
            r.params.rooms,
            r.params.room_size,
            match (r.scenario.as_str(), r.params.rate_per_room) {
                ("idle" | "large", _) => "-".into(),
                (_, Some(v)) => format!("{v:.0}"),
                (_, None) => "max".into(),
            },
            // A connect rate over a handful of members says nothing; show it where members are many.
            if matches!(r.scenario.as_str(), "idle" | "storm" | "large") { format!("{:.0}", r.joins_per_s) } else { "-".into() },
            opt(r.server_kib_per_conn, 1),
            r.deliveries_per_s,
            if matches!(r.scenario.as_str(), "idle" | "large") { "-".into() } else { ratio(key, base_key) },
            opt(r.server_cpu_us_per_delivery, 2),
            us(&r.latency_us),
            r.acks_per_s,
            us(&r.ack_us),
            r.recover_all_ms.map_or_else(|| "-".into(), |v| format!("{v}ms")),
            if r.problems.is_empty() { "none".into() } else { r.problems.join("; ") },
        );
    }
    // What asking for join/leave costs: the pushes it brings (none for members that did not ask).
    for r in runs
        .iter()
        .filter(|r| r.params.join_leave || r.join_leave_pushes > 0)
    {
        let _ = writeln!(
            s,
            "\n{} {} {}x{}: {} join/leave pushes received (join_leave asked: {})",
            r.scenario,
            r.target,
            r.params.rooms,
            r.params.room_size,
            r.join_leave_pushes,
            r.params.join_leave
        );
    }
    // Where the server's CPU went while publishing, thread by thread (fan-out on every core).
    for r in runs.iter().filter(|r| !r.server_thread_cpu_s.is_empty()) {
        let threads: Vec<String> = r
            .server_thread_cpu_s
            .iter()
            .take(8)
            .map(|(t, secs)| format!("{t} {secs:.2}s"))
            .collect();
        let _ = writeln!(
            s,
            "\n{} {} {}x{}: server CPU by thread: {}",
            r.scenario,
            r.target,
            r.params.rooms,
            r.params.room_size,
            threads.join(", ")
        );
    }
    s
}

/// Per publishing run: publish-to-receipt and publish-to-last-delivery, CPU per publication, and
/// where they apply the digest members' and the bus's figures (issue #8's large rooms).
pub(crate) fn large_summary(runs: &[RunResult]) -> Option<String> {
    let pubs: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.last_delivery_us.is_some())
        .collect();
    if pubs.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| scenario | target | nodes | members live+digest | rate/room | live p50/p99 | publish to last p50/p99 | CPU µs/publication | digests/member/s | bus out B/publication (payload {}B) | problems |",
        pubs[0].params.payload_bytes
    );
    let _ = writeln!(s, "|{}", "---|".repeat(11));
    for r in pubs {
        let dm = r.digest.as_ref().map_or(0, |d| d.members);
        let p50_99 = |p: &Option<Percentiles>| {
            p.as_ref().map_or_else(
                || "-".into(),
                |p| format!("{}/{}", fmt_us(p.p50), fmt_us(p.p99)),
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}+{} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.target,
            r.params.nodes.max(1),
            r.joined.saturating_sub(dm),
            dm,
            r.params
                .rate_per_room
                .map_or_else(|| "max".into(), |v| format!("{v:.0}")),
            p50_99(&r.latency_us),
            p50_99(&r.last_delivery_us),
            opt(r.server_cpu_us_per_publication, 0),
            r.digest.as_ref().map_or_else(
                || "-".into(),
                |d| format!(
                    "{:.2} (min gap {})",
                    d.per_member_per_s,
                    d.min_gap_ms
                        .map_or_else(|| "-".into(), |g| format!("{g}ms"))
                )
            ),
            r.bus.as_ref().map_or_else(
                || "-".into(),
                |b| {
                    let calls: Vec<String> = b
                        .calls_per_publication
                        .iter()
                        .map(|(c, n)| format!("{c} {n:.1}"))
                        .collect();
                    format!(
                        "{:.0} ({} nodes; in {:.0}; {:.1} commands: {})",
                        b.out_bytes_per_publication,
                        b.nodes,
                        b.in_bytes_per_publication,
                        b.commands_per_publication,
                        calls.join(", ")
                    )
                }
            ),
            if r.problems.is_empty() {
                "none".into()
            } else {
                r.problems.join("; ")
            },
        );
    }
    Some(s)
}

/// The storm's own table: first-join rate, then the reconnect burst, per target (the limit first).
pub(crate) fn storm_summary(runs: &[RunResult]) -> Option<String> {
    let storms: Vec<&RunResult> = runs.iter().filter(|r| r.scenario == "storm").collect();
    if storms.is_empty() {
        return None;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| storm target | members | rooms x size | behind | jitter | joins/s | back | back/s | recovered | exact | recovery p50/p99/max | all back | publish behind | problems |"
    );
    let _ = writeln!(s, "|{}", "---|".repeat(14));
    for r in storms {
        let ms = |v: u64| format!("{v}ms");
        let _ = writeln!(
            s,
            "| {} | {} | {} x {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.joined,
            r.params.rooms,
            r.params.room_size,
            r.params.storm_behind.unwrap_or(0),
            ms(r.params.storm_jitter_ms.unwrap_or(0)),
            r.joins_per_s,
            r.rejoined,
            opt(r.rejoins_per_s, 0),
            r.recovered,
            r.rejoined.saturating_sub(r.recover_wrong),
            r.recover_ms.as_ref().map_or_else(
                || "-".into(),
                |p| format!("{}/{}/{}", ms(p.p50), ms(p.p99), ms(p.max))
            ),
            r.recover_all_ms.map_or_else(|| "-".into(), ms),
            r.storm_publish_s
                .map_or_else(|| "-".into(), |v| format!("{v:.2}s")),
            if r.problems.is_empty() {
                "none".into()
            } else {
                r.problems.join("; ")
            },
        );
    }
    Some(s)
}
