//! Connect and authentication: every way a connect can fail gets the protocol's code.

use roomcast::auth::{now_secs, Claims};
use roomcast_testkit::*;
use serde_json::json;

#[tokio::test]
async fn valid_token_connects_with_ping_settings() {
    let s = TestServer::start().await;
    let mut c = Client::open(&s.ws_url()).await;
    let r = c.call(json!({"connect": {"token": token("alice")}})).await;
    assert_eq!(r["connect"]["ping"], 25);
    assert_eq!(r["connect"]["pong"], true);
    assert_eq!(r["connect"]["expires"], true);
    assert!(r["connect"]["ttl"].as_u64().unwrap() > 3500);
    assert_eq!(r["connect"]["client"].as_str().unwrap().len(), 36);
}

#[tokio::test]
async fn missing_token_is_unauthorized_then_closed() {
    let s = TestServer::start().await;
    let mut c = Client::open(&s.ws_url()).await;
    let id = c.send(json!({"connect": {}})).await;
    let r = c.reply(id).await;
    assert_eq!(error_code(&r), Some(101));
    assert_eq!(c.closed_code().await, Some(3500));
}

#[tokio::test]
async fn wrong_key_and_alg_none_and_garbage_tokens_are_invalid() {
    let s = TestServer::start().await;
    let wrong_key = roomcast::auth::Auth::new("not-the-secret", None, None).mint(&Claims {
        sub: "alice".into(),
        ..Claims::default()
    });
    let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSJ9.";
    for t in [wrong_key.as_str(), alg_none, "not.a.token"] {
        let mut c = Client::open(&s.ws_url()).await;
        c.send(json!({"connect": {"token": t}})).await;
        assert_eq!(c.closed_code().await, Some(3500), "token {t}");
    }
}

#[tokio::test]
async fn expired_token_gets_token_expired_and_refresh_works() {
    let s = TestServer::start().await;
    let mut c = Client::open(&s.ws_url()).await;
    let expired = token_with(Claims {
        sub: "alice".into(),
        exp: Some(now_secs() - 10),
        ..Claims::default()
    });
    let r = c.call(json!({"connect": {"token": expired}})).await;
    assert_eq!(error_code(&r), Some(109));
    // The SDK fetches a new token and connects again.
    let r = c.call(json!({"connect": {"token": token("alice")}})).await;
    assert!(r.get("connect").is_some(), "{r}");
    let fresh = token_with(Claims {
        sub: "alice".into(),
        exp: Some(now_secs() + 7200),
        ..Claims::default()
    });
    let r = c.call(json!({"refresh": {"token": fresh}})).await;
    assert_eq!(r["refresh"]["expires"], true);
    assert!(r["refresh"]["ttl"].as_u64().unwrap() > 7000);
    // A token of another user cannot take over the connection.
    let other = token("mallory");
    c.send(json!({"refresh": {"token": other}})).await;
    assert_eq!(c.closed_code().await, Some(3500));
}

#[tokio::test]
async fn commands_before_connect_and_malformed_frames_are_bad_requests() {
    let s = TestServer::start().await;
    let mut c = Client::open(&s.ws_url()).await;
    c.send(json!({"subscribe": {"channel": "x"}})).await;
    assert_eq!(c.closed_code().await, Some(3501));

    let mut c = s.client("alice").await;
    c.send_raw("{\"id\":5,\"subscribe\":").await;
    assert_eq!(c.closed_code().await, Some(3501));

    let mut c = s.client("alice").await;
    c.send_raw("{\"id\":6,\"presence\":{\"channel\":\"a\"},\"history\":{\"channel\":\"a\"}}")
        .await;
    assert_eq!(c.closed_code().await, Some(3501));

    let mut c = s.client("alice").await;
    c.send(json!({"connect": {"token": token("alice")}})).await;
    assert_eq!(c.closed_code().await, Some(3501), "a second connect");
}

#[tokio::test]
async fn insecure_mode_connects_without_token() {
    let s = TestServer::start_with(|c| c.insecure = true).await;
    let mut c = Client::open(&s.ws_url()).await;
    let r = c.call(json!({"connect": {}})).await;
    assert!(r.get("connect").is_some(), "{r}");
    c.subscribe("lobby").await;
}

#[tokio::test]
async fn audience_and_issuer_are_enforced_when_configured() {
    let s = TestServer::start_with(|c| {
        c.token_audience = Some("chat".into());
        c.token_issuer = Some("auth.example".into());
    })
    .await;
    let good = token_with(Claims {
        sub: "a".into(),
        aud: Some("chat".into()),
        iss: Some("auth.example".into()),
        ..Claims::default()
    });
    let mut c = Client::open(&s.ws_url()).await;
    assert!(c
        .call(json!({"connect": {"token": good}}))
        .await
        .get("connect")
        .is_some());
    let bad = token_with(Claims {
        sub: "a".into(),
        aud: Some("other".into()),
        iss: Some("auth.example".into()),
        ..Claims::default()
    });
    let mut c = Client::open(&s.ws_url()).await;
    c.send(json!({"connect": {"token": bad}})).await;
    assert_eq!(c.closed_code().await, Some(3500));
}

#[tokio::test]
async fn connection_without_connect_is_closed_as_stale() {
    // The connect deadline is 10 s; wait it out with the real clock (the server runs in
    // this runtime, so paused time would stop it too).
    let s = TestServer::start().await;
    let mut c = Client::open(&s.ws_url()).await;
    let started = std::time::Instant::now();
    let code = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            if let Event::Closed(code) = c.next().await {
                return code;
            }
        }
    })
    .await;
    match code {
        Ok(code) => assert_eq!(code, Some(3502)),
        Err(_) => panic!("not closed after {:?}", started.elapsed()),
    }
}
