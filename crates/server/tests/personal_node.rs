//! Personal channels, send-to-user and user status on one node (in-memory registry), over
//! real sockets: every connection is subscribed to `#<user>` server-side on connect;
//! `user_publish` reaches every connection of that user and nobody else, and what was
//! sent while a connection was away is recovered when it reconnects with its position;
//! `user_status` and `rpc` `roomcast.status` say online/offline with the last-seen time;
//! every new input is checked (clear errors, bounded counts and sizes).

use roomcast_testkit::*;
use serde_json::{json, Value};

async fn user_publish(s: &TestServer, user: &str, data: Value) -> Value {
    s.api("user_publish", json!({"user": user, "data": data}))
        .await
}

async fn connect(url: &str, user: &str, subs: Value) -> (Client, Value) {
    Client::connect_with_subs(url, user, subs).await
}

#[tokio::test]
async fn the_personal_channel_is_subscribed_server_side_on_connect() {
    let s = TestServer::start().await;
    let (_c, r) = connect(&s.ws_url(), "alice", json!({})).await;
    let sub = &r["connect"]["subs"]["#alice"];
    assert_eq!(sub["recoverable"], true, "{r}");
    assert_eq!(sub["offset"].as_u64().unwrap_or(0), 0, "{r}"); // 0 is left out
    assert!(sub["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert_eq!(r["connect"]["subs"].as_object().unwrap().len(), 1, "{r}");
    // Nobody else may subscribe to it.
    let mut bob = s.client("bob").await;
    let r = bob.call(json!({"subscribe": {"channel": "#alice"}})).await;
    assert_eq!(error_code(&r), Some(103), "{r}");
    // It keeps no presence (`user_status` says where the user is).
    let p = s.api("presence", json!({"channel": "#alice"})).await;
    assert_eq!(p["result"]["presence"], json!({}), "{p}");
    // It is the server's own subscription: not in the `channels` listing of rooms.
    let ch = s.api("channels", json!({})).await;
    assert!(
        ch["result"]["channels"].as_object().unwrap().is_empty(),
        "{ch}"
    );
}

#[tokio::test]
async fn the_option_off_subscribes_nothing_yet_user_publish_stores() {
    let s = TestServer::start_with(|c| c.user_subscribe_to_personal = false).await;
    let (_c, r) = connect(&s.ws_url(), "alice", json!({})).await;
    assert!(
        r["connect"]["subs"]
            .as_object()
            .is_none_or(serde_json::Map::is_empty),
        "{r}"
    );
    let v = user_publish(&s, "alice", json!("stored")).await;
    assert_eq!(v["result"]["offset"], 1, "{v}");
    let h = s
        .api("history", json!({"channel": "#alice", "limit": 10}))
        .await;
    assert_eq!(h["result"]["publications"][0]["data"], "stored", "{h}");
}

#[tokio::test]
async fn user_publish_reaches_every_connection_of_the_user_and_nobody_else() {
    let s = TestServer::start().await;
    let url = s.ws_url();
    let (mut a1, _) = connect(&url, "alice", json!({})).await;
    let (mut a2, _) = connect(&url, "alice", json!({})).await;
    let (mut bob, _) = connect(&url, "bob", json!({})).await;
    let v = user_publish(&s, "alice", json!({"text": "for alice"})).await;
    assert_eq!(v["result"]["offset"], 1, "{v}");
    assert!(v["result"]["epoch"].as_str().is_some(), "{v}");
    for c in [&mut a1, &mut a2] {
        let p = c.next_pub("#alice").await;
        assert_eq!(
            (p["offset"].as_u64(), &p["data"]),
            (Some(1), &json!({"text": "for alice"}))
        );
    }
    // Bob's first publication is his own: alice's, committed before it, never reached him
    // (one node delivers in commit order, so it would have come first).
    user_publish(&s, "bob", json!("for bob")).await;
    match bob.next().await {
        Event::Frame(v) => {
            assert_eq!(v["push"]["channel"], "#bob", "{v}");
            assert_eq!(v["push"]["pub"]["data"], "for bob", "{v}");
        }
        Event::Closed(c) => panic!("closed ({c:?})"),
    }
}

#[tokio::test]
async fn what_was_sent_while_away_is_recovered_on_reconnect() {
    let s = TestServer::start().await;
    let url = s.ws_url();
    let (mut a, r) = connect(&url, "alice", json!({})).await;
    let epoch = r["connect"]["subs"]["#alice"]["epoch"].clone();
    user_publish(&s, "alice", json!("one")).await;
    assert_eq!(a.next_pub("#alice").await["offset"], 1);
    a.close().await;
    user_publish(&s, "alice", json!("two")).await;
    user_publish(&s, "alice", json!("three")).await;
    // As the SDKs do: the position of the server-side subscription in connect's `subs`.
    let subs = json!({"#alice": {"recover": true, "offset": 1, "epoch": epoch}});
    let (mut a, r) = connect(&url, "alice", subs).await;
    let sub = &r["connect"]["subs"]["#alice"];
    assert_eq!(sub["recovered"], true, "{r}");
    let got: Vec<&Value> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(got, [&json!("two"), &json!("three")], "{r}");
    assert_eq!(sub["offset"], 3, "{r}");
    // And live again afterwards.
    user_publish(&s, "alice", json!("four")).await;
    assert_eq!(a.next_pub("#alice").await["offset"], 4);
}

#[tokio::test]
async fn status_online_offline_with_last_seen_through_the_api_and_rpc() {
    let s = TestServer::start().await;
    let url = s.ws_url();
    let (mut alice, _) = connect(&url, "alice", json!({})).await;
    let (bob, _) = connect(&url, "bob", json!({})).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    bob.close().await;
    let users = json!({"users": ["alice", "bob", "carol"]});
    let mut last = Value::Null;
    eventually(WAIT, "bob offline", async || {
        last = s.api("user_status", users.clone()).await;
        last["result"]["statuses"][1]["online"] == false
    })
    .await;
    let st = &last["result"]["statuses"];
    assert_eq!(st[0], json!({"user": "alice", "online": true}), "{last}");
    assert_eq!(st[1]["user"], "bob");
    assert!(st[1]["last_seen"].as_i64().unwrap() >= before, "{last}");
    assert_eq!(st[2], json!({"user": "carol", "online": false}), "{last}");
    // The same through the client protocol.
    let r = alice
        .call(json!({"rpc": {"method": "roomcast.status", "data": users}}))
        .await;
    let st = &r["rpc"]["data"]["statuses"];
    assert_eq!(st[0]["online"], true, "{r}");
    assert_eq!(st[1]["online"], false, "{r}");
    // Other rpc methods have no handler: 108 "not available", as the SDKs expect.
    let r = alice
        .call(json!({"rpc": {"method": "x", "data": {}}}))
        .await;
    assert_eq!(error_code(&r), Some(108), "{r}");
}

#[tokio::test]
async fn attacker_inputs_get_clear_errors() {
    let s = TestServer::start_with(|c| c.user_status_max_users = 5).await;
    let call = |method: &'static str, body: String| {
        let addr = s.addr;
        async move { api_raw(addr, method, Some(API_KEY), &body).await }
    };
    // user_publish: the user id.
    for user in [
        json!(""),
        json!("a".repeat(201)),
        json!("a\u{0}b"),
        json!("a,b"),
        json!(7),
    ] {
        let (status, v) = call("user_publish", json!({"user": user, "data": 1}).to_string()).await;
        let code = v["error"]["code"].as_u64();
        assert!(
            (status == 200 && code == Some(107)) || status == 400,
            "user {user}: {status} {v}"
        );
    }
    let (status, v) = call("user_publish", json!({"user": "", "data": 1}).to_string()).await;
    assert_eq!(
        (status, v["error"]["code"].as_u64()),
        (200, Some(107)),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("user"),
        "{v}"
    );
    // The body: unknown fields, missing data, invalid JSON, too deep, too large.
    for body in [
        json!({"user": "alice", "data": 1, "channel": "x"}).to_string(),
        json!({"user": "alice"}).to_string(),
        "{\"user\":\"alice\",\"data\":".to_owned(),
        format!(
            "{{\"user\":\"alice\",\"data\":{}1{}}}",
            "[".repeat(200),
            "]".repeat(200)
        ),
    ] {
        let (status, v) = call("user_publish", body.clone()).await;
        assert_eq!(status, 400, "{body:.80}: {v}");
    }
    let big = format!(
        "{{\"user\":\"alice\",\"data\":\"{}\"}}",
        "x".repeat(3 << 20)
    );
    assert_eq!(call("user_publish", big).await.0, 413);
    // user_status: the count and every id.
    let six: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let (status, v) = call("user_status", json!({"users": six}).to_string()).await;
    assert_eq!(
        (status, v["error"]["code"].as_u64()),
        (200, Some(107)),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 5"),
        "{v}"
    );
    let (_, v) = call("user_status", json!({"users": ["ok", ""]}).to_string()).await;
    assert_eq!(v["error"]["code"], 107, "{v}");
    for body in [
        json!({}),
        json!({"users": "alice"}),
        json!({"users": [1]}),
        json!({"users": [], "x": 1}),
    ] {
        let (status, v) = call("user_status", body.to_string()).await;
        assert_eq!(status, 400, "{body}: {v}");
    }
    let (_, v) = call("user_status", json!({"users": []}).to_string()).await;
    assert_eq!(v["result"]["statuses"], json!([]), "{v}");
    // roomcast.status: the same limits over the client protocol, and the connection lives.
    let mut c = s.client("alice").await;
    for data in [
        json!(null),
        json!("users"),
        json!({"users": "alice"}),
        json!({"users": [1, 2]}),
        json!({"users": ["a"], "more": true}),
        json!({"users": six}),
        json!({"users": ["a\nb"]}),
    ] {
        let r = c
            .call(json!({"rpc": {"method": "roomcast.status", "data": data}}))
            .await;
        assert_eq!(error_code(&r), Some(107), "{data}: {r}");
    }
    let r = c.call(json!({"rpc": {"method": "roomcast.status"}})).await;
    assert_eq!(error_code(&r), Some(107), "{r}");
    let r = c
        .call(json!({"rpc": {"method": "roomcast.status", "data": {"users": ["alice"]}}}))
        .await;
    assert_eq!(r["rpc"]["data"]["statuses"][0]["online"], true, "{r}");
}
