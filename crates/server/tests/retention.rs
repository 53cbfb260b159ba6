//! Retention, ephemeral namespaces, deleted publications and `history_remove`, over real
//! sockets: what history and recovery answer once publications are trimmed, deleted or
//! cleared, and that ephemeral publications are live only.

use std::time::Duration;

use roomcast::config::NamespaceOptions;
use roomcast_testkit::*;
use serde_json::{json, Value};

fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .map(|a| a.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

fn namespace(tune: impl FnOnce(&mut NamespaceOptions)) -> NamespaceOptions {
    let mut ns = NamespaceOptions::default();
    tune(&mut ns);
    ns
}

async fn history(c: &mut Client, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut req = json!({"channel": channel, "limit": 100});
    if let Some((offset, epoch)) = since {
        req["since"] = json!({"offset": offset, "epoch": epoch});
    }
    // History is for subscribers (the namespace default).
    c.call(json!({"subscribe": {"channel": channel}})).await;
    let r = c.call(json!({ "history": req })).await;
    c.call(json!({"unsubscribe": {"channel": channel}})).await;
    r
}

async fn recover(c: &mut Client, channel: &str, offset: u64, epoch: &str) -> Value {
    let r = c
        .call(json!({"subscribe": {"channel": channel, "recover": true, "offset": offset, "epoch": epoch}}))
        .await;
    c.call(json!({"unsubscribe": {"channel": channel}})).await;
    r["subscribe"].clone()
}

/// `history_size = 3`: history holds the newest three; a position whose next publication
/// was trimmed is not recovered (the client must reload), a position inside what is kept
/// is; history `since` a trimmed position answers what is kept (as Centrifugo), another
/// epoch is error 112.
#[tokio::test]
async fn history_size_trims_and_positions_behind_it_are_unrecoverable() {
    let s = TestServer::start_with(|c| {
        c.namespaces
            .insert("short".into(), namespace(|n| n.history_size = 3));
    })
    .await;
    for i in 1..=6 {
        s.publish("short:r", json!({ "n": i })).await;
    }
    let mut c = s.client("alice").await;
    let r = history(&mut c, "short:r", None).await;
    assert_eq!(offsets(&r["history"]["publications"]), [4, 5, 6], "{r}");
    assert_eq!(r["history"]["offset"], 6);
    let epoch = r["history"]["epoch"].as_str().unwrap().to_owned();

    let behind = recover(&mut c, "short:r", 1, &epoch).await;
    assert_eq!(behind["was_recovering"], true, "{behind}");
    assert_eq!(behind.get("recovered"), None, "2 and 3 are gone: {behind}");
    assert_eq!(behind.get("publications"), None);
    assert_eq!(behind["offset"], 6);

    let inside = recover(&mut c, "short:r", 3, &epoch).await;
    assert_eq!(inside["recovered"], true, "{inside}");
    assert_eq!(offsets(&inside["publications"]), [4, 5, 6]);

    let since = history(&mut c, "short:r", Some((1, &epoch))).await;
    assert_eq!(
        offsets(&since["history"]["publications"]),
        [4, 5, 6],
        "{since}"
    );
    let other = history(&mut c, "short:r", Some((1, "another"))).await;
    assert_eq!(error_code(&other), Some(112), "{other}");

    // The default namespace keeps everything.
    for i in 1..=6 {
        s.publish("lobby", json!(i)).await;
    }
    let r = history(&mut c, "lobby", None).await;
    assert_eq!(offsets(&r["history"]["publications"]), [1, 2, 3, 4, 5, 6]);
}

/// `history_ttl`: once publications are older than it, history is empty though the
/// position stays, a client behind it is not recovered, a client at the top is, and the
/// next publication takes the next offset.
#[tokio::test]
async fn history_ttl_expires_publications_but_not_the_position() {
    let s = TestServer::start_with(|c| {
        c.namespaces
            .insert("brief".into(), namespace(|n| n.history_ttl = 400));
    })
    .await;
    for i in 1..=2 {
        s.publish("brief:r", json!(i)).await;
    }
    let mut c = s.client("alice").await;
    let r = history(&mut c, "brief:r", None).await;
    assert_eq!(offsets(&r["history"]["publications"]), [1, 2]);
    let epoch = r["history"]["epoch"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = history(&mut c, "brief:r", None).await;
    assert!(
        offsets(&r["history"]["publications"]).is_empty(),
        "expired: {r}"
    );
    assert_eq!(r["history"]["offset"], 2);
    let behind = recover(&mut c, "brief:r", 1, &epoch).await;
    assert_eq!(behind.get("recovered"), None, "{behind}");
    let top = recover(&mut c, "brief:r", 2, &epoch).await;
    assert_eq!(top["recovered"], true, "nothing missed: {top}");
    assert_eq!(s.publish("brief:r", json!(3)).await, 3);
    let r = history(&mut c, "brief:r", None).await;
    assert_eq!(offsets(&r["history"]["publications"]), [3]);
}

/// An ephemeral namespace: publications reach subscribers live, with no offset, from
/// clients and the API alike; nothing is stored (no history: 108; the position stays 0),
/// subscriptions are not positioned, and members' unread stays 0.
#[tokio::test]
async fn ephemeral_publications_are_live_only_and_never_unread() {
    let s = TestServer::start_with(|c| {
        c.namespaces
            .insert("typing".into(), namespace(|n| n.ephemeral = true));
    })
    .await;
    let room = "typing:r";
    s.api(
        "add_members",
        json!({"channel": room, "users": ["alice", "bob"]}),
    )
    .await;
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    let sub = bob.subscribe(room).await;
    assert_eq!(sub.get("recoverable"), None, "{sub}");
    assert_eq!(sub.get("offset"), None, "{sub}");
    alice.subscribe(room).await;
    let r = alice
        .call(json!({"publish": {"channel": room, "data": {"typing": true}}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let p = bob.next_pub(room).await;
    assert_eq!(p["data"]["typing"], true, "{p}");
    assert_eq!(p.get("offset"), None, "no offset: {p}");
    assert_eq!(p["info"]["user"], "alice");
    let r = s
        .api(
            "publish",
            json!({"channel": room, "data": {"typing": false}}),
        )
        .await;
    assert_eq!(r["result"], json!({}), "not stored: {r}");
    let p = bob.next_pub(room).await;
    assert_eq!(p["data"]["typing"], false);
    // A stored room beside it still counts, and the ephemeral one never does.
    s.publish("lobby", json!(1)).await;
    let r = bob
        .call(json!({"history": {"channel": room, "limit": 10}}))
        .await;
    assert_eq!(error_code(&r), Some(108), "{r}");
    let r = s
        .api("unread", json!({"user": "bob", "channels": [room]}))
        .await;
    assert_eq!(r["result"]["total"], 0, "{r}");
    assert_eq!(r["result"]["channels"][0]["unread"], 0, "{r}");
    assert_eq!(r["result"]["channels"][0]["top"], 0, "{r}");
    let r = s.api("rooms", json!({"user": "bob"})).await;
    assert_eq!(r["result"]["rooms"][0].get("preview"), None, "{r}");
    // A client coming back asks to recover: nothing to recover, nothing replayed.
    bob.close().await;
    let mut bob = s.client("bob").await;
    let r = bob
        .call(json!({"subscribe": {"channel": room, "recover": true, "offset": 0, "epoch": ""}}))
        .await;
    assert_eq!(r["subscribe"].get("publications"), None, "{r}");
}

/// `delete_publication`: the payload goes, the offset stays. Subscribers get a live
/// deletion notice (no offset, `data: null`, `tags.deleted`); history and recovery return
/// a tombstone at its offset, so offsets stay contiguous; the room list shows no payload.
/// `history_remove` then clears the room, keeping its position.
#[tokio::test]
async fn deleted_publications_are_tombstones_and_history_remove_keeps_the_position() {
    let s = TestServer::start_with(|c| {
        c.namespaces
            .insert("typing".into(), namespace(|n| n.ephemeral = true));
    })
    .await;
    let room = "chat-1";
    s.api("add_members", json!({"channel": room, "users": ["bob"]}))
        .await;
    let mut bob = s.client("bob").await;
    let epoch = bob.subscribe(room).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=3 {
        s.publish(room, json!({ "text": format!("secret {i}") }))
            .await;
        bob.next_pub(room).await;
    }
    let r = s
        .api("delete_publication", json!({"channel": room, "offset": 2}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let notice = bob.next_pub(room).await;
    assert_eq!(
        notice.get("offset"),
        None,
        "a notice is unpositioned: {notice}"
    );
    assert_eq!(notice["data"], Value::Null, "{notice}");
    assert_eq!(notice["tags"]["deleted"], "2", "{notice}");

    let h = history(&mut bob, room, None).await;
    let pubs = &h["history"]["publications"];
    assert_eq!(offsets(pubs), [1, 2, 3], "contiguous: {h}");
    assert_eq!(pubs[1]["data"], Value::Null);
    assert_eq!(pubs[1]["tags"]["deleted"], "2");
    assert!(!h.to_string().contains("secret 2"), "payload gone: {h}");
    assert_eq!(pubs[2]["data"]["text"], "secret 3");
    assert_eq!(pubs[2].get("tags"), None);

    bob.call(json!({"unsubscribe": {"channel": room}})).await;
    let rec = recover(&mut bob, room, 1, &epoch).await;
    assert_eq!(rec["recovered"], true, "a tombstone is no gap: {rec}");
    assert_eq!(offsets(&rec["publications"]), [2, 3]);
    assert_eq!(rec["publications"][0]["tags"]["deleted"], "2");

    // Missing, repeated, and ephemeral deletes.
    let r = s
        .api("delete_publication", json!({"channel": room, "offset": 9}))
        .await;
    assert_eq!(r["error"]["code"], 104, "{r}");
    let r = s
        .api("delete_publication", json!({"channel": room, "offset": 2}))
        .await;
    assert_eq!(r["result"], json!({}), "idempotent: {r}");
    let r = s
        .api(
            "delete_publication",
            json!({"channel": "typing:x", "offset": 1}),
        )
        .await;
    assert_eq!(r["error"]["code"], 108, "{r}");
    let body = json!({"channel": room, "offset": -1}).to_string();
    let (status, _) = api_raw(s.addr, "delete_publication", Some(API_KEY), &body).await;
    assert_eq!(status, 400);

    // The room list never shows a deleted payload.
    s.api("delete_publication", json!({"channel": room, "offset": 3}))
        .await;
    let r = s.api("rooms", json!({"user": "bob"})).await;
    let preview = &r["result"]["rooms"][0]["preview"];
    assert_eq!(preview["offset"], 3, "{r}");
    assert_eq!(preview["deleted"], true, "{r}");
    assert_eq!(preview.get("data"), None, "{r}");
    assert_eq!(preview.get("truncated"), None, "{r}");

    // history_remove: everything goes, the position stays, offsets go on.
    let r = s.api("history_remove", json!({"channel": room})).await;
    assert_eq!(r["result"], json!({}), "{r}");
    let h = history(&mut bob, room, None).await;
    assert!(offsets(&h["history"]["publications"]).is_empty(), "{h}");
    assert_eq!(h["history"]["offset"], 3);
    let behind = recover(&mut bob, room, 1, &epoch).await;
    assert_eq!(behind.get("recovered"), None, "cleared: {behind}");
    assert_eq!(s.publish(room, json!("after")).await, 4);
    let r = s
        .api("history_remove", json!({"channel": "typing:x"}))
        .await;
    assert_eq!(r["error"]["code"], 108, "{r}");
}

/// Across three `roomcast serve` processes on one Redis and one PostgreSQL, configured
/// from TOML (`history_ttl` as a duration string): ephemeral publications and deletion
/// notices reach subscribers on other nodes through the bus (unpositioned: around the
/// reorder), and retention trims on PostgreSQL for every node alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_ephemeral_deletion_notices_and_retention_on_postgres() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let store = pg.fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roomcast.toml");
    std::fs::write(
        &config,
        "[namespaces.typing]\nephemeral = true\njoin_leave = false\n\
         [namespaces.short]\nhistory_size = 2\nhistory_ttl = \"1h\"\n",
    )
    .unwrap();
    let nodes: Vec<Node> = (0..3)
        .map(|_| {
            Node::builder()
                .redis(&redis.url())
                .store(&store)
                .arg("--config")
                .arg(config.as_os_str())
                .start()
        })
        .collect();
    let mut alice = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut bob = Client::connect(&nodes[2].ws_url(), "bob").await;
    bob.subscribe("typing:r").await;
    bob.subscribe("chat-x").await;
    alice.subscribe("typing:r").await;
    let r = alice
        .call(json!({"publish": {"channel": "typing:r", "data": {"typing": "alice"}}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let p = bob.next_pub("typing:r").await;
    assert_eq!(
        (p["data"]["typing"].clone(), p.get("offset")),
        (json!("alice"), None),
        "{p}"
    );
    let r = nodes[1]
        .api("publish", json!({"channel": "typing:r", "data": 1}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    assert_eq!(bob.next_pub("typing:r").await["data"], 1);

    for i in 1..=3 {
        assert_eq!(nodes[i % 3].publish("chat-x", json!(i)).await, i as u64);
        assert_eq!(bob.next_pub("chat-x").await["offset"], i);
    }
    let r = nodes[1]
        .api(
            "delete_publication",
            json!({"channel": "chat-x", "offset": 1}),
        )
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let notice = bob.next_pub("chat-x").await;
    assert_eq!(notice["tags"]["deleted"], "1", "{notice}");
    assert_eq!(notice.get("offset"), None);
    // Still positioned: the next publication arrives as 4, no gap reported.
    assert_eq!(nodes[0].publish("chat-x", json!(4)).await, 4);
    assert_eq!(bob.next_pub("chat-x").await["offset"], 4);

    for i in 1..=5u64 {
        assert_eq!(
            nodes[(i % 3) as usize].publish("short:r", json!(i)).await,
            i
        );
    }
    for n in &nodes {
        let r = n
            .api("history", json!({"channel": "short:r", "limit": 10}))
            .await;
        assert_eq!(offsets(&r["result"]["publications"]), [4, 5], "{r}");
        assert_eq!(r["result"]["offset"], 5);
    }
    let r = nodes[0]
        .api("history", json!({"channel": "chat-x", "limit": 10}))
        .await;
    assert_eq!(offsets(&r["result"]["publications"]), [1, 2, 3, 4]);
    assert_eq!(r["result"]["publications"][0]["data"], Value::Null);
}

/// A recovering subscribe with the SDKs' reject-unrecovered flag (bit 2, set when the
/// application gives `getState`) is refused with 112 instead of `recovered: false`, and
/// the channel stays usable; without the flag the answer is `recovered: false`.
#[tokio::test]
async fn reject_unrecovered_flag_answers_112() {
    let s = TestServer::start_with(|c| {
        c.namespaces
            .insert("short".into(), namespace(|n| n.history_size = 1));
    })
    .await;
    for i in 1..=3 {
        s.publish("short:r", json!(i)).await;
    }
    let mut c = s.client("alice").await;
    let epoch = history(&mut c, "short:r", None).await["history"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = c
        .call(json!({"subscribe": {"channel": "short:r", "recover": true, "offset": 1, "epoch": epoch, "flag": 3}}))
        .await;
    assert_eq!(error_code(&r), Some(112), "{r}");
    let r = c
        .call(json!({"subscribe": {"channel": "short:r", "recover": true, "offset": 2, "epoch": epoch, "flag": 2}}))
        .await;
    assert_eq!(
        r["subscribe"]["recovered"], true,
        "after 112 the channel subscribes: {r}"
    );
    c.call(json!({"unsubscribe": {"channel": "short:r"}})).await;
    let plain = recover(&mut c, "short:r", 1, &epoch).await;
    assert_eq!(plain.get("recovered"), None, "{plain}");
}
