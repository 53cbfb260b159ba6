//! Connect and publish proxies against a real HTTP backend the test starts (axum on a
//! loopback port): the backend's decisions (accept, refuse, disconnect, rewrite) reach the
//! client with the protocol's codes, a backend that is down, slow or answers garbage costs
//! a bounded wait and a clear error, and nothing is stored that the publish proxy did not
//! accept.

use std::time::{Duration, Instant};

use roomcast::config::NamespaceOptions;
use roomcast::Config;
use roomcast_testkit::*;
use serde_json::{json, Value};

mod backend;
use backend::{ok, Backend};

/// A node whose connect proxy is `backend`/connect (cookies forwarded).
async fn node_with_connect_proxy(backend: &Backend, tune: impl FnOnce(&mut Config)) -> TestServer {
    let url = backend.url("/connect");
    TestServer::start_with(|c| {
        c.proxy_connect_endpoint = Some(url);
        c.proxy_http_headers = vec!["Cookie".into()];
        c.proxy_connect_timeout_ms = 500;
        tune(c);
    })
    .await
}

/// The backend of a chat app: the `session` cookie says who you are.
fn chat_backend(
    path: &str,
    headers: &axum::http::HeaderMap,
    body: &Value,
) -> (u16, String, Duration) {
    assert_eq!(path, "/connect");
    let cookie = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match cookie {
        "session=alice-secret" => ok(json!({"result": {
            "user": "alice",
            "info": {"name": "Alice"},
            "channels": ["lobby"],
        }})),
        "session=banned" => ok(json!({"disconnect": {"code": 4501, "reason": "banned"}})),
        _ => ok(
            json!({"error": {"code": 1000, "message": format!("who are you? {}", body["data"])}}),
        ),
    }
}

