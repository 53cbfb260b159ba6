//! Prometheus metrics (`GET /metrics`, text exposition format).
//!
//! Built on `prometheus-client`: every metric is a handle onto atomics, created once
//! (`get`), so counting on a hot path is one atomic add with no registry lookup, no
//! global recorder and no lock (label families take a read lock and a hash only on paths
//! that are not per delivery: commands, disconnects, recoveries). Counters the node keeps
//! anyway (deliveries and connections in the hub, accepted publications in the node, the
//! bus's reorder counters) are read at scrape time, not counted twice. Process figures
//! (CPU, RSS, open files) are read from `/proc/self` at scrape time.
//!
//! One process has one set (a static): a test that reads exact values runs its own node
//! process.

use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::node::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// A close code, or `none` when the socket ended without a close frame.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub code: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: &'static str,
}

/// Every metric roomcast counts itself (see the module doc for those read at scrape time).
pub struct Metrics {
    registry: Registry,
    pub connects: Counter,
    pub disconnects: Family<CodeLabel, Counter>,
    pub commands: Family<MethodLabel, Counter>,
    pub command_errors: Family<ErrorLabel, Counter>,
    pub subscriptions: Gauge,
    pub outbox_bytes: Gauge,
    pub slow_closes: Counter,
    pub store_commit_seconds: Histogram,
    pub store_commit_batch: Histogram,
    pub backend_errors: Family<BackendLabel, Counter>,
    pub recoveries: Family<OutcomeLabel, Counter>,
    pub recovered_publications: Counter,
    pub bus_published: Counter,
    pub bus_received: Counter,
    pub token_refusals: Counter,
    /// Offline notifications (`notify/`): webhook requests acknowledged (2xx), attempts
    /// that failed (retried), users named in acknowledged requests.
    pub notify_requests: Counter,
    pub notify_failures: Counter,
    pub notify_users: Counter,
}

/// This process's metrics (reach them through `get`).
static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Off with `metrics = false`: nothing is counted and `/metrics` answers 404.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches counting on or off for the whole process (at start, from the config).
pub fn enable(on: bool) {
    ENABLED.store(on, Relaxed);
}

/// This process's metrics, `None` when they are off: a hot path counts with
/// `if let Some(m) = metrics::get() { ... }`, one relaxed load when off.
#[inline]
pub fn get() -> Option<&'static Metrics> {
    ENABLED.load(Relaxed).then(|| &*METRICS)
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("roomcast");
        let m = Metrics {
            connects: Counter::default(),
            disconnects: Family::default(),
            commands: Family::default(),
            command_errors: Family::default(),
            subscriptions: Gauge::default(),
            outbox_bytes: Gauge::default(),
            slow_closes: Counter::default(),
            // 50 µs .. ~1.6 s.
            store_commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            // 1 .. 4096 publications.
            store_commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            backend_errors: Family::default(),
            recoveries: Family::default(),
            recovered_publications: Counter::default(),
            bus_published: Counter::default(),
            bus_received: Counter::default(),
            token_refusals: Counter::default(),
            notify_requests: Counter::default(),
            notify_failures: Counter::default(),
            notify_users: Counter::default(),
            registry: Registry::default(),
        };
        r.register(
            "connects",
            "Connections that completed connect",
            m.connects.clone(),
        );
        r.register(
            "disconnects",
            "Connections ended, by close code (none: no close frame)",
            m.disconnects.clone(),
        );
        r.register(
            "commands",
            "Client protocol commands, by method",
            m.commands.clone(),
        );
        r.register(
            "command_errors",
            "Error replies to client commands, by error code",
            m.command_errors.clone(),
        );
        r.register(
            "subscriptions",
            "Local subscriptions",
            m.subscriptions.clone(),
        );
        r.register(
            "outbox_queued_bytes",
            "Bytes queued in connections' outboxes, not yet taken by their sockets",
            m.outbox_bytes.clone(),
        );
        r.register(
            "slow_closes",
            "Connections closed as slow (outbox full)",
            m.slow_closes.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Time of one store commit (a batch of publications)",
            m.store_commit_seconds.clone(),
        );
        r.register(
            "store_commit_batch",
            "Publications per store commit",
            m.store_commit_batch.clone(),
        );
        r.register(
            "backend_errors",
            "Errors from the store (sqlite, postgres) or Redis",
            m.backend_errors.clone(),
        );
        r.register(
            "recoveries",
            "Subscriptions that asked to recover, by outcome",
            m.recoveries.clone(),
        );
        r.register(
            "recovered_publications",
            "Publications sent to recovering subscriptions",
            m.recovered_publications.clone(),
        );
        r.register(
            "bus_published",
            "Envelopes handed to the cluster broker",
            m.bus_published.clone(),
        );
        r.register(
            "bus_received",
            "Envelopes received from the cluster broker",
            m.bus_received.clone(),
        );
        r.register(
            "token_refusals",
            "Connections refused for an invalid token",
            m.token_refusals.clone(),
        );
        r.register(
            "notify_requests",
            "Offline-notification webhook requests acknowledged (2xx)",
            m.notify_requests.clone(),
        );
        r.register(
            "notify_failures",
            "Offline-notification webhook attempts that failed (each is retried)",
            m.notify_failures.clone(),
        );
        r.register(
            "notify_users",
            "Users named in acknowledged offline-notification requests",
            m.notify_users.clone(),
        );
        // Series that exist from the start at 0 (a dashboard shows 0, not "no data").
        for backend in ["sqlite", "postgres", "redis"] {
            drop(m.backend_errors.get_or_create(&BackendLabel { backend }));
        }
        for outcome in ["recovered", "not_recovered"] {
            drop(m.recoveries.get_or_create(&OutcomeLabel { outcome }));
        }
        Metrics { registry: r, ..m }
    }

    /// A disconnect with its close code (`None`: the socket ended without one).
    pub fn disconnect(&self, code: Option<u16>) {
        let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        self.disconnects.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn command(&self, method: &'static str) {
        self.commands.get_or_create(&MethodLabel { method }).inc();
    }

    pub fn command_error(&self, code: u32) {
        self.command_errors
            .get_or_create(&ErrorLabel { code })
            .inc();
    }

    pub fn backend_error(&self, backend: &'static str) {
        self.backend_errors
            .get_or_create(&BackendLabel { backend })
            .inc();
    }

    pub fn recovery(&self, recovered: bool, publications: usize) {
        let outcome = if recovered {
            "recovered"
        } else {
            "not_recovered"
        };
        self.recoveries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.recovered_publications.inc_by(publications as u64);
    }

    pub fn store_commit(&self, took: Duration, batch: usize) {
        self.store_commit_seconds.observe(took.as_secs_f64());
        self.store_commit_batch.observe(batch as f64);
    }
}

