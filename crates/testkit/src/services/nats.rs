//! A private `nats-server` with JetStream (so NATS KV is available), the same shape as
//! [`super::Redis`]: `start`, `url`, `kill`, `signal`, `restart`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{find, free_port, wait_for_port, Daemon};

/// A private NATS server on a free loopback port. JetStream keeps its store in the
/// temporary directory, so a [`Nats::restart`] keeps streams and KV buckets, as a real
/// server restart does (only core NATS subscriptions are lost).
pub struct Nats {
    pub port: u16,
    daemon: Daemon,
    /// How many times it was started: each start logs to its own file, so readiness is
    /// read from that start's log only.
    starts: u32,
    dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        let mut n = Nats {
            port: free_port(),
            daemon: Daemon::default(),
            starts: 0,
            dir: tempfile::tempdir().unwrap(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let bin = find("nats-server", &[], "nats-server");
        self.starts += 1;
        let log = self.dir.path().join(format!("nats-{}.log", self.starts));
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--server_name", &format!("roomcast-test-{}", self.port)])
            .arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.daemon.set(child);
        wait_for_port(self.port, "nats-server", Duration::from_secs(10));
        // The client port opens before JetStream has finished starting.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server not ready within 10 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// JetStream's storage directory (inside the temporary directory).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL, by PID) and waits for it to be gone.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Sends a signal (`STOP`, `CONT`) to it, by PID: SIGSTOP makes a silent stall (the
    /// connections stay open, nothing moves).
    pub fn signal(&self, sig: &str) {
        self.daemon.signal(sig, "nats-server");
    }

    /// Kills it and starts it again on the same port, with the same JetStream store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}
