//! Connecting and publishing.

use serde_json::json;

use super::fake::*;

#[tokio::test]
async fn connect_with_a_token_registers_the_client() {
    let node = Fake::new(|_| {});
    let mut c = Conn::new(&node);
    let token = node.token("alice", Some(c.now.unix + 600));
    let r = c.call(json!({"id": 1, "connect": {"token": token}})).await;
    assert_eq!(r["id"], 1);
    assert_eq!(r["connect"]["node"], "unit-node");
    assert_eq!(r["connect"]["expires"], true);
    assert_eq!(r["connect"]["ttl"], 600);
    assert!(c.session.is_connected());
    assert_eq!(node.user_conns("alice"), 1);
    c.session.close().await;
    assert_eq!(node.user_conns("alice"), 0);
}

#[tokio::test]
async fn connect_refusals() {
    let node = Fake::new(|_| {});
    // No token on a secure node: unauthorized, then closed.
    let mut c = Conn::new(&node);
    let flow = c.send(json!({"id": 1, "connect": {}})).await;
    assert_eq!(flow, Flow::Close(Disconnect::INVALID_TOKEN));
    assert_eq!(
        error_code(&c.replies()[0]),
        ErrorCode::UNAUTHORIZED.code as u64
    );
    // A token signed with another secret: closed as invalid.
    let mut c = Conn::new(&node);
    let forged = Auth::new("other", None, None).mint(&Claims {
        sub: "mallory".into(),
        ..Claims::default()
    });
    let flow = c.send(json!({"id": 1, "connect": {"token": forged}})).await;
    assert_eq!(flow, Flow::Close(Disconnect::INVALID_TOKEN));
    assert!(!c.session.is_connected());
    // Expired: error 109 and the connection stays, for the SDK to refresh its token.
    let mut c = Conn::new(&node);
    let expired = node.token("bob", Some(c.now.unix - 120));
    let r = c
        .call(json!({"id": 1, "connect": {"token": expired}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::TOKEN_EXPIRED.code as u64);
    assert!(!c.session.is_connected());
    // Any other command before connect is a protocol violation.
    let mut c = Conn::new(&node);
    let flow = c
        .send(json!({"id": 1, "subscribe": {"channel": "a"}}))
        .await;
    assert_eq!(flow, Flow::Close(Disconnect::BAD_REQUEST));
    assert_eq!(node.registered.lock().unwrap().values().sum::<usize>(), 0);
}

#[tokio::test]
async fn publish_commits_and_replies() {
    let node = Fake::new(|_| {});
    let mut c = Conn::new(&node);
    c.connect(&node, "alice").await;
    c.call(json!({"id": 2, "subscribe": {"channel": "room"}}))
        .await;
    let r = c
        .call(json!({"id": 3, "publish": {"channel": "room", "data": {"text": "hi"}}}))
        .await;
    assert_eq!(r, json!({"id": 3, "publish": {}}));
    assert_eq!(node.head("room").offset, 1);
    // Not subscribed and the namespace does not let any client publish: refused.
    let r = c
        .call(json!({"id": 4, "publish": {"channel": "other", "data": 1}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::PERMISSION_DENIED.code as u64);
    assert_eq!(node.head("other").offset, 0);
}
