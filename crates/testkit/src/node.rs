//! `roomcast serve` as an operator runs it: a child process, ready once it has written its
//! `--ready-fd` line (`{"ready":true,"addr":"127.0.0.1:PORT",...}`, on its stdout here),
//! so no test reads logs to learn where a node listens. Its log (stderr) is kept for the
//! tests that look for a line, and echoed when `ROOMCAST_TEST_NODE_LOG` is set.
//!
//! The process is ended by its PID: SIGKILL when the handle drops, or any signal the test
//! sends (`TERM` for a drain).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use serde_json::Value;

use crate::{api, publish, services, API_KEY, SECRET};

/// Log lines kept for [`Node::logs`] until the test reads them; later ones are dropped
/// (the node never blocks on its log).
const LOG_LINES: usize = 10_000;
/// How long a node may take to announce it is ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The `roomcast` binary under test: `ROOMCAST_BIN` when set, else the one Cargo built
/// beside the running test (`target/<profile>/roomcast`; `cargo test -p roomcast` builds
/// it before the integration tests) or beside the running binary.
pub fn roomcast_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ROOMCAST_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> -> target/<profile>/roomcast; a binary of the
    // workspace (target/<profile>/<bin>, e.g. roomcast-chaos) has it beside itself.
    let beside = exe.parent();
    let bin = [beside.and_then(|deps| deps.parent()), beside]
        .into_iter()
        .flatten()
        .map(|profile| profile.join("roomcast"))
        .find(|p| p.is_file());
    bin.unwrap_or_else(|| {
        panic!(
            "no roomcast binary beside {}: run the test with `cargo test -p roomcast`, \
             or set ROOMCAST_BIN",
            exe.display()
        )
    })
}

/// A running `roomcast serve` process.
pub struct Node {
    /// The address it announced (the bound one, also with `--listen 127.0.0.1:0`).
    pub addr: SocketAddr,
    child: Child,
    /// Its stderr, line by line (bounded by [`LOG_LINES`]).
    logs: Receiver<String>,
    /// The data directory when the kit made it; `None` when the test gave its own.
    _dir: Option<tempfile::TempDir>,
}

/// How to start a [`Node`]: the kit's secret and API key always, a fresh data directory
/// and port 0 unless told otherwise.
pub struct NodeBuilder {
    listen: SocketAddr,
    data_dir: Option<PathBuf>,
    args: Vec<OsString>,
    nofile: Option<u32>,
}

impl NodeBuilder {
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Uses (and keeps) this data directory, e.g. to restart a node on its own store.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// `--redis URL`: the bus and presence.
    pub fn redis(self, url: &str) -> Self {
        self.arg("--redis").arg(url)
    }

    /// `--nats URL`: the bus on NATS (the broker's flag; presence stays on `--redis`).
    pub fn nats(self, url: &str) -> Self {
        self.arg("--nats").arg(url)
    }

    /// `--store URL`: the shared message store.
    pub fn store(self, url: &str) -> Self {
        self.arg("--store").arg(url)
    }

    /// Any other `roomcast serve` argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs it under this open-files limit (soft and hard), through `ulimit -n`.
    pub fn nofile(mut self, n: u32) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Starts the process and waits (at most 30 s) for its ready line.
    pub fn start(self) -> Node {
        let bin = roomcast_bin();
        let (dir, data_dir) = match self.data_dir {
            Some(d) => (None, d),
            None => {
                let d = tempfile::tempdir().unwrap();
                let path = d.path().to_owned();
                (Some(d), path)
            }
        };
        let mut cmd = match self.nofile {
            None => Command::new(&bin),
            Some(n) => {
                let mut c = Command::new("bash");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                    .arg(&bin);
                c
            }
        };
        let mut child = cmd
            .args(["serve", "--api-key", API_KEY, "--token-hmac-secret", SECRET])
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--ready-fd", "1"])
            .args(&self.args)
            .env("ROOMCAST_LOG", "roomcast=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", bin.display()));
        let (log_tx, logs) = mpsc::sync_channel(LOG_LINES);
        keep_log(child.stderr.take().unwrap(), log_tx);
        let (ready_tx, ready) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            if let Some(line) = lines.next() {
                let _ = ready_tx.send(line);
            }
            lines.for_each(drop); // nothing else is written there; never block the node
        });
        let Ok(line) = ready.recv_timeout(READY_WITHIN) else {
            let _ = child.kill();
            let status = child.wait().ok();
            let log: Vec<String> = logs.try_iter().collect();
            panic!(
                    "roomcast serve gave no ready line within {READY_WITHIN:?} (exit: {status:?}); log:\n{}",
                    log.join("\n")
                );
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the ready line is JSON ({e}): {line}"));
        assert_eq!(v["ready"], true, "ready line: {line}");
        assert_eq!(
            v["pid"],
            child.id(),
            "the ready line names the process: {line}"
        );
        let addr = v["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("the ready line has an address: {line}"));
        Node {
            addr,
            child,
            logs,
            _dir: dir,
        }
    }
}

/// Reads the node's stderr into `tx` (dropping lines when the test does not keep up),
/// echoing it when `ROOMCAST_TEST_NODE_LOG` is set.
fn keep_log(stderr: std::process::ChildStderr, tx: SyncSender<String>) {
    let echo = std::env::var_os("ROOMCAST_TEST_NODE_LOG").is_some();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[node] {line}");
            }
            let _ = tx.try_send(line);
        }
    });
}

impl Node {
    /// A node on a free port with a fresh data directory, joined to `redis` and `store`.
    pub fn start(redis: &str, store: &str) -> Node {
        Node::builder().redis(redis).store(store).start()
    }

    /// Same, listening on `listen`.
    pub fn start_on(listen: SocketAddr, redis: &str, store: &str) -> Node {
        Node::builder()
            .listen(listen)
            .redis(redis)
            .store(store)
            .start()
    }

    /// A standalone node (SQLite in its data directory) unless the builder says more.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: None,
            args: Vec::new(),
            nofile: None,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log lines (stderr) in order, from the start.
    pub fn logs(&self) -> &Receiver<String> {
        &self.logs
    }

    /// kill -9, by PID, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`TERM` for a graceful drain, `STOP`/`CONT`), by PID.
    pub fn signal(&self, sig: &str) {
        services::signal(self.pid(), sig);
    }

    /// Waits for it to exit (blocking: from async code, through `spawn_blocking`).
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for roomcast serve")
    }

    /// Calls a server API method on it (see [`api`]).
    pub async fn api(&self, method: &str, body: Value) -> Value {
        api(self.addr, method, body).await
    }

    /// Publishes through its server API; returns the offset.
    pub async fn publish(&self, channel: &str, data: Value) -> u64 {
        publish(self.addr, channel, data).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