/// The protocol name of a command's method (the `method` label).
pub fn method_name(m: &roomcast_proto::Method) -> &'static str {
    use roomcast_proto::Method;
    match m {
        Method::Connect(_) => "connect",
        Method::Subscribe(_) => "subscribe",
        Method::Unsubscribe(_) => "unsubscribe",
        Method::Publish(_) => "publish",
        Method::Presence(_) => "presence",
        Method::PresenceStats(_) => "presence_stats",
        Method::History(_) => "history",
        Method::Ping => "ping",
        Method::Send(_) => "send",
        Method::Rpc(_) => "rpc",
        Method::Refresh(_) => "refresh",
        Method::SubRefresh(_) => "sub_refresh",
        Method::Empty => "empty",
        Method::Unknown => "unknown",
    }
}

/// The whole exposition: what `METRICS` counts, what the node keeps, the process.
pub async fn render(node: &Node) -> String {
    let mut out = String::new();
    let _ = encode(&mut out, &METRICS.registry);
    // `encode` ends with "# EOF"; the rest goes before it.
    if let Some(at) = out.rfind("# EOF") {
        out.truncate(at);
    }
    let (connections, users) = node.hub.counts();
    METRICS.outbox_bytes.set(node.hub.queued_bytes() as i64);
    gauge(
        &mut out,
        "roomcast_connections",
        "Local connections",
        connections as u64,
    );
    gauge(
        &mut out,
        "roomcast_users",
        "Distinct users with a local connection",
        users as u64,
    );
    counter(
        &mut out,
        "roomcast_publications",
        "Publications accepted (stored) by this node",
        node.published.load(Relaxed),
    );
    counter(
        &mut out,
        "roomcast_deliveries",
        "Frames put into local connections' outboxes by fan-out",
        node.hub.deliveries.load(Relaxed),
    );
    let own = node
        .bus
        .nodes()
        .await
        .into_iter()
        .find(|n| n.uid == node.id);
    counter(
        &mut out,
        "roomcast_fanout_lane_overflows",
        "Connections closed as slow because their fan-out lane was full (large rooms on every core)",
        node.hub.lane_overflows.load(Relaxed),
    );
    // A single node's in-process bus keeps no such counters: they are 0 there.
    {
        let s = own.unwrap_or_default();
        counter(
            &mut out,
            "roomcast_bus_reorder_holds",
            "Publications that arrived ahead of a missing one and were held",
            s.bus_early,
        );
        counter(
            &mut out,
            "roomcast_bus_gap_fills",
            "Publications read from the store to fill gaps",
            s.bus_gap_fills,
        );
        counter(
            &mut out,
            "roomcast_bus_resyncs",
            "Resyncs from the store after the broker subscription was replaced",
            s.bus_resyncs,
        );
        counter(
            &mut out,
            "roomcast_bus_dropped",
            "Publications not put on the broker (queue full; receivers read them from the store)",
            s.bus_dropped,
        );
    }
    process(&mut out);
    out.push_str("# EOF\n");
    out
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = write!(
        out,
        "# HELP {name} {help}.\n# TYPE {name} gauge\n{name} {v}\n"
    );
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = write!(
        out,
        "# HELP {name} {help}.\n# TYPE {name} counter\n{name}_total {v}\n"
    );
}

/// CPU seconds, RSS and open files of this process (Linux `/proc/self`).
fn process(out: &mut String) {
    let ticks = 100.0; // USER_HZ on Linux
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) in parentheses.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let _ = write!(
                out,
                "# HELP process_cpu_seconds Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total {}\n",
                (utime + stime) / ticks
            );
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            rss_kib * 1024,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors",
            dir.count() as u64,
        );
    }
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        gauge(
            out,
            "process_max_fds",
            "Maximum number of open file descriptors",
            soft,
        );
    }
}
