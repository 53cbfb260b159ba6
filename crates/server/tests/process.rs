//! The `roomcast` binary as an operator runs it: crash (kill -9) right after acknowledged
//! publishes, and a graceful drain on SIGTERM (nothing acknowledged may be lost); out of
//! file descriptors; the `--ready-fd` line supervisors start it by.

use std::time::Duration;

use roomcast_testkit::*;
use serde_json::json;

/// Starts `roomcast serve` on a free port on the data directory `dir`.
fn spawn(dir: &std::path::Path) -> Node {
    Node::builder().data_dir(dir).start()
}

async fn history(addr: std::net::SocketAddr, channel: &str) -> Vec<(u64, serde_json::Value)> {
    let v = api(addr, "history", json!({"channel": channel, "limit": -1})).await;
    v["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_acknowledged_publishes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path());
    let addr = p.addr;
    // Four concurrent publishers; every acknowledged (offset, data) is recorded.
    let mut tasks = Vec::new();
    for t in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50 {
                let data = json!({"t": t, "i": i});
                acked.push((publish(addr, "c", data.clone()).await, data));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    // SIGKILL right after the last acknowledgement: no drain, no flush.
    p.kill();

    let mut p = spawn(dir.path());
    let stored = history(p.addr, "c").await;
    acked.sort_by_key(|(o, _)| *o);
    assert_eq!(acked.len(), 200);
    assert_eq!(
        stored, acked,
        "every acknowledged publication is in history with its offset"
    );
    // The stream continues after the last offset.
    assert_eq!(p.publish("c", json!(1)).await, 201);
    p.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_connections_with_shutdown_code_and_keeps_acked_publications() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path());
    let url = format!("ws://{}/connection/websocket", p.addr);
    let mut c = Client::open(&url).await;
    c.call(json!({"connect": {"token": token("alice")}})).await;
    c.subscribe("d").await;
    // Pipeline publishes, then ask for shutdown while some may still be in flight.
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            c.send(json!({"publish": {"channel": "d", "data": i}}))
                .await,
        );
    }
    let mut acked = 0;
    while acked < 20 {
        if let Event::Frame(v) = c.next().await {
            if v.get("publish").is_some() {
                acked += 1;
            }
        }
    }
    p.signal("TERM");
    let mut close = None;
    while close.is_none() {
        match c.next().await {
            Event::Frame(v) if v.get("publish").is_some() => acked += 1,
            Event::Frame(_) => {}
            Event::Closed(code) => close = Some(code),
        }
    }
    assert_eq!(
        close.unwrap(),
        Some(3001),
        "clients are told to reconnect elsewhere"
    );
    let exit = tokio::task::spawn_blocking(move || p.wait()).await.unwrap();
    assert!(exit.success(), "exits cleanly after the drain: {exit:?}");

    let mut p = spawn(dir.path());
    let stored = history(p.addr, "d").await;
    assert!(
        stored.len() >= acked,
        "{} stored < {acked} acknowledged",
        stored.len()
    );
    let offsets: Vec<u64> = stored.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=stored.len() as u64).collect::<Vec<_>>());
    for (i, (_, data)) in stored.iter().enumerate() {
        assert_eq!(data, &json!(i), "in the order they were sent");
    }
    p.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Node::builder().data_dir(dir.path()).nofile(64).start();
    let lines = p.logs();
    // Far more sockets than the server has descriptors left.
    let mut socks = Vec::new();
    for _ in 0..120 {
        socks.push(tokio::net::TcpStream::connect(p.addr).await.unwrap());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut backed_off = false;
    while !backed_off && std::time::Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            backed_off |= line.contains("out of file descriptors; backing off");
        }
    }
    assert!(backed_off, "the server says it is out of descriptors");
    drop(socks);
    // Once the sockets close, the server serves again.
    let mut ok = false;
    for _ in 0..50 {
        let (status, _) = api_raw(p.addr, "info", Some(API_KEY), "{}").await;
        if status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "the server recovered after the descriptors were freed");
    p.kill();
}

/// `--ready-fd` on a descriptor other than stdout (here fd 3, a file the shell opened):
/// one JSON line naming the bound address and the process, and the address serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_line_on_another_descriptor_names_the_bound_address() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    /// Kills the node by its PID also when an assertion fails.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = std::process::Command::new("bash")
        .args(["-c", "exec \"$0\" \"$@\" 3>\"$READY\""])
        .arg(roomcast_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--ready-fd", "3"])
        .args(["--api-key", API_KEY, "--token-hmac-secret", SECRET])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("READY", &ready)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Kill(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let line = loop {
        let text = std::fs::read_to_string(&ready).unwrap_or_default();
        if text.ends_with('\n') {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ready line: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line.lines().count(), 1, "one line: {line:?}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["pid"], child.0.id());
    assert_eq!(v["version"], roomcast::VERSION);
    let addr: std::net::SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    assert_ne!(addr.port(), 0, "the bound port, not the configured 0");
    let info = api(addr, "info", json!({})).await;
    assert!(info["result"]["nodes"].is_array(), "{info}");
}

/// A start that fails (the port is taken) exits non-zero and leaves no data directory
/// (no generated secrets, no empty store) behind; an existing data directory is kept.
/// `--listen` and `token` take the forms a new user types: `localhost:PORT`, `--data-dir`.
#[test]
fn a_failed_start_leaves_nothing_behind_and_listen_takes_a_host_name() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh");
    let run = |data: &std::path::Path| {
        std::process::Command::new(roomcast_bin())
            .args(["serve", "--listen", &format!("localhost:{port}")])
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap()
    };
    let out = run(&fresh);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "localhost resolved: {log}"
    );
    assert!(
        !fresh.exists(),
        "the data directory it created is gone: {log}"
    );

    let kept = dir.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    std::fs::write(kept.join("mine"), "x").unwrap();
    assert!(!run(&kept).status.success());
    assert!(
        kept.join("mine").exists(),
        "an existing data directory is untouched"
    );

    // `token` reads the secrets of the data directory it is given, and says which file.
    let out = std::process::Command::new(roomcast_bin())
        .args(["token", "alice", "--data-dir"])
        .arg(&kept)
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&kept.join("secrets.toml").display().to_string()),
        "{said}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split('.')
            .count(),
        3
    );
    drop(taken);
}