#[tokio::test]
async fn connect_proxy_accepts_with_user_info_and_channels_from_the_backend_by_cookie() {
    let backend = Backend::start(chat_backend).await;
    let s = node_with_connect_proxy(&backend, |_| {}).await;
    let mut c = Client::open_with_headers(&s.ws_url(), &[("Cookie", "session=alice-secret")]).await;
    let r = c
        .call(json!({"connect": {"data": {"app": "web"}, "name": "js", "version": "5.0"}}))
        .await;
    assert!(r["connect"]["subs"].get("lobby").is_some(), "{r}");
    assert_eq!(r["connect"]["expires"], Value::Null);
    // The user and info are the backend's: presence shows them.
    let p = s.api("presence", json!({"channel": "lobby"})).await;
    let entry = p["result"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(entry["user"], "alice");
    assert_eq!(entry["conn_info"], json!({"name": "Alice"}));
    // What the backend was told.
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    let (path, cookie, body) = &seen[0];
    assert_eq!(path, "/connect");
    assert_eq!(cookie.as_deref(), Some("session=alice-secret"));
    assert_eq!(body["client"], r["connect"]["client"]);
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["protocol"], "json");
    assert_eq!(body["data"], json!({"app": "web"}));
    assert_eq!(body["name"], "js");
    assert_eq!(body["version"], "5.0");
    // A token still works without asking the backend.
    let t = s.client("bob").await;
    t.close().await;
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn connect_proxy_refusals_reach_the_client_with_their_codes() {
    let backend = Backend::start(chat_backend).await;
    let s = node_with_connect_proxy(&backend, |_| {}).await;
    // No cookie: the backend's error, code and message, and the connection stays open.
    let mut c = Client::open(&s.ws_url()).await;
    let r = c.call(json!({"connect": {"data": "hi"}})).await;
    assert_eq!(r["error"]["code"], 1000, "{r}");
    assert_eq!(r["error"]["message"], "who are you? \"hi\"");
    let r = c.call(json!({"connect": {}})).await;
    assert_eq!(r["error"]["code"], 1000);
    // The backend's disconnect code closes the connection.
    let mut c = Client::open_with_headers(&s.ws_url(), &[("Cookie", "session=banned")]).await;
    c.send(json!({"connect": {}})).await;
    assert_eq!(c.closed_code().await, Some(4501));
    // Headers not listed in proxy_http_headers are not forwarded.
    let none = node_with_connect_proxy(&backend, |c| c.proxy_http_headers.clear()).await;
    let mut c =
        Client::open_with_headers(&none.ws_url(), &[("Cookie", "session=alice-secret")]).await;
    let r = c.call(json!({"connect": {}})).await;
    assert_eq!(r["error"]["code"], 1000);
}

/// A connect through a failing backend: the temporary internal error, within `within`.
async fn connect_fails_internal(s: &TestServer, within: Duration) {
    let mut c = Client::open(&s.ws_url()).await;
    let started = Instant::now();
    let r = c.call(json!({"connect": {}})).await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    assert_eq!(r["error"]["temporary"], true);
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn connect_proxy_down_slow_or_garbage_is_a_bounded_internal_error() {
    let cases: Vec<(u16, &str, Duration)> = vec![
        (200, "not json", Duration::ZERO),
        (200, r#"{"result": {"user": 5}}"#, Duration::ZERO),
        (
            200,
            r#"{"result": {"user": "a", "info": [[[[[[1]]]]]]}}"#,
            Duration::ZERO,
        ),
        (200, r#"{"error": {"code": 100}}"#, Duration::ZERO),
        (500, r#"{"result": {"user": "a"}}"#, Duration::ZERO),
        (200, r#"{"result": {"user": "a"}}"#, Duration::from_secs(30)),
    ];
    for (status, body, delay) in cases {
        let backend = Backend::start(move |_, _, _| (status, body.to_owned(), delay)).await;
        let s = node_with_connect_proxy(&backend, |c| c.max_data_depth = 4).await;
        connect_fails_internal(&s, Duration::from_secs(5)).await;
    }
    // Nothing listening at all.
    let gone = Backend::start(|_, _, _| ok(json!({}))).await;
    let url = gone.url("/connect");
    drop(gone);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = TestServer::start_with(|c| c.proxy_connect_endpoint = Some(url)).await;
    connect_fails_internal(&s, Duration::from_secs(5)).await;
}

/// A node whose `chat` namespace goes through `backend`/publish.
async fn node_with_publish_proxy(backend: &Backend) -> TestServer {
    let url = backend.url("/publish");
    TestServer::start_with(|c| {
        c.proxy_publish_endpoint = Some(url);
        c.proxy_publish_timeout_ms = 500;
        c.namespaces.insert(
            "chat".into(),
            NamespaceOptions {
                proxy_publish: true,
                ..NamespaceOptions::default()
            },
        );
    })
    .await
}

/// A moderating backend: refuses spam, masks a bad word, disconnects trolls.
fn moderator(path: &str, _: &axum::http::HeaderMap, body: &Value) -> (u16, String, Duration) {
    assert_eq!(path, "/publish");
    let text = body["data"]["text"].as_str().unwrap_or("");
    if text.contains("spam") {
        ok(json!({"error": {"code": 1001, "message": "no spam"}}))
    } else if text.contains("troll") {
        ok(json!({"disconnect": {"code": 4502, "reason": "troll"}}))
    } else if text.contains("slow") {
        (
            200,
            json!({"result": {}}).to_string(),
            Duration::from_secs(30),
        )
    } else if text.contains("garbage") {
        (200, "{\"result\":".into(), Duration::ZERO)
    } else if text.contains("darn") {
        let masked = text.replace("darn", "****");
        ok(json!({"result": {"data": {"text": masked, "by": body["user"]}}}))
    } else {
        ok(json!({"result": {}}))
    }
}

async fn history(s: &TestServer, channel: &str) -> Vec<Value> {
    let h = s
        .api("history", json!({"channel": channel, "limit": -1}))
        .await;
    h["result"]["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn publish_proxy_refuses_accepts_and_rewrites() {
    let backend = Backend::start(moderator).await;
    let s = node_with_publish_proxy(&backend).await;
    let mut reader = s.client("reader").await;
    reader.subscribe("chat:room").await;
    let mut alice = s.client("alice").await;
    alice.subscribe("chat:room").await;

    // Refused: the client gets the backend's error and nothing is stored or sent.
    let r = alice
        .call(json!({"publish": {"channel": "chat:room", "data": {"text": "buy spam"}}}))
        .await;
    assert_eq!(r["error"]["code"], 1001, "{r}");
    assert_eq!(r["error"]["message"], "no spam");
    assert!(history(&s, "chat:room").await.is_empty());

    // Accepted as sent.
    let r = alice
        .call(json!({"publish": {"channel": "chat:room", "data": {"text": "hello"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    // Rewritten: subscribers and history see the backend's data.
    let r = alice
        .call(json!({"publish": {"channel": "chat:room", "data": {"text": "darn it"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    // The first publication the reader gets is the accepted one: the refused one never went out.
    assert_eq!(
        reader.next_pub("chat:room").await["data"],
        json!({"text": "hello"})
    );
    assert_eq!(
        reader.next_pub("chat:room").await["data"],
        json!({"text": "**** it", "by": "alice"})
    );
    let h = history(&s, "chat:room").await;
    let data: Vec<&Value> = h.iter().map(|p| &p["data"]).collect();
    assert_eq!(
        data,
        [
            &json!({"text": "hello"}),
            &json!({"text": "**** it", "by": "alice"})
        ]
    );

    // What the backend saw of the rewritten one.
    let seen = backend.seen();
    assert_eq!(seen.len(), 3);
    let body = &seen[2].2;
    assert_eq!(body["channel"], "chat:room");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["data"], json!({"text": "darn it"}));
    assert_eq!(body["transport"], "websocket");

    // Channels outside proxied namespaces do not ask the backend.
    alice.subscribe("plain").await;
    let r = alice
        .call(json!({"publish": {"channel": "plain", "data": {"text": "spam"}}}))
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    assert_eq!(backend.seen().len(), 3);

    // The backend's disconnect closes the publisher; nothing stored.
    alice
        .send(json!({"publish": {"channel": "chat:room", "data": {"text": "troll"}}}))
        .await;
    assert_eq!(alice.closed_code().await, Some(4502));
    assert_eq!(history(&s, "chat:room").await.len(), 2);
}

#[tokio::test]
async fn publish_proxy_slow_garbage_or_down_stores_nothing() {
    let backend = Backend::start(moderator).await;
    let s = node_with_publish_proxy(&backend).await;
    let mut alice = s.client("alice").await;
    alice.subscribe("chat:room").await;
    for text in ["slow", "garbage"] {
        let started = Instant::now();
        let r = alice
            .call(json!({"publish": {"channel": "chat:room", "data": {"text": text}}}))
            .await;
        assert_eq!(r["error"]["code"], 100, "{text}: {r}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // A pipelined batch: each publication decided on its own, in order.
    let ids = [
        alice
            .send(json!({"publish": {"channel": "chat:room", "data": {"text": "one"}}}))
            .await,
        alice
            .send(json!({"publish": {"channel": "chat:room", "data": {"text": "spam"}}}))
            .await,
        alice
            .send(json!({"publish": {"channel": "chat:room", "data": {"text": "two darn"}}}))
            .await,
    ];
    assert!(alice.reply(ids[0]).await.get("publish").is_some());
    assert_eq!(alice.reply(ids[1]).await["error"]["code"], 1001);
    assert!(alice.reply(ids[2]).await.get("publish").is_some());
    let h = history(&s, "chat:room").await;
    let texts: Vec<&Value> = h.iter().map(|p| &p["data"]["text"]).collect();
    assert_eq!(texts, [&json!("one"), &json!("two ****")]);
    // The backend gone: errors, still nothing stored.
    drop(backend);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = alice
        .call(json!({"publish": {"channel": "chat:room", "data": {"text": "three"}}}))
        .await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    assert_eq!(history(&s, "chat:room").await.len(), 2);
}

#[tokio::test]
async fn proxy_publish_without_an_endpoint_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.default_namespace.proxy_publish = true;
    assert!(roomcast::Server::start(c).await.is_err());
    let mut c = config(dir.path());
    c.proxy_connect_endpoint = Some("https://backend.example/connect".into());
    assert!(roomcast::Server::start(c).await.is_err());
}

/// An RPC backend: `echo` returns its data, `whoami` the caller, `deny` refuses, `kick`
/// disconnects, `slow` takes too long.
fn rpc_backend(path: &str, _: &axum::http::HeaderMap, body: &Value) -> (u16, String, Duration) {
    assert_eq!(path, "/rpc");
    match body["method"].as_str().unwrap_or("") {
        "echo" => ok(json!({"result": {"data": body["data"]}})),
        "whoami" => {
            ok(json!({"result": {"data": {"user": body["user"], "client": body["client"]}}}))
        }
        "b64" => ok(json!({"result": {"b64data": "eyJvayI6dHJ1ZX0="}})),
        "deny" => ok(json!({"error": {"code": 1403, "message": "not yours"}})),
        "kick" => ok(json!({"disconnect": {"code": 4001, "reason": "kicked"}})),
        "slow" => (
            200,
            json!({"result": {}}).to_string(),
            Duration::from_secs(30),
        ),
        _ => ok(json!({"error": {"code": 404, "message": "no such method"}})),
    }
}

#[tokio::test]
async fn rpc_proxy_answers_calls_with_the_backends_data_and_codes() {
    let backend = Backend::start(rpc_backend).await;
    let url = backend.url("/rpc");
    let s = TestServer::start_with(|c| {
        c.proxy_rpc_endpoint = Some(url);
        c.proxy_rpc_timeout_ms = 300;
    })
    .await;
    let mut c = s.client("alice").await;
    let r = c
        .call(json!({"rpc": {"method": "echo", "data": {"n": [1, 2]}}}))
        .await;
    assert_eq!(r["rpc"]["data"], json!({"n": [1, 2]}), "{r}");
    let r = c.call(json!({"rpc": {"method": "whoami"}})).await;
    assert_eq!(r["rpc"]["data"]["user"], "alice");
    assert_eq!(r["rpc"]["data"]["client"].as_str().unwrap().len(), 36);
    let r = c.call(json!({"rpc": {"method": "b64"}})).await;
    assert_eq!(r["rpc"]["data"], json!({"ok": true}));
    let r = c.call(json!({"rpc": {"method": "deny"}})).await;
    assert_eq!(
        (r["error"]["code"].clone(), r["error"]["message"].clone()),
        (json!(1403), json!("not yours"))
    );
    let started = Instant::now();
    let r = c.call(json!({"rpc": {"method": "slow"}})).await;
    assert_eq!(r["error"]["code"], 100);
    assert!(started.elapsed() < Duration::from_secs(5));
    // roomcast's own methods are never sent to the backend.
    let before = backend.seen().len();
    let r = c.call(json!({"rpc": {"method": "roomcast.nothing"}})).await;
    assert!(r.get("error").is_some(), "{r}");
    assert_eq!(backend.seen().len(), before);
    c.send(json!({"rpc": {"method": "kick"}})).await;
    assert_eq!(c.closed_code().await, Some(4001));
}

#[tokio::test]
async fn subscribe_proxy_grants_and_refuses_subscriptions() {
    let backend = Backend::start(|path, _, body| {
        assert_eq!(path, "/subscribe");
        match (body["user"].as_str(), body["channel"].as_str()) {
            (Some("alice"), Some("team:red")) => ok(json!({"result": {}})),
            (_, Some("team:kick")) => ok(json!({"disconnect": {"code": 4003, "reason": "x"}})),
            (_, Some("team:slow")) => (200, "{}".into(), Duration::from_secs(30)),
            _ => ok(json!({"error": {"code": 1403, "message": "not in team"}})),
        }
    })
    .await;
    let url = backend.url("/subscribe");
    let s = TestServer::start_with(|c| {
        c.proxy_subscribe_endpoint = Some(url);
        c.proxy_subscribe_timeout_ms = 300;
        c.namespaces.insert(
            "team".into(),
            NamespaceOptions {
                allow_subscribe_for_client: false,
                proxy_subscribe: true,
                ..NamespaceOptions::default()
            },
        );
    })
    .await;
    let mut alice = s.client("alice").await;
    let r = alice
        .call(json!({"subscribe": {"channel": "team:red", "data": {"x": 1}}}))
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let seen = backend.seen();
    assert_eq!(seen[0].2["data"], json!({"x": 1}));
    assert_eq!(seen[0].2["client"].as_str().unwrap().len(), 36);
    s.publish("team:red", json!({"hi": 1})).await;
    assert_eq!(alice.next_pub("team:red").await["data"], json!({"hi": 1}));
    let mut bob = s.client("bob").await;
    let r = bob
        .call(json!({"subscribe": {"channel": "team:red"}}))
        .await;
    assert_eq!(r["error"]["code"], 1403, "{r}");
    let r = bob
        .call(json!({"subscribe": {"channel": "team:slow"}}))
        .await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    // Other namespaces do not ask the backend.
    let before = backend.seen().len();
    assert!(bob
        .call(json!({"subscribe": {"channel": "open"}}))
        .await
        .get("subscribe")
        .is_some());
    assert_eq!(backend.seen().len(), before);
    bob.send(json!({"subscribe": {"channel": "team:kick"}}))
        .await;
    assert_eq!(bob.closed_code().await, Some(4003));
}
