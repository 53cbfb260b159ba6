//! Bounded and hardened: every limit of a connection, with its exact close or error code.

use std::time::Duration;

use futures_util::SinkExt;
use roomcast_testkit::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_as_slow_and_nobody_else_waits() {
    let s = TestServer::start_with(|c| {
        c.outbox_max_bytes = 1 << 20;
        // This test is about the slow code, which the client reads only once the publisher
        // is done: give the stalled socket longer than that (tests/stalled.rs covers the
        // write timeout itself).
        c.write_timeout_secs = 120;
    })
    .await;
    let mut slow = s.client("slow").await;
    slow.subscribe("firehose").await;
    let mut fast = s.client("fast").await;
    fast.subscribe("firehose").await;
    let big = "x".repeat(32 << 10);
    // Far more than the kernel's socket buffers and the outbox together hold.
    const N: u64 = 600;
    let addr = s.addr;
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            let body = json!({"channel": "firehose", "data": {"i": i, "pad": big}}).to_string();
            let (status, _) = api_raw(addr, "publish", Some(API_KEY), &body).await;
            assert_eq!(status, 200);
        }
    });
    for i in 1..=N {
        assert_eq!(
            fast.next_pub("firehose").await["offset"],
            i,
            "the fast reader gets everything"
        );
    }
    publisher.await.unwrap();
    // The slow one never read while that went on: it is closed with 3008 after whatever
    // the socket already held.
    assert_eq!(slow.closed_code().await, Some(3008));
}

#[tokio::test]
async fn oversized_messages_are_closed_with_1009() {
    let s = TestServer::start_with(|c| c.max_message_size = 4096).await;
    let mut c = s.client("a").await;
    let frame = format!(
        "{{\"id\":2,\"publish\":{{\"channel\":\"x\",\"data\":\"{}\"}}}}",
        "y".repeat(5000)
    );
    c.send_raw(&frame).await;
    assert_eq!(c.closed_code().await, Some(1009));
}

#[tokio::test]
async fn command_rate_limit_answers_too_many_requests() {
    let s = TestServer::start_with(|c| c.commands_per_second = 5).await;
    let mut c = s.client("a").await;
    // The connect spent one token of the burst (10); 30 more commands at once.
    let frame: Vec<String> = (10..40)
        .map(|id| format!("{{\"id\":{id},\"ping\":{{}}}}"))
        .collect();
    c.send_raw(&frame.join("\n")).await;
    let mut ok = 0;
    let mut limited = 0;
    for id in 10..40 {
        let r = c.reply(id).await;
        match error_code(&r) {
            None => ok += 1,
            Some(111) => limited += 1,
            Some(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(ok, 9, "the rest of the burst");
    assert_eq!(limited, 21);
    // The budget refills.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(error_code(&c.call(json!({"ping": {}})).await).is_none());
}

#[tokio::test]
async fn connections_per_user_are_limited() {
    let s = TestServer::start_with(|c| c.max_connections_per_user = 2).await;
    let _a = s.client("alice").await;
    let _b = s.client("alice").await;
    let mut c = Client::open(&s.ws_url()).await;
    c.send(json!({"connect": {"token": token("alice")}})).await;
    assert_eq!(c.closed_code().await, Some(3504));
    let _other_user = s.client("bob").await;
}

#[tokio::test]
async fn channel_limit_is_enforced_per_connection() {
    let s = TestServer::start_with(|c| c.max_channels_per_connection = 2).await;
    let mut c = s.client("a").await;
    c.subscribe("one").await;
    c.subscribe("two").await;
    let r = c.call(json!({"subscribe": {"channel": "three"}})).await;
    assert_eq!(error_code(&r), Some(106));
}

#[tokio::test]
async fn foreign_origins_are_refused_with_403() {
    let s =
        TestServer::start_with(|c| c.allowed_origins = vec!["https://chat.example".into()]).await;
    let upgrade = |origin: &str| {
        format!(
            "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n",
            s.addr
        )
    };
    for (origin, status) in [
        ("https://evil.example", "403"),
        ("https://chat.example", "101"),
    ] {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        tcp.write_all(upgrade(origin).as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tcp.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{origin}: {head}"
        );
    }
}

#[tokio::test]
async fn a_socket_that_never_sends_its_upgrade_is_closed_within_10s() {
    let s = TestServer::start().await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /connection/websocket HTTP/1.1\r\n")
        .await
        .unwrap(); // and nothing more
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a 408 response, then EOF
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {:?}", started.elapsed());
    assert!(started.elapsed() <= Duration::from_secs(11));
}

#[tokio::test]
async fn binary_frames_and_unmasked_frames_are_refused() {
    let s = TestServer::start().await;
    let mut c = s.client("a").await;
    c.ws_mut()
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(c.closed_code().await, Some(3501));
    // A raw, unmasked client frame after a valid upgrade: protocol error 1002.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let req = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        s.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    tcp.write_all(&[0x81, 0x02, b'{', b'}']).await.unwrap();
    let n = tcp.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..2], &[0x88, n as u8 - 2], "a close frame");
    assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 1002);
}

/// A backlog goes out as many WebSocket messages of a few KiB, never as one message as large
/// as the outbox: clients cap a message's size (the Python SDK's `websockets` at 1 MiB) and
/// would close the connection with 1009 on the node's own pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_written_in_messages_a_capped_client_accepts() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::start_with(|c| {
        // Room for the whole backlog: this test is about how it is framed, not about slow
        // readers.
        c.outbox_max_bytes = 16 << 20;
        c.write_timeout_secs = 120;
    })
    .await;
    // A small receive buffer (no autotuning) fills after a few KiB, so the backlog queues in
    // the node while the client does not read.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(8 << 10).unwrap();
    let tcp = sock.connect(s.addr).await.unwrap();
    const CAP: usize = 64 << 10;
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(CAP))
        .max_frame_size(Some(CAP));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(s.ws_url(), tcp, Some(cfg))
        .await
        .unwrap();
    let connect = json!({"id": 1, "connect": {"token": token("capped")}});
    let subscribe = json!({"id": 2, "subscribe": {"channel": "backlog"}});
    ws.send(Message::text(format!("{connect}\n{subscribe}")))
        .await
        .unwrap();
    let mut replies = 0;
    while replies < 2 {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        replies += t.lines().filter(|l| l.contains("\"id\"")).count();
    }
    // ~10 MiB of publications while the client reads nothing: more than its socket and the
    // node's send buffer (up to 4 MiB here) take, so the rest waits in the outbox.
    const N: u64 = 10_000;
    const PUBLISHERS: u64 = 4;
    let pad = "x".repeat(1 << 10);
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (addr, pad) = (s.addr, pad.clone());
            tokio::spawn(async move {
                for _ in 0..N / PUBLISHERS {
                    publish(addr, "backlog", json!({ "pad": pad })).await;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let mut next = 1;
    let mut messages = 0;
    while next <= N {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the backlog keeps coming")
            .expect("the connection stays open")
            .unwrap_or_else(|e| panic!("after offset {}: {e}", next - 1));
        let Message::Text(t) = m else { continue };
        assert!(t.len() <= CAP);
        messages += 1;
        for line in t.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(p) = v["push"]["pub"].as_object() {
                assert_eq!(p["offset"], next, "in order, none missing");
                next += 1;
            }
        }
    }
    // Joined, still: far fewer messages than publications.
    assert!(messages < N / 4, "{messages} messages for {N} publications");
}
