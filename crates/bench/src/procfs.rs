//! Reads what the kernel knows about a server process and the machine: resident memory, CPU time,
//! kernel socket memory. These are the only "server side" figures the bench trusts, because they come
//! from /proc and not from the server's own claims.

use std::fs;

/// Clock ticks per second for /proc/<pid>/stat; 100 on every Linux x86_64/aarch64 build we target.
const CLK_TCK: f64 = 100.0;

/// Resident set size of `pid` in KiB (VmRSS), or None if the process is gone.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Summed RSS of several processes; None if none of them could be read.
pub(crate) fn rss_kib_all(pids: &[u32]) -> Option<u64> {
    let v: Vec<u64> = pids.iter().filter_map(|p| rss_kib(*p)).collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// User + system CPU seconds consumed so far by `pid` (all its threads).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; everything after the last ')' is fixed fields.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 and stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// CPU seconds of each thread of `pid`, by thread id (with its name); empty if it is gone.
pub(crate) fn thread_cpu_seconds(pid: u32) -> Vec<(u32, String, f64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(s) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let name = s[open + 1..close].to_owned();
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        let (Some(Ok(u)), Some(Ok(st))) = (
            f.get(11).map(|v| v.parse::<f64>()),
            f.get(12).map(|v| v.parse::<f64>()),
        ) else {
            continue;
        };
        out.push((tid, name, (u + st) / CLK_TCK));
    }
    out
}

/// Per-thread CPU seconds between two `thread_cpu_seconds` snapshots: threads that used
/// more than 10 ms, busiest first, named `name/tid`.
pub(crate) fn thread_cpu_delta(
    before: &[(u32, String, f64)],
    after: &[(u32, String, f64)],
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, name, s)| {
            let s0 = before.iter().find(|b| b.0 == *tid).map_or(0.0, |b| b.2);
            (format!("{name}/{tid}"), s - s0)
        })
        .filter(|(_, d)| *d > 0.01)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Sum of CPU seconds over several pids (e.g. a Node server and the Redis it needs).
pub(crate) fn cpu_seconds_all(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// The 1-minute load average: a case that starts on a busy machine says so in its result.
/// Open files of a process (`/proc/<pid>/fd` entries); None when it cannot be read.
pub(crate) fn open_files(pid: u32) -> Option<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

pub(crate) fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Kernel TCP socket buffer memory in KiB, machine-wide (`TCP: ... mem N` pages in /proc/net/sockstat).
/// It covers both ends of loopback connections, so the bench reports it as-is and halves nothing.
pub(crate) fn tcp_mem_kib() -> Option<u64> {
    let s = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            let pages: u64 = it.next()?.parse().ok()?;
            return Some(pages * 4);
        }
    }
    None
}

/// A one-line description of the machine for reports: CPU model, cores, memory, kernel.
pub(crate) fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = mem
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem_gib:.1} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// Current UTC time as `YYYY-MM-DD HH:MM:SS UTC`, without a date crate.
pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_seconds(me).is_some());
        let threads = thread_cpu_seconds(me);
        assert!(
            threads.iter().any(|t| t.0 == me),
            "the main thread is listed"
        );
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(100) {
            std::hint::black_box(0);
        }
        let delta = thread_cpu_delta(&threads, &thread_cpu_seconds(me));
        assert!(delta.iter().all(|(_, s)| *s > 0.01));
        assert!(utc_now().ends_with("UTC"));
    }
}
