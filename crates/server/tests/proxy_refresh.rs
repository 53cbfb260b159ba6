//! Refresh and sub_refresh proxies against a real HTTP backend the test starts: a
//! connection the connect proxy gave an `expire_at` (and a subscription the subscribe proxy
//! gave one, in a `proxy_sub_refresh` namespace) is refreshed by the backend when it comes:
//! extended with new info, ended with the protocol's codes (3005 "expired", unsubscribe
//! 2501), disconnected with the backend's code; a backend that is down, slow or answers
//! garbage does not end it (asked again later).

use std::time::Duration;

use roomcast::auth::now_secs;
use roomcast::config::NamespaceOptions;
use roomcast_testkit::*;
use serde_json::{json, Value};

mod backend;
use backend::{ok, Backend};

/// Long enough for the refresher's once-a-second ticker to reach an `expire_at` one
/// second ahead, on a loaded machine.
const WITHIN: Duration = Duration::from_secs(10);

/// Calls of `path` the backend got so far.
fn calls(backend: &Backend, path: &str) -> Vec<Value> {
    backend
        .seen()
        .into_iter()
        .filter(|s| s.0 == path)
        .map(|s| s.2)
        .collect()
}

async fn wait_calls(backend: &Backend, path: &str, n: usize) -> Vec<Value> {
    eventually(WITHIN, &format!("{n} call(s) of {path}"), async || {
        calls(backend, path).len() >= n
    })
    .await;
    calls(backend, path)
}

/// A node with connect and refresh proxies on `backend`.
async fn node(backend: &Backend, refresh_timeout_ms: u64) -> TestServer {
    let (connect, refresh) = (backend.url("/connect"), backend.url("/refresh"));
    TestServer::start_with(move |c| {
        c.proxy_connect_endpoint = Some(connect);
        c.proxy_refresh_endpoint = Some(refresh);
        c.proxy_refresh_timeout_ms = refresh_timeout_ms;
        c.proxy_http_headers = vec!["Cookie".into()];
    })
    .await
}

/// The connect proxy's answer: `alice`, expiring in a second.
fn alice_expiring() -> (u16, String, Duration) {
    ok(json!({"result": {"user": "alice", "expire_at": now_secs() + 1, "info": {"v": 1}}}))
}

async fn connect(s: &TestServer) -> Client {
    let mut c = Client::open_with_headers(&s.ws_url(), &[("Cookie", "session=a")]).await;
    let r = c.call(json!({"connect": {}})).await;
    assert!(r.get("connect").is_some(), "{r}");
    // Refreshed by the server: the client is not asked to refresh a token it lacks.
    assert_eq!(r["connect"]["expires"], Value::Null, "{r}");
    c
}

