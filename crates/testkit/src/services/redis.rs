//! Private Redis: a standalone `redis-server`, or a 3-master Redis Cluster; neither
//! persists anything.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{find, free_port, wait_for_port, Daemon};

/// A private `redis-server` (no persistence: a restart is also a flush).
pub struct Redis {
    pub port: u16,
    daemon: Daemon,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            port: free_port(),
            daemon: Daemon::default(),
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
        self.daemon.set(child);
        wait_for_port(self.port, "redis-server", Duration::from_secs(10));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL, by PID) and waits for it to be gone.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Sends a signal (`STOP`, `CONT`) to it, by PID: SIGSTOP makes a silent stall (the
    /// connections stay open, nothing moves).
    pub fn signal(&self, sig: &str) {
        self.daemon.signal(sig, "redis");
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
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
