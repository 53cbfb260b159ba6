//! Private Redis (standalone or a 3-master Redis Cluster) and PostgreSQL servers for the cluster tests, on free loopback ports in
//! temporary directories, and `roomcast serve` processes joined to them.
//!
//! Nothing must be running beforehand. When `redis-server` or PostgreSQL's `initdb` /
//! `pg_ctl` are missing, the tests fail with a message naming the Debian packages
//! (`redis-server`, `postgresql`); they never skip. `ROOMCAST_TEST_POSTGRES`
//! (`postgres://user@host:port`) points the tests at an existing PostgreSQL instead: each
//! test still gets a fresh database in it.
//!
//! Every process started here is ended here, by its own PID (or, for PostgreSQL, by
//! `pg_ctl stop` on its data directory), when its handle drops.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{API_KEY, SECRET};

/// A free loopback port (bound and released; a small race is accepted in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Finds a program in PATH or in the given directories; panics naming the package.
fn find(program: &str, extra: &[PathBuf], package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` not found: the cluster tests need it (apt-get install -y {package}); \
                 scripts/test.sh installs it"
            )
        })
}

fn wait_for_port(port: u16, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within {within:?}");
}

/// Sends `kill -<sig> <pid>`.
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// A private `nats-server` (core NATS; the bus needs no JetStream), shaped like `Redis`.
pub struct Nats {
    pub port: u16,
    child: Option<Child>,
}

impl Nats {
    pub fn start() -> Nats {
        let mut n = Nats {
            port: free_port(),
            child: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let bin = find("nats-server", &[], "nats-server");
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        wait_for_port(self.port, "nats-server", Duration::from_secs(10));
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL, by PID) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `STOP` / `CONT`, by PID (a silent stall).
    pub fn signal(&self, sig: &str) {
        signal(self.child.as_ref().expect("nats running").id(), sig);
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private `redis-server` (no persistence: a restart is also a flush).
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let bin = find("redis-server", &[], "redis-server");
        let child = Command::new(bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server", Duration::from_secs(10));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL, by PID) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to it, by PID: SIGSTOP makes a silent stall (the
    /// connections stay open, nothing moves).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis running").id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {pid}");
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL server: private (initdb + pg_ctl in a temporary directory) unless
/// `ROOMCAST_TEST_POSTGRES` names one.
pub struct Postgres {
    /// `postgres://user@127.0.0.1:port` without a database.
    base: String,
    private: Option<PrivatePg>,
}

struct PrivatePg {
    pg_ctl: PathBuf,
    data: PathBuf,
    /// Runs commands as this user (root may not run PostgreSQL).
    run_as: Option<String>,
    _dir: tempfile::TempDir,
}

