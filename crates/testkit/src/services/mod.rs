//! Private services for the tests, on free loopback ports in temporary directories:
//! Redis (standalone and a 3-master Redis Cluster), PostgreSQL, NATS with JetStream, and
//! nginx.
//!
//! Nothing must be running beforehand. When a program is missing, the test fails with a
//! message naming the Debian package to install (`redis-server`, `redis-tools`,
//! `postgresql`, `nats-server`, `nginx`); it never skips. `ROOMCAST_TEST_POSTGRES`
//! (`postgres://user@host:port`) points the tests at an existing PostgreSQL instead: each
//! test still gets a fresh database in it.
//!
//! Every process started here is ended here, by its own PID (or, for PostgreSQL, by
//! `pg_ctl stop` on its data directory), when its handle drops.

mod nats;
mod nginx;
mod postgres;
mod redis;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub use nats::Nats;
pub use nginx::Nginx;
pub use postgres::Postgres;
pub use redis::{Redis, RedisCluster};

/// A free loopback port (bound and released; a small race is accepted in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Finds a program in PATH or in the given directories; panics naming the package.
pub(crate) fn find(program: &str, extra: &[PathBuf], package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` not found: these tests need it (apt-get install -y {package}); \
                 scripts/test.sh installs it"
            )
        })
}

pub(crate) fn wait_for_port(port: u16, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within {within:?}");
}

/// A service's child process, ended by its PID: `kill` (SIGKILL, then reaped) and
/// `signal` (any signal, e.g. `STOP`/`CONT` for a silent stall).
#[derive(Default)]
pub(crate) struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    pub(crate) fn set(&mut self, child: Child) {
        self.child = Some(child);
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn signal(&self, sig: &str, what: &str) {
        let pid = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("{what} running"))
            .id();
        signal(pid, sig);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kill -SIG pid`; panics when it fails.
pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
    if sig == "STOP" {
        wait_stopped(pid);
    }
}

/// `kill` returns once SIGSTOP is queued; a thread of the target running on another core
/// stops a moment later (and could still answer a connection made right after `kill`).
/// Waits (at most 2 s) until every thread of `pid` is stopped.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true; // gone: nothing left to answer
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                // The state is the field after the parenthesised command name.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "T" || state == "t")
            })
        })
    };
    while !stopped() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}
