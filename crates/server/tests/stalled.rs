//! Peers that stop reading (issue #10, defect 4): once the server decides to close them
//! (slow, no pong) or their socket takes nothing for `write_timeout_secs`, they are torn
//! down within a bounded time however long the peer keeps its socket open: the server's
//! file descriptor is closed and presence, the hub and `info` no longer list them.
//! One test per binary, so the process's descriptor count is this test's alone.

use roomcast_testkit::*;

use std::time::{Duration, Instant};

use serde_json::json;

const STALLED: usize = 50;
const WRITE_TIMEOUT_SECS: u64 = 2;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

async fn num_clients(s: &TestServer) -> u64 {
    let info = s.api("info", json!({})).await;
    info["result"]["nodes"][0]["num_clients"].as_u64().unwrap()
}

async fn presence_len(s: &TestServer, room: &str) -> usize {
    let p = s.api("presence", json!({"channel": room})).await;
    p["result"]["presence"].as_object().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_stop_reading_are_torn_down_within_the_write_timeout() {
    let s = TestServer::start_with(|c| {
        c.outbox_max_bytes = 256 << 10;
        c.write_timeout_secs = WRITE_TIMEOUT_SECS;
    })
    .await;
    let before = open_fds();
    // Subscribed, then never read again: the tungstenite client reads only when polled.
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let mut c = s.client(&format!("stalled{i}")).await;
        c.subscribe("firehose").await;
        stalled.push(c);
    }
    assert_eq!(num_clients(&s).await, STALLED as u64);
    assert_eq!(presence_len(&s, "firehose").await, STALLED);
    // Client and server end of each socket.
    assert!(open_fds() >= before + 2 * STALLED);

    // Far more than the kernel's buffers and the outbox hold: every stalled peer is closed
    // as slow with its socket full, so its close frame cannot go out.
    let pad = "x".repeat(32 << 10);
    for i in 0..400 {
        s.publish("firehose", json!({"i": i, "pad": pad})).await;
    }
    let published = Instant::now();

    // Gone within the write timeout (after the slow close), the close linger and slack for
    // a loaded machine; today's code kept them for as long as the peers stayed.
    let bound = Duration::from_secs(WRITE_TIMEOUT_SECS + 2 + 6);
    loop {
        let clients = num_clients(&s).await;
        let present = presence_len(&s, "firehose").await;
        // Only the test's client ends remain open.
        let fds = open_fds();
        if clients == 0 && present == 0 && fds <= before + STALLED + 2 {
            break;
        }
        assert!(
            published.elapsed() < bound,
            "after {:?}: {clients} clients, {present} in presence, {} fds over the start \
             (the {STALLED} client ends expected)",
            published.elapsed(),
            fds.saturating_sub(before)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
    s.stop().await;
}
