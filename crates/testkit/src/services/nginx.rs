//! A private nginx running a test's configuration, in the foreground, with its pid file,
//! logs and temporary files in a temporary directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::find;

/// nginx listening on `port` (which its configuration must use).
pub struct Nginx {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `conf` as its whole `nginx.conf` (`daemon`, `pid` and `error_log`
    /// are set on the command line) and waits until it accepts on `port`.
    pub fn start(port: u16, conf: &str) -> Nginx {
        let nginx = find("nginx", &[PathBuf::from("/usr/sbin")], "nginx");
        let dir = tempfile::tempdir().unwrap();
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let globals = format!(
            "daemon off; pid {0}/nginx.pid; error_log {0}/error.log;",
            dir.path().display()
        );
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", &globals])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut n = Nginx { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!("nginx exited ({status}): {}", n.error_log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    /// Starts the deploy/ example (`deploy/nginx/roomcast.conf`) on `port`, in front of the
    /// three nodes listening on `nodes` (its 127.0.0.1:8001-8003 replaced by them).
    pub fn start_example(port: u16, nodes: [u16; 3]) -> Nginx {
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/nginx/roomcast.conf"
        ))
        .expect("deploy/nginx/roomcast.conf");
        let conf = example
            .replace("127.0.0.1:8001", &format!("127.0.0.1:{}", nodes[0]))
            .replace("127.0.0.1:8002", &format!("127.0.0.1:{}", nodes[1]))
            .replace("127.0.0.1:8003", &format!("127.0.0.1:{}", nodes[2]))
            .replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"));
        Nginx::start(port, &conf)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What nginx wrote to its error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// Stops nginx by its master's PID with SIGTERM (fast shutdown: the master ends its
    /// workers; SIGKILL would orphan them), SIGKILL if it lingers.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
