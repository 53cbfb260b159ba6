//! A PostgreSQL server for the tests: private (initdb + pg_ctl in a temporary directory,
//! run as `postgres` when the tests run as root) unless `ROOMCAST_TEST_POSTGRES` names one.
//! Each test takes a fresh database from it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{find, free_port, wait_for_port};

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
            rd.filter_map(Result::ok)
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
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
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

    /// Stops the private server (fast shutdown: every connection is cut); `resume` starts
    /// it again on the same port with the same data.
    pub fn stop(&self) {
        let pg = self.private.as_ref().expect("a private PostgreSQL");
        run(
            pg.command(&pg.pg_ctl)
                .arg("-D")
                .arg(&pg.data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"]),
            "pg_ctl stop",
        );
    }

    /// Starts the private server again after `stop`, with the options it first ran with.
    pub fn resume(&self) {
        let pg = self.private.as_ref().expect("a private PostgreSQL");
        let opts = std::fs::read_to_string(pg.data.join("postmaster.opts"))
            .expect("postmaster.opts of the stopped server");
        // `postmaster.opts` is the postgres command line: the binary, then its options.
        let opts = opts
            .trim()
            .split_once(' ')
            .map_or(String::new(), |(_, o)| o.replace('"', ""));
        run(
            pg.command(&pg.pg_ctl)
                .arg("-D")
                .arg(&pg.data)
                .args(["-o", &opts, "-l"])
                .arg(pg.data.join("log"))
                .args(["-w", "-t", "30", "start"]),
            "pg_ctl start (resume)",
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