#[tokio::test]
async fn refresh_proxy_extends_with_new_info_then_expires_the_connection() {
    // The answer depends on how many refreshes came before: the first extends by a second
    // with new info, the second says the connection expired.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = count.clone();
    let backend = Backend::start(move |path, _, _| match path {
        "/connect" => alice_expiring(),
        "/refresh" => match n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => ok(json!({"result": {"expire_at": now_secs() + 1, "info": {"v": 2}}})),
            _ => ok(json!({"result": {"expired": true}})),
        },
        other => panic!("unexpected {other}"),
    })
    .await;
    let s = node(&backend, 1000).await;
    let mut c = connect(&s).await;
    c.subscribe("room").await;
    let first = wait_calls(&backend, "/refresh", 1).await;
    assert_eq!(first[0]["user"], "alice");
    assert_eq!(first[0]["transport"], "websocket");
    assert_eq!(first[0]["protocol"], "json");
    assert_eq!(first[0]["client"].as_str().unwrap().len(), 36);
    // The connection lives on past its first expire_at, with the backend's new info
    // (taken before its next command, once the answer is applied).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c
        .call(json!({"publish": {"channel": "room", "data": {"n": 1}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let p = c.next_pub("room").await;
    assert_eq!(p["info"]["conn_info"], json!({"v": 2}), "{p}");
    // The second refresh says it expired: closed with 3005.
    assert_eq!(c.closed_code().await, Some(3005));
    assert_eq!(calls(&backend, "/refresh").len(), 2);
}

#[tokio::test]
async fn refresh_proxy_refusals_and_disconnects_end_the_connection_with_their_codes() {
    let backend = Backend::start(|path, headers, _| match path {
        "/connect" => alice_expiring(),
        _ => match headers.get("cookie").and_then(|v| v.to_str().ok()) {
            Some("session=a") => ok(json!({"disconnect": {"code": 4501, "reason": "banned"}})),
            _ => ok(json!({"error": {"code": 1000, "message": "no"}})),
        },
    })
    .await;
    let s = node(&backend, 1000).await;
    let mut banned = connect(&s).await;
    assert_eq!(banned.closed_code().await, Some(4501));
    // Refused (an error answer, not a result): the connection expired.
    let mut other = Client::open_with_headers(&s.ws_url(), &[("Cookie", "session=b")]).await;
    assert!(other
        .call(json!({"connect": {}}))
        .await
        .get("connect")
        .is_some());
    assert_eq!(other.closed_code().await, Some(3005));
}

#[tokio::test]
async fn refresh_proxy_down_slow_or_garbage_keeps_the_connection() {
    for answer in ["slow", "garbage", "bad info", "status"] {
        let backend = Backend::start(move |path, _, _| match (path, answer) {
            ("/connect", _) => alice_expiring(),
            (_, "slow") => (200, "{}".into(), Duration::from_secs(30)),
            (_, "garbage") => (200, "not json".into(), Duration::ZERO),
            (_, "bad info") => {
                ok(json!({"result": {"expire_at": now_secs() + 1, "b64info": "%%"}}))
            }
            _ => (500, "{}".into(), Duration::ZERO),
        })
        .await;
        let s = node(&backend, 300).await;
        let mut c = connect(&s).await;
        wait_calls(&backend, "/refresh", 1).await;
        // Past the timeout and the expire_at: still connected, asked again later.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = c.call(json!({"ping": {}})).await;
        assert!(r.get("ping").is_some(), "{answer}: {r}");
        assert_eq!(
            calls(&backend, "/refresh").len(),
            1,
            "{answer}: retried after a minute"
        );
    }
    // The backend gone altogether (nothing listens on its port).
    let backend = Backend::start(|_, _, _| alice_expiring()).await;
    let connect_url = backend.url("/connect");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/refresh", l.local_addr().unwrap())
    };
    let s = TestServer::start_with(move |c| {
        c.proxy_connect_endpoint = Some(connect_url);
        c.proxy_refresh_endpoint = Some(dead);
    })
    .await;
    let mut c = connect(&s).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(c.call(json!({"ping": {}})).await.get("ping").is_some());
}

#[tokio::test]
async fn a_connection_without_a_refresh_proxy_expires_as_before() {
    let backend = Backend::start(|_, _, _| alice_expiring()).await;
    let url = backend.url("/connect");
    let s = TestServer::start_with(move |c| c.proxy_connect_endpoint = Some(url)).await;
    let mut c = Client::open(&s.ws_url()).await;
    let r = c.call(json!({"connect": {}})).await;
    assert_eq!(r["connect"]["expires"], true, "client-side refresh: {r}");
}

/// A node whose `team` namespace asks the subscribe and sub_refresh proxies, and whose
/// `plain` namespace only the subscribe proxy.
async fn sub_node(backend: &Backend) -> TestServer {
    let (sub, refresh) = (backend.url("/subscribe"), backend.url("/sub_refresh"));
    TestServer::start_with(move |c| {
        c.proxy_subscribe_endpoint = Some(sub);
        c.proxy_sub_refresh_endpoint = Some(refresh);
        let ns = NamespaceOptions {
            allow_subscribe_for_client: false,
            proxy_subscribe: true,
            proxy_sub_refresh: true,
            ..NamespaceOptions::default()
        };
        c.namespaces.insert("team".into(), ns.clone());
        c.namespaces.insert(
            "plain".into(),
            NamespaceOptions {
                proxy_sub_refresh: false,
                ..ns
            },
        );
    })
    .await
}

#[tokio::test]
async fn sub_refresh_proxy_extends_then_expires_the_subscription_per_namespace() {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = count.clone();
    let backend = Backend::start(move |path, _, body| match path {
        "/subscribe" => ok(json!({"result": {"expire_at": now_secs() + 1}})),
        "/sub_refresh" => {
            assert_eq!(
                body["channel"], "team:red",
                "only proxy_sub_refresh namespaces"
            );
            match n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => ok(json!({"result": {"expire_at": now_secs() + 1}})),
                _ => ok(json!({"result": {"expired": true}})),
            }
        }
        other => panic!("unexpected {other}"),
    })
    .await;
    let s = sub_node(&backend).await;
    let mut alice = s.client("alice").await;
    for channel in ["team:red", "plain:blue"] {
        let r = alice.call(json!({"subscribe": {"channel": channel}})).await;
        assert!(r.get("subscribe").is_some(), "{r}");
        assert_eq!(r["subscribe"]["expires"], Value::Null, "server-side: {r}");
    }
    let first = wait_calls(&backend, "/sub_refresh", 1).await;
    assert_eq!(first[0]["user"], "alice");
    assert_eq!(first[0]["protocol"], "json");
    // Extended: still subscribed and receiving.
    s.publish("team:red", json!({"n": 1})).await;
    assert_eq!(alice.next_pub("team:red").await["data"], json!({"n": 1}));
    // The second says expired: an unsubscribe push with 2501, then nothing more there.
    let push = alice.next_push(|p| p.get("unsubscribe").is_some()).await;
    assert_eq!(push["channel"], "team:red");
    assert_eq!(push["unsubscribe"]["code"], 2501, "{push}");
    assert_eq!(push["unsubscribe"]["reason"], "subscription expired");
    s.publish("team:red", json!({"n": 2})).await;
    s.publish("plain:blue", json!({"n": 3})).await;
    assert_eq!(alice.next_pub("plain:blue").await["data"], json!({"n": 3}));
    // The plain namespace's subscription was never refreshed, and stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(calls(&backend, "/sub_refresh").len(), 2);
    let p = s.api("presence", json!({"channel": "plain:blue"})).await;
    assert_eq!(p["result"]["presence"].as_object().unwrap().len(), 1, "{p}");
    let p = s.api("presence", json!({"channel": "team:red"})).await;
    assert_eq!(p["result"]["presence"].as_object().unwrap().len(), 0, "{p}");
}

#[tokio::test]
async fn an_unsubscribed_or_gone_subscription_is_not_refreshed() {
    let backend = Backend::start(|path, _, _| match path {
        "/subscribe" => ok(json!({"result": {"expire_at": now_secs() + 1}})),
        _ => ok(json!({"result": {"expired": true}})),
    })
    .await;
    let s = sub_node(&backend).await;
    let mut alice = s.client("alice").await;
    alice.subscribe("team:a").await;
    let r = alice
        .call(json!({"unsubscribe": {"channel": "team:a"}}))
        .await;
    assert!(r.get("unsubscribe").is_some(), "{r}");
    let mut bob = s.client("bob").await;
    bob.subscribe("team:b").await;
    bob.close().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(calls(&backend, "/sub_refresh").is_empty());
}

#[tokio::test]
async fn proxy_sub_refresh_without_an_endpoint_is_a_configuration_error() {
    let mut c = roomcast::Config::default();
    c.namespaces.insert(
        "team".into(),
        NamespaceOptions {
            proxy_sub_refresh: true,
            ..NamespaceOptions::default()
        },
    );
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("proxy_sub_refresh_endpoint"), "{e}");
}