fn pg_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse(); // newest version first
    dirs
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePg {
    fn command(&self, program: &Path) -> Command {
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

impl Postgres {
    pub fn start() -> Postgres {
        if let Ok(url) = std::env::var("ROOMCAST_TEST_POSTGRES") {
            return Postgres {
                base: url.trim_end_matches('/').to_owned(),
                private: None,
            };
        }
        let dirs = pg_bin_dirs();
        let initdb = find("initdb", &dirs, "postgresql");
        let pg_ctl = find("pg_ctl", &dirs, "postgresql");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            // The directory must belong to the user PostgreSQL runs as.
            run(
                Command::new("chown").arg(user).arg(dir.path()),
                "chown the PostgreSQL directory (is the `postgres` user there? apt-get install -y postgresql)",
            );
        }
        let pg = PrivatePg {
            pg_ctl,
            data: data.clone(),
            run_as,
            _dir: dir,
        };
        run(
            pg.command(&initdb).arg("-D").arg(&data).args([
                "-U",
                "roomcast",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            "initdb",
        );
        let port = free_port();
        // fsync is off for speed unless ROOMCAST_TEST_PG_FSYNC=on (for honest throughput
        // figures): these tests kill roomcast nodes, never PostgreSQL.
        let fsync = std::env::var("ROOMCAST_TEST_PG_FSYNC").unwrap_or_else(|_| "off".into());
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync={fsync} -c max_connections=200",
            data.display()
        );
        run(
            pg.command(&pg.pg_ctl)
                .arg("-D")
                .arg(&data)
                .args(["-o", &opts, "-l"])
                .arg(data.join("log"))
                .args(["-w", "-t", "30", "start"]),
            "pg_ctl start",
        );
        wait_for_port(port, "postgres", Duration::from_secs(30));
        Postgres {
            base: format!("postgres://roomcast@127.0.0.1:{port}"),
            private: Some(pg),
        }
    }

    /// Restarts the private server (fast shutdown: every connection is cut), same port
    /// and data.
    pub fn restart(&self) {
        let pg = self.private.as_ref().expect("a private PostgreSQL");
        run(
            pg.command(&pg.pg_ctl)
                .arg("-D")
                .arg(&pg.data)
                .args(["-m", "fast", "-w", "-t", "30", "-l"])
                // With no log file the new server would keep pg_ctl's stdout open.
                .arg(pg.data.join("log"))
                .arg("restart"),
            "pg_ctl restart",
        );
    }

    /// A fresh, empty database; returns its URL.
    pub async fn fresh_db(&self) -> String {
        let name = format!(
            "roomcast_test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let (client, conn) =
            tokio_postgres::connect(&format!("{}/postgres", self.base), tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL");
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        drop(client);
        let _ = driver.await;
        format!("{}/{name}", self.base)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(pg) = &self.private {
            let _ = pg
                .command(&pg.pg_ctl)
                .arg("-D")
                .arg(&pg.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A private 3-master Redis Cluster (no replicas, no persistence): three `redis-server
/// --cluster-enabled yes` processes on free loopback ports, joined by `redis-cli --cluster
/// create`, ready once every master reports `cluster_state:ok`.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let server = find("redis-server", &[], "redis-server");
        let cli = find("redis-cli", &[], "redis-tools");
        let dir = tempfile::tempdir().unwrap();
        let mut c = RedisCluster {
            ports: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for _ in 0..3 {
            // Cluster bus port = port + 10000: pick ports whose bus port is free too.
            let port = (0..50)
                .map(|_| free_port())
                .find(|p| {
                    *p < 55_535
                        && !c.ports.contains(p)
                        && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
                })
                .expect("a free port pair for a cluster node");
            let child = Command::new(&server)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(c.dir.path().join(format!("nodes-{port}.conf")))
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .args(["--daemonize", "no"])
                .arg("--dir")
                .arg(c.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            c.children.push(child);
            c.ports.push(port);
            wait_for_port(port, "redis-server (cluster)", Duration::from_secs(10));
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for p in &c.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = c
                .ports
                .iter()
                .all(|p| c.cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis cluster not ok within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Runs `redis-cli -p port args...` and returns its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let cli = find("redis-cli", &[], "redis-tools");
        let out = Command::new(cli)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The roomcast URL for it: `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `roomcast serve` process joined to the cluster.
pub struct Node {
    pub addr: SocketAddr,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node on a free port and waits for its "listening on" line.
    pub fn start(redis: &str, store: &str) -> Node {
        Self::start_on("127.0.0.1:0".parse().unwrap(), redis, store)
    }

    pub fn start_on(listen: SocketAddr, redis: &str, store: &str) -> Node {
        Self::start_with(listen, redis, store, &[])
    }

    /// `start_on` with more `roomcast serve` arguments (`["--nats", url]`).
    pub fn start_with(listen: SocketAddr, redis: &str, store: &str, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["serve", "--api-key", API_KEY, "--token-hmac-secret", SECRET])
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--redis", redis, "--store", store])
            .args(extra)
            .env("ROOMCAST_LOG", "roomcast=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("roomcast binary runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("ROOMCAST_TEST_NODE_LOG").is_some() {
                    eprintln!("[node] {line}");
                }
                if !sent {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let addr: SocketAddr =
                            rest.split_whitespace().next().unwrap().parse().unwrap();
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("roomcast node reported its address");
        Node {
            addr,
            child: Some(child),
            _dir: dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// Sends a signal (`TERM` for a graceful drain), by PID.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("node running").id();
        signal(pid, sig);
    }

    /// Waits for it to exit (blocking).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("node running");
        c.wait().expect("wait for roomcast serve")
    }

    /// kill -9, by PID.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
