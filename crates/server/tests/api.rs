//! The server HTTP API: every method, idempotent publish, and the refusal paths.

use roomcast_testkit::*;
use serde_json::json;

#[tokio::test]
async fn idempotent_publish_is_stored_once() {
    let s = TestServer::start().await;
    let body = json!({"channel": "r", "data": {"t": 1}, "idempotency_key": "order-17"});
    let a = s.api("publish", body.clone()).await;
    let b = s.api("publish", body).await;
    assert_eq!(a["result"]["offset"], 1);
    assert_eq!(b["result"], a["result"], "a retry returns the first result");
    let other = s
        .api(
            "publish",
            json!({"channel": "r", "data": {"t": 2}, "idempotency_key": "order-18"}),
        )
        .await;
    assert_eq!(other["result"]["offset"], 2);
    let h = s.api("history", json!({"channel": "r", "limit": -1})).await;
    assert_eq!(h["result"]["publications"].as_array().unwrap().len(), 2);
    assert_eq!(h["result"]["offset"], 2);
}

#[tokio::test]
async fn broadcast_history_presence_channels_info() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    let r = s
        .api(
            "broadcast",
            json!({"channels": ["a", "b", "bad:x"], "data": "hi"}),
        )
        .await;
    let responses = r["result"]["responses"].as_array().unwrap();
    assert_eq!(responses[0]["result"]["offset"], 1);
    assert_eq!(responses[1]["result"]["offset"], 1);
    assert_eq!(responses[2]["error"]["code"], 102);
    assert_eq!(c.next_pub("a").await["data"], "hi");
    assert_eq!(c.next_pub("b").await["data"], "hi");
    let p = s.api("presence", json!({"channel": "a"})).await;
    let entries = p["result"]["presence"].as_object().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries.values().next().unwrap()["user"], "alice");
    let p = s.api("presence_stats", json!({"channel": "a"})).await;
    assert_eq!(p["result"], json!({"num_clients": 1, "num_users": 1}));
    let ch = s.api("channels", json!({})).await;
    assert_eq!(ch["result"]["channels"]["a"]["num_clients"], 1);
    assert_eq!(ch["result"]["channels"].as_object().unwrap().len(), 2);
    let ch = s.api("channels", json!({"pattern": "b*"})).await;
    assert_eq!(ch["result"]["channels"].as_object().unwrap().len(), 1);
    let info = s.api("info", json!({})).await;
    assert_eq!(info["result"]["nodes"][0]["num_clients"], 1);
    assert_eq!(info["result"]["nodes"][0]["num_users"], 1);
}

#[tokio::test]
async fn disconnect_and_unsubscribe_users() {
    let s = TestServer::start().await;
    let mut a = s.client("alice").await;
    a.subscribe("r").await;
    let mut b = s.client("bob").await;
    b.subscribe("r").await;
    s.api("unsubscribe", json!({"user": "alice", "channel": "r"}))
        .await;
    let push = a.next_push(|p| p.get("unsubscribe").is_some()).await;
    assert_eq!(push["channel"], "r");
    assert_eq!(push["unsubscribe"]["code"], 2000);
    s.publish("r", json!(1)).await;
    assert_eq!(b.next_pub("r").await["offset"], 1);
    let r = a.call(json!({"presence_stats": {"channel": "r"}})).await;
    assert_eq!(error_code(&r), Some(103), "alice is no longer subscribed");
    s.api("disconnect", json!({"user": "bob"})).await;
    assert_eq!(b.closed_code().await, Some(3503));
    s.api(
        "disconnect",
        json!({"user": "alice", "disconnect": {"code": 3011, "reason": "go away"}}),
    )
    .await;
    assert_eq!(a.closed_code().await, Some(3011));
}

#[tokio::test]
async fn wrong_key_malformed_body_and_unknown_method() {
    let s = TestServer::start().await;
    let (status, v) = api_raw(
        s.addr,
        "publish",
        Some("wrong"),
        "{\"channel\":\"r\",\"data\":1}",
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], 101);
    let (status, _) = api_raw(s.addr, "publish", None, "{\"channel\":\"r\",\"data\":1}").await;
    assert_eq!(status, 401);
    let (status, v) = api_raw(s.addr, "publish", Some(API_KEY), "{\"channel\":").await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{v}"
    );
    let (status, v) = api_raw(s.addr, "publish", Some(API_KEY), "{\"channel\":\"r\"}").await;
    assert_eq!(status, 400, "missing data: {v}");
    let (status, v) = api_raw(
        s.addr,
        "publish",
        Some(API_KEY),
        "{\"channel\":\"accepted\",\"data\":1,\"bogus\":2}",
    )
    .await;
    // Unknown fields are ignored, as Centrifugo does (issue 13): its API grows fields.
    // (Another channel: `r` must hold nothing of the refused calls below.)
    assert_eq!(status, 200, "unknown field: {v}");
    assert_eq!(v["result"]["offset"], 1, "{v}");
    let (status, _) = api_raw(s.addr, "frobnicate", Some(API_KEY), "{}").await;
    assert_eq!(status, 404);
    let (status, v) = api_raw(
        s.addr,
        "publish",
        Some(API_KEY),
        "{\"channel\":\"nope:x\",\"data\":1}",
    )
    .await;
    assert_eq!((status, v["error"]["code"].as_u64()), (200, Some(102)));
    let (status, v) = api_raw(
        s.addr,
        "disconnect",
        Some(API_KEY),
        "{\"user\":\"a\",\"disconnect\":{\"code\":1234,\"reason\":\"x\"}}",
    )
    .await;
    assert_eq!((status, v["error"]["code"].as_u64()), (200, Some(107)));
    // Nothing of the refused calls was stored.
    let h = s.api("history", json!({"channel": "r", "limit": -1})).await;
    assert_eq!(h["result"]["publications"], json!([]));
}

/// Fields of Centrifugo's API that roomcast accepts (issue 13): `whitelist` keeps the
/// listed clients connected; `skip_history`, `tags`, `session` and unknown fields are
/// accepted and ignored (README, "Server API").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifugo_fields_are_accepted_and_whitelist_is_honoured() {
    let s = TestServer::start().await;
    let mut sub = s.client("reader").await;
    sub.subscribe("f").await;
    let r = s
        .api(
            "publish",
            json!({"channel": "f", "data": {"a": 1}, "skip_history": true,
                   "tags": {"k": "v"}, "b64data": "", "delta": false, "version": 0}),
        )
        .await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    assert_eq!(sub.next_pub("f").await["data"], json!({"a": 1}));
    let r = s
        .api(
            "broadcast",
            json!({"channels": ["f"], "data": 2, "skip_history": false, "tags": {}}),
        )
        .await;
    assert_eq!(r["result"]["responses"][0]["result"]["offset"], 2, "{r}");
    let r = s
        .api(
            "unsubscribe",
            json!({"user": "nobody", "channel": "f", "session": "s1", "client": "c1"}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");

    // Two connections of one user; the whitelisted one stays.
    let mut keep = Client::open(&s.ws_url()).await;
    let id = keep.call(json!({"connect": {"token": token("bob")}})).await["connect"]["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut gone = s.client("bob").await;
    let r = s
        .api(
            "disconnect",
            json!({"user": "bob", "whitelist": [id], "session": ""}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert!(gone.closed_code().await.is_some());
    let r = keep.call(json!({"ping": {}})).await;
    assert!(
        r.get("ping").is_some(),
        "the whitelisted client is still connected: {r}"
    );
}
