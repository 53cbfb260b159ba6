//! A client that sends its last commands and shuts its side of the socket (a half-close,
//! or a close frame and FIN in one segment) has them handled: the bytes read before the
//! end of the stream are decoded, not dropped with it.

use std::time::Duration;

use roomcast_testkit::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A masked client text frame (mask key 1,2,3,4).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let key = [1u8, 2, 3, 4];
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[tokio::test]
async fn commands_sent_just_before_a_half_close_are_handled() {
    let s = TestServer::start().await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let req = "GET /connection/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
               Sec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    // connect, subscribe, publish, and the end of the stream, in one write.
    let connect = json!({"id": 1, "connect": {"token": token("alice")}}).to_string();
    let subscribe = json!({"id": 2, "subscribe": {"channel": "half"}}).to_string();
    let publish =
        json!({"id": 3, "publish": {"channel": "half", "data": {"last": true}}}).to_string();
    let mut bytes = text_frame(connect.as_bytes());
    bytes.extend(text_frame(subscribe.as_bytes()));
    bytes.extend(text_frame(publish.as_bytes()));
    tcp.write_all(&bytes).await.unwrap();
    tcp.shutdown().await.unwrap();

    // The publication is stored...
    let mut stored = serde_json::Value::Null;
    for _ in 0..100 {
        stored = s
            .api("history", json!({"channel": "half", "limit": 10}))
            .await;
        if stored["result"]["publications"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored["result"]["publications"][0]["data"],
        json!({"last": true}),
        "{stored}"
    );
    // ... and the replies went out to the half-closed peer, which can still read.
    let mut replies = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut replies)).await;
    let text = String::from_utf8_lossy(&replies);
    assert!(
        text.contains("{\"id\":3,\"publish\":{}}"),
        "the publish reply: {text}"
    );
    s.stop().await;
}
