//! The `roomcast` binary as an operator runs it: crash (kill -9) right after acknowledged
//! publishes, and a graceful drain on SIGTERM. Nothing acknowledged may be lost.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

struct Proc {
    child: Child,
    addr: SocketAddr,
}

/// Starts `roomcast serve` on a free port and waits for its "listening on" line.
fn spawn(dir: &std::path::Path) -> Proc {
    spawn_with(dir, None).0
}

/// Same, optionally under an open-files limit (soft and hard); also returns the server's
/// log lines as they come.
fn spawn_with(
    dir: &std::path::Path,
    nofile: Option<u32>,
) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let bin = env!("CARGO_BIN_EXE_roomcast");
    let mut cmd = match nofile {
        None => Command::new(bin),
        Some(n) => {
            let mut c = Command::new("bash");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
            c
        }
    };
    let mut child = cmd
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            API_KEY,
            "--token-hmac-secret",
            SECRET,
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("ROOMCAST_LOG", "roomcast=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("roomcast binary runs");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
                    tx.send(addr).unwrap();
                    sent = true;
                }
            }
            let _ = lines_tx.send(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server reported its address");
    (Proc { child, addr }, lines)
}

async fn history(addr: SocketAddr, channel: &str) -> Vec<(u64, serde_json::Value)> {
    let (status, v) = api_raw(
        addr,
        "history",
        Some(API_KEY),
        &json!({"channel": channel, "limit": -1}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
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
                let (status, v) = api_raw(
                    addr,
                    "publish",
                    Some(API_KEY),
                    &json!({"channel": "c", "data": data}).to_string(),
                )
                .await;
                assert_eq!(status, 200, "{v}");
                acked.push((v["result"]["offset"].as_u64().unwrap(), data));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    // SIGKILL right after the last acknowledgement: no drain, no flush.
    p.child.kill().unwrap();
    p.child.wait().unwrap();

    let mut p = spawn(dir.path());
    let stored = history(p.addr, "c").await;
    acked.sort_by_key(|(o, _)| *o);
    assert_eq!(acked.len(), 200);
    assert_eq!(
        stored, acked,
        "every acknowledged publication is in history with its offset"
    );
    // The stream continues after the last offset.
    let (_, v) = api_raw(
        p.addr,
        "publish",
        Some(API_KEY),
        &json!({"channel": "c", "data": 1}).to_string(),
    )
    .await;
    assert_eq!(v["result"]["offset"], 201);
    p.child.kill().unwrap();
    p.child.wait().unwrap();
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
    let status = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
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
    let exit = tokio::task::spawn_blocking(move || p.child.wait().unwrap())
        .await
        .unwrap();
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
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, lines) = spawn_with(dir.path(), Some(64));
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
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}
