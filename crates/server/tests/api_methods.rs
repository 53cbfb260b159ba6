//! The server API methods and fields of issue 13 beyond the first ones (`tests/api.rs`):
//! server-side `subscribe` (with recovery, `client`, `info`, `override`), `refresh`,
//! `batch` (sequential and parallel), `b64data`, and the bounds of each.

use std::time::Duration;

use base64::Engine as _;
use roomcast::auth::{now_secs, Claims};
use roomcast_testkit::*;
use serde_json::json;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_puts_connections_into_a_room_with_recovery() {
    let s = TestServer::start().await;
    let mut alice = s.client("alice").await;
    for i in 1..=3 {
        s.publish("r", json!({ "n": i })).await;
    }
    let epoch =
        s.api("history", json!({"channel": "r", "limit": 0})).await["result"]["epoch"].clone();
    let r = s
        .api(
            "subscribe",
            json!({"user": "alice", "channel": "r", "info": {"role": "mod"},
                   "recover_since": {"offset": 1, "epoch": epoch},
                   "session": "ignored", "expire_at": 0, "data": {"x": 1}}),
        )
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let push = alice.next_push(|p| p.get("subscribe").is_some()).await;
    assert_eq!(push["channel"], "r");
    let sub = &push["subscribe"];
    assert_eq!(sub["recovered"], true, "{push}");
    let offsets: Vec<u64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![2, 3], "what was missed since offset 1");
    s.publish("r", json!({"n": 4})).await;
    assert_eq!(
        alice.next_pub("r").await["offset"],
        4,
        "then the live stream"
    );
    // The subscription's channel info is what presence shows.
    let p = s.api("presence", json!({"channel": "r"})).await;
    let entry = p["result"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(entry["user"], "alice");
    assert_eq!(entry["chan_info"], json!({"role": "mod"}), "{p}");
    // Subscribed already: nothing more happens. A channel that does not resolve: 102.
    s.api("subscribe", json!({"user": "alice", "channel": "r"}))
        .await;
    let r = s
        .api("subscribe", json!({"user": "alice", "channel": "nope:x"}))
        .await;
    assert_eq!(error_code(&r), Some(102), "{r}");
    // The client may unsubscribe as from its own subscription.
    let r = alice.call(json!({"unsubscribe": {"channel": "r"}})).await;
    assert!(r.get("unsubscribe").is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_targets_one_client_and_overrides_options() {
    let s = TestServer::start().await;
    let mut one = Client::open(&s.ws_url()).await;
    let id = one.call(json!({"connect": {"token": token("bob")}})).await["connect"]["client"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut other = s.client("bob").await;
    // Presence off for this subscription: the room's presence stays empty.
    s.api(
        "subscribe",
        json!({"user": "bob", "channel": "q", "client": id,
               "override": {"presence": {"value": false}, "force_positioning": {"value": true}}}),
    )
    .await;
    let push = one.next_push(|p| p.get("subscribe").is_some()).await;
    assert_eq!(push["channel"], "q");
    assert_eq!(push["subscribe"]["positioned"], true, "{push}");
    let stats = s.api("presence_stats", json!({"channel": "q"})).await;
    assert_eq!(stats["result"]["num_clients"], 0, "{stats}");
    s.publish("q", json!("hi")).await;
    assert_eq!(one.next_pub("q").await["data"], "hi");
    // The other connection of bob was not subscribed: its next frame is a ping reply.
    let r = other.call(json!({"ping": {}})).await;
    assert!(r.get("ping").is_some(), "{r}");
    let r = other
        .call(json!({"presence_stats": {"channel": "q"}}))
        .await;
    assert_eq!(error_code(&r), Some(103), "not subscribed: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_expires_or_extends_connections() {
    let s = TestServer::start_with(|c| {
        c.ping_interval_secs = 2;
        c.pong_timeout_secs = 1;
    })
    .await;
    // A token that expires in 2 s, extended by the API to an hour.
    let short = token_with(Claims {
        sub: "carol".into(),
        exp: Some(now_secs() + 2),
        ..Claims::default()
    });
    let mut kept = Client::open(&s.ws_url()).await;
    let r = kept.call(json!({"connect": {"token": short}})).await;
    assert_eq!(r["connect"]["expires"], true, "{r}");
    let mut gone = s.client("dave").await;
    let r = s
        .api(
            "refresh",
            json!({"user": "carol", "expire_at": now_secs() + 3600, "session": "x"}),
        )
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let r = s
        .api("refresh", json!({"user": "dave", "expired": true}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    assert_eq!(gone.closed_code().await, Some(3005), "expired now");
    // Past the token's exp (calls keep the client reading, so it answers the pings).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = kept.call(json!({"ping": {}})).await;
        assert!(r.get("ping").is_some(), "alive past its token's exp: {r}");
    }
    // An expiry in the past closes the connection as expired at the next check.
    s.api(
        "refresh",
        json!({"user": "carol", "expire_at": now_secs() - 1}),
    )
    .await;
    assert_eq!(kept.closed_code().await, Some(3005));
    let (status, _) = api_raw(
        s.addr,
        "refresh",
        Some(API_KEY),
        "{\"user\":\"carol\",\"expire_at\":-5}",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn batch_runs_commands_in_order_or_in_parallel() {
    let s = TestServer::start().await;
    let r = s
        .api(
            "batch",
            json!({"commands": [
                {"publish": {"channel": "b", "data": 1}},
                {"publish": {"channel": "b", "data": 2}},
                {"history": {"channel": "b", "limit": -1}},
                {"publish": {"channel": "nope:x", "data": 3}},
                {"frobnicate": {}},
                {"batch": {"commands": []}},
                {"publish": {"channel": "b", "data": 1}, "info": {}},
                {"info": {}}
            ]}),
        )
        .await;
    let replies = r["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 8, "{r}");
    assert_eq!(replies[0]["publish"]["offset"], 1);
    assert_eq!(replies[1]["publish"]["offset"], 2);
    assert_eq!(
        replies[2]["history"]["publications"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "sequential: the history sees both publishes"
    );
    assert_eq!(replies[3]["error"]["code"], 102);
    assert_eq!(replies[4]["error"]["code"], 104);
    assert_eq!(replies[5]["error"]["code"], 104, "no batch in a batch");
    assert_eq!(replies[6]["error"]["code"], 107, "one method per command");
    assert_eq!(replies[7]["info"]["nodes"][0]["num_clients"], 0);

    let commands: Vec<_> = (0..50)
        .map(|i| json!({"publish": {"channel": format!("p{i}"), "data": i}}))
        .collect();
    let r = s
        .api("batch", json!({"commands": commands, "parallel": true}))
        .await;
    let replies = r["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 50);
    assert!(replies.iter().all(|r| r["publish"]["offset"] == 1), "{r}");
    let h = s
        .api("history", json!({"channel": "p49", "limit": -1}))
        .await;
    assert_eq!(h["result"]["publications"][0]["data"], 49);

    let too_many: Vec<_> = (0..1001).map(|_| json!({"info": {}})).collect();
    let (status, v) = api_raw(
        s.addr,
        "batch",
        Some(API_KEY),
        &json!({ "commands": too_many }).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test]
async fn b64data_and_broadcast_bounds() {
    let s = TestServer::start().await;
    let mut c = s.client("erin").await;
    c.subscribe("d").await;
    let r = s
        .api(
            "publish",
            json!({"channel": "d", "b64data": b64("{\"k\":[1,2]}")}),
        )
        .await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    assert_eq!(c.next_pub("d").await["data"], json!({"k": [1, 2]}));
    let r = s
        .api(
            "broadcast",
            json!({"channels": ["d"], "b64data": b64("\"two\""), "skip_history": true}),
        )
        .await;
    assert_eq!(r["result"]["responses"][0]["result"]["offset"], 2, "{r}");
    for bad in [b64("not json"), "%%%".to_owned()] {
        let body = json!({"channel": "d", "b64data": bad}).to_string();
        let (status, v) = api_raw(s.addr, "publish", Some(API_KEY), &body).await;
        assert_eq!(status, 400, "{v}");
    }
    let channels: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    let body = json!({"channels": channels, "data": 1}).to_string();
    let (status, v) = api_raw(s.addr, "broadcast", Some(API_KEY), &body).await;
    assert_eq!(status, 400, "{v}");
    let h = s.api("history", json!({"channel": "d", "limit": -1})).await;
    assert_eq!(h["result"]["publications"].as_array().unwrap().len(), 2);
}
