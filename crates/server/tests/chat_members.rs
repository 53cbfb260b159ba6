//! The chat layer on one node, over real WebSockets and the real server API: membership
//! and `members_only` refusals, read cursors through `rpc` (monotonic, clamped, pushed to
//! the user's other connections), unread counts, the room list, and hostile inputs.

use roomcast::config::NamespaceOptions;
use roomcast_testkit::*;
use serde_json::{json, Value};

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.namespaces.insert(
            "team".into(),
            NamespaceOptions {
                members_only: true,
                ..NamespaceOptions::default()
            },
        );
    })
    .await
}

async fn rpc(c: &mut Client, method: &str, data: Value) -> Value {
    c.call(json!({"rpc": {"method": method, "data": data}}))
        .await
}

/// The rpc result's data; panics with the reply on an error.
async fn rpc_ok(c: &mut Client, method: &str, data: Value) -> Value {
    let r = rpc(c, method, data).await;
    assert!(r["rpc"].is_object(), "{method} failed: {r}");
    r["rpc"]["data"].clone()
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user{i:04}")).collect()
}

#[tokio::test]
async fn members_only_refuses_non_members_and_admits_members() {
    let s = server().await;
    let r = s
        .api(
            "add_members",
            json!({"channel": "team:a", "users": ["alice"]}),
        )
        .await;
    assert_eq!(r["result"]["added"], 1, "{r}");
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;

    // Bob, not a member: subscribe, publish, history and read are all refused (103).
    let r = bob.call(json!({"subscribe": {"channel": "team:a"}})).await;
    assert_eq!(error_code(&r), Some(103), "{r}");
    let r = bob
        .call(json!({"publish": {"channel": "team:a", "data": {"x": 1}}}))
        .await;
    assert_eq!(error_code(&r), Some(103), "{r}");
    let r = rpc(
        &mut bob,
        "roomcast.read",
        json!({"channel": "team:a", "offset": 1}),
    )
    .await;
    assert_eq!(error_code(&r), Some(103), "{r}");
    let r = rpc(&mut bob, "roomcast.unread", json!({"channels": ["team:a"]})).await;
    assert_eq!(error_code(&r), Some(103), "{r}");

    // Alice, a member: all of it works.
    alice.subscribe("team:a").await;
    let r = alice
        .call(json!({"publish": {"channel": "team:a", "data": {"x": 1}}}))
        .await;
    assert_eq!(r["publish"], json!({}), "{r}");
    assert_eq!(alice.next_pub("team:a").await["data"]["x"], 1);
    let r = alice
        .call(json!({"history": {"channel": "team:a", "limit": 10}}))
        .await;
    assert_eq!(
        r["history"]["publications"].as_array().unwrap().len(),
        1,
        "{r}"
    );

    // Bob added: now he may subscribe; a room outside members_only never needed it.
    s.api(
        "add_members",
        json!({"channel": "team:a", "users": ["bob"]}),
    )
    .await;
    bob.subscribe("team:a").await;
    bob.subscribe("open-room").await;

    // Alice removed: her subscription ends (unsubscribe push), history and publish are
    // refused, and she cannot subscribe again.
    let r = s
        .api(
            "remove_members",
            json!({"channel": "team:a", "users": ["alice"]}),
        )
        .await;
    assert_eq!(r["result"]["removed"], 1, "{r}");
    let push = alice
        .next_push(|p| p["channel"] == "team:a" && p.get("unsubscribe").is_some())
        .await;
    assert!(push["unsubscribe"].is_object(), "{push}");
    let r = alice
        .call(json!({"publish": {"channel": "team:a", "data": {"x": 2}}}))
        .await;
    assert_eq!(error_code(&r), Some(103), "{r}");
    let r = alice
        .call(json!({"subscribe": {"channel": "team:a"}}))
        .await;
    assert_eq!(error_code(&r), Some(103), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn members_are_added_and_removed_many_at_once_and_paged() {
    let s = server().await;
    let all = users(1000);
    let r = s
        .api("add_members", json!({"channel": "team:big", "users": all}))
        .await;
    assert_eq!(r["result"]["added"], 1000, "{r}");
    let r = s
        .api(
            "add_members",
            json!({"channel": "team:big", "users": all[..10]}),
        )
        .await;
    assert_eq!(r["result"]["added"], 0, "adding twice is a no-op: {r}");
    let r = s
        .api(
            "remove_members",
            json!({"channel": "team:big", "users": all[..500]}),
        )
        .await;
    assert_eq!(r["result"]["removed"], 500, "{r}");

    // Paged in user order, 200 at a time, until no `next`.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({"channel": "team:big", "limit": 200});
        if let Some(a) = &after {
            body["after"] = json!(a);
        }
        let r = s.api("members", body).await;
        let page: Vec<String> = serde_json::from_value(r["result"]["users"].clone()).unwrap();
        assert!(page.len() <= 200);
        seen.extend(page);
        match r["result"]["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, all[500..]);
    // A page size beyond the bound is clamped to it.
    let r = s
        .api(
            "members",
            json!({"channel": "team:big", "limit": 1_000_000_000u64}),
        )
        .await;
    assert_eq!(r["result"]["users"].as_array().unwrap().len(), 500);
    s.stop().await;
}

#[tokio::test]
async fn reads_move_cursors_forward_only_and_reach_the_users_other_connections() {
    let s = server().await;
    for room in ["r1", "r2", "team:r3"] {
        s.api("add_members", json!({"channel": room, "users": ["alice"]}))
            .await;
    }
    for i in 0..5 {
        s.publish("r1", json!({"n": i})).await;
    }
    s.publish("r2", json!({"n": 0})).await;
    let mut phone = s.client("alice").await;
    let mut laptop = s.client("alice").await;
    laptop.subscribe("#alice").await;

    let u = rpc_ok(
        &mut phone,
        "roomcast.unread",
        json!({"channels": ["r1", "r2"]}),
    )
    .await;
    assert_eq!(u["total"], 6, "{u}");
    assert_eq!(u["rooms"], 3);
    assert_eq!(
        u["channels"][0],
        json!({"channel": "r1", "cursor": 0, "top": 5, "unread": 5})
    );

    let r = rpc_ok(
        &mut phone,
        "roomcast.read",
        json!({"channel": "r1", "offset": 3}),
    )
    .await;
    assert_eq!(
        r,
        json!({"channel": "r1", "cursor": 3, "top": 5, "unread": 2})
    );
    // The laptop hears of it on the personal channel.
    let ev = laptop.next_pub("#alice").await;
    assert_eq!(
        ev["data"],
        json!({"type": "read", "channel": "r1", "cursor": 3, "top": 5, "unread": 2})
    );

    // Older: ignored (no event). Future: clamped to the top. 2^64 - 1 too.
    let r = rpc_ok(
        &mut phone,
        "roomcast.read",
        json!({"channel": "r1", "offset": 1}),
    )
    .await;
    assert_eq!(r["cursor"], 3);
    let r = rpc_ok(
        &mut phone,
        "roomcast.read",
        json!({"channel": "r2", "offset": u64::MAX}),
    )
    .await;
    assert_eq!(
        r,
        json!({"channel": "r2", "cursor": 1, "top": 1, "unread": 0})
    );
    let ev = laptop.next_pub("#alice").await;
    assert_eq!(
        ev["data"]["channel"], "r2",
        "the ignored read sent nothing: {ev}"
    );

    // The server API reads for a user as well.
    let r = s
        .api(
            "read",
            json!({"user": "alice", "channel": "r1", "offset": 5}),
        )
        .await;
    assert_eq!(r["result"]["unread"], 0, "{r}");
    assert_eq!(laptop.next_pub("#alice").await["data"]["cursor"], 5);
    let r = s.api("unread", json!({"user": "alice"})).await;
    assert_eq!(r["result"]["total"], 0, "{r}");

    // New messages: unread is computed from the top, so exact.
    s.publish("r1", json!({"n": 5})).await;
    s.publish("r1", json!({"n": 6})).await;
    let u = rpc_ok(&mut laptop, "roomcast.unread", json!({})).await;
    assert_eq!(
        (u["total"].clone(), u["channels"].clone()),
        (json!(2), json!([]))
    );
    s.stop().await;
}

#[tokio::test]
async fn the_room_list_is_sorted_by_activity_with_badges_and_bounded_previews() {
    let s = server().await;
    for room in ["a", "b", "c", "team:quiet"] {
        s.api("add_members", json!({"channel": room, "users": ["alice"]}))
            .await;
    }
    // Activity: a, then c, then b (newest), milliseconds apart.
    for (room, n) in [("a", 1), ("c", 2), ("b", 3)] {
        for i in 0..n {
            s.publish(room, json!({"text": format!("{room}{i}")})).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut alice = s.client("alice").await;
    rpc_ok(
        &mut alice,
        "roomcast.read",
        json!({"channel": "b", "offset": 1}),
    )
    .await;

    let l = rpc_ok(&mut alice, "roomcast.rooms", json!({})).await;
    let names: Vec<&str> = l["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "c", "a", "team:quiet"], "{l}");
    assert_eq!(l["total_unread"], 2 + 2 + 1);
    let b = &l["rooms"][0];
    assert_eq!(
        (b["top"].clone(), b["cursor"].clone(), b["unread"].clone()),
        (json!(3), json!(1), json!(2))
    );
    assert_eq!(b["preview"]["offset"], 3);
    assert_eq!(b["preview"]["data"], json!({"text": "b2"}));
    assert!(b["preview"]["ts"].as_i64().unwrap() > 0);
    assert!(
        l["rooms"][3].get("preview").is_none(),
        "no publication, no preview"
    );
    assert!(l.get("next").is_none());

    // Pages of two.
    let p1 = rpc_ok(&mut alice, "roomcast.rooms", json!({"limit": 2})).await;
    assert_eq!(p1["rooms"].as_array().unwrap().len(), 2);
    let p2 = rpc_ok(
        &mut alice,
        "roomcast.rooms",
        json!({"limit": 2, "after": p1["next"]}),
    )
    .await;
    assert_eq!(p2["rooms"][0]["channel"], "a", "{p2}");

    // A big newest publication: the preview says so instead of carrying it.
    s.publish("a", json!({"text": "x".repeat(5000)})).await;
    let l = rpc_ok(&mut alice, "roomcast.rooms", json!({"limit": 1})).await;
    assert_eq!(l["rooms"][0]["channel"], "a");
    assert_eq!(l["rooms"][0]["preview"]["truncated"], true);
    assert!(l["rooms"][0]["preview"].get("data").is_none());

    // The same list through the server API.
    let r = s.api("rooms", json!({"user": "alice", "limit": 1})).await;
    assert_eq!(r["result"]["rooms"][0]["channel"], "a", "{r}");
    s.stop().await;
}

#[tokio::test]
async fn hostile_chat_inputs_get_clear_errors() {
    let s = server().await;
    let mut c = s.client("eve").await;
    for (method, data) in [
        ("roomcast.read", json!({})),
        ("roomcast.read", json!({"channel": "r"})),
        ("roomcast.read", json!({"channel": "r", "offset": -1})),
        ("roomcast.read", json!({"channel": "r", "offset": "5"})),
        ("roomcast.read", json!({"channel": "r", "offset": 1.5})),
        ("roomcast.read", json!({"channel": ["r"], "offset": 1})),
        (
            "roomcast.read",
            json!({"channel": "r", "offset": 1, "user": "alice"}),
        ),
        (
            "roomcast.read",
            json!({"channel": "r".repeat(300), "offset": 1}),
        ),
        ("roomcast.read", json!({"channel": "", "offset": 1})),
        ("roomcast.read", json!([1, 2, 3])),
        ("roomcast.unread", json!({"channels": "r"})),
        ("roomcast.unread", json!({"channels": vec!["r"; 101]})),
        ("roomcast.rooms", json!({"limit": -1})),
        ("roomcast.rooms", json!({"after": "garbage"})),
        ("roomcast.rooms", json!({"after": 5})),
        ("roomcast.rooms", json!({"user": "alice"})),
    ] {
        let r = rpc(&mut c, method, data.clone()).await;
        assert_eq!(error_code(&r), Some(107), "{method} {data}: {r}");
        assert!(r["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // 2^64 does not fit an offset: a parse error, sent as raw JSON.
    c.send_raw(r#"{"id":900,"rpc":{"method":"roomcast.read","data":{"channel":"r","offset":18446744073709551616}}}"#).await;
    assert_eq!(error_code(&c.reply(900).await), Some(107));
    // Unknown namespace, unknown chat method, and other rpc methods keep their answer.
    let r = rpc(
        &mut c,
        "roomcast.read",
        json!({"channel": "nope:r", "offset": 1}),
    )
    .await;
    assert_eq!(error_code(&r), Some(102), "{r}");
    let r = rpc(&mut c, "roomcast.nothing", json!({})).await;
    assert_eq!(error_code(&r), Some(104), "{r}");
    // Not a roomcast.* method, no handler: 108 "not available", as the SDKs expect (issue 13).
    let r = rpc(&mut c, "app.method", json!({})).await;
    assert_eq!(error_code(&r), Some(108), "{r}");
    // A huge page size is bounded, not an error.
    let r = rpc_ok(&mut c, "roomcast.rooms", json!({"limit": u64::MAX})).await;
    assert_eq!(r["rooms"], json!([]));

    // The server API: malformed bodies are HTTP 400, bad values are refused with 107.
    let addr = s.addr;
    for (method, body) in [
        ("add_members", r#"{"channel":"r"}"#),
        ("add_members", r#"{"channel":"r","users":"alice"}"#),
        ("read", r#"{"channel":"r","offset":1}"#),
        ("read", r#"{"user":"a","channel":"r","offset":-5}"#),
        (
            "read",
            r#"{"user":"a","channel":"r","offset":18446744073709551616}"#,
        ),
        ("rooms", r#"{"user":7}"#),
        ("members", r#"{"channel":"r","limit":-1}"#),
        ("unread", r#"not json"#),
    ] {
        let (status, v) = api_raw(addr, method, Some(API_KEY), body).await;
        assert_eq!(status, 400, "{method} {body}: {v}");
    }
    let too_many = json!({"channel": "r", "users": users(1001)}).to_string();
    for (method, body) in [
        ("add_members", too_many.as_str()),
        ("add_members", r#"{"channel":"r","users":[]}"#),
        ("add_members", r#"{"channel":"r","users":[""]}"#),
        ("remove_members", r#"{"channel":"r","users":["a\u0000b"]}"#),
        ("read", r#"{"user":"","channel":"r","offset":1}"#),
        ("rooms", r#"{"user":"a","after":"x:"}"#),
        ("unread", r#"{"user":"a","channels":[""]}"#),
    ] {
        let (status, v) = api_raw(addr, method, Some(API_KEY), body).await;
        assert_eq!(
            (status, v["error"]["code"].clone()),
            (200, json!(107)),
            "{method} {body}: {v}"
        );
    }
    let (status, v) = api_raw(
        addr,
        "add_members",
        Some(API_KEY),
        r#"{"channel":"nope:r","users":["a"]}"#,
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (200, json!(102)),
        "{v}"
    );
    s.stop().await;
}
