//! Large rooms over real WebSockets: join/leave only for the subscriptions that ask and
//! not one by one above `join_leave_max_room_size`.

use roomcast::config::NamespaceOptions;
use roomcast_testkit::*;
use serde_json::{json, Value};

/// Reads until the publication with `data` arrives in `channel`; returns the pushes seen
/// before it (join, leave, ...), by kind and user.
async fn pushes_before_pub(c: &mut Client, channel: &str, data: &Value) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let push = c.next_push(|p| p["channel"] == channel).await;
        if push["pub"]["data"] == *data {
            return seen;
        }
        for kind in ["join", "leave"] {
            if let Some(info) = push.get(kind) {
                seen.push(format!("{kind} {}", info["info"]["user"].as_str().unwrap()));
            }
        }
    }
}

async fn subscribe_with(c: &mut Client, channel: &str, join_leave: bool) {
    let r = c
        .call(json!({"subscribe": {"channel": channel, "join_leave": join_leave}}))
        .await;
    assert!(r["subscribe"].is_object(), "{r}");
}

#[tokio::test]
async fn join_leave_reaches_only_the_subscriptions_that_asked() {
    let s = TestServer::start().await;
    let mut quiet = s.client("quiet").await;
    subscribe_with(&mut quiet, "room", false).await;
    let mut asking = s.client("asking").await;
    subscribe_with(&mut asking, "room", true).await;
    let mut bob = s.client("bob").await;
    subscribe_with(&mut bob, "room", false).await;
    bob.close().await;
    // The leave is announced after the close is seen: wait for it on the asking side.
    asking.next_push(|p| p.get("leave").is_some()).await;
    s.publish("room", json!("marker")).await;
    assert_eq!(
        pushes_before_pub(&mut quiet, "room", &json!("marker")).await,
        Vec::<String>::new(),
        "a subscriber that did not ask gets no join/leave"
    );
    let mut asking2 = s.client("asking2").await;
    subscribe_with(&mut asking2, "room", true).await;
    s.publish("room", json!("second")).await;
    assert_eq!(
        pushes_before_pub(&mut asking, "room", &json!("second")).await,
        vec!["join asking2"],
        "one that asked does"
    );
}

#[tokio::test]
async fn above_the_room_size_limit_joins_are_counted_not_pushed() {
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "big".into(),
            NamespaceOptions {
                join_leave_max_room_size: 3,
                ..NamespaceOptions::default()
            },
        );
    })
    .await;
    let room = "big:hall";
    let mut watcher = s.client("watcher").await;
    subscribe_with(&mut watcher, room, true).await;
    let mut members = Vec::new();
    for user in ["m2", "m3", "m4", "m5"] {
        let mut c = s.client(user).await;
        subscribe_with(&mut c, room, true).await;
        members.push(c);
    }
    s.publish(room, json!("after joins")).await;
    assert_eq!(
        pushes_before_pub(&mut watcher, room, &json!("after joins")).await,
        vec!["join watcher", "join m2", "join m3"],
        "joins up to 3 members are pushed (its own too), the 4th and 5th are not"
    );
    let r = watcher
        .call(json!({"presence_stats": {"channel": room}}))
        .await;
    assert_eq!(
        r["presence_stats"],
        json!({"num_clients": 5, "num_users": 5}),
        "counts stay exact"
    );
    // m3 leaves from 5 members and m4 from 4: not pushed; m5 from 3: pushed again.
    for c in members.drain(1..) {
        let r = c_unsubscribe(c, room).await;
        assert_eq!(r["unsubscribe"], json!({}));
    }
    s.publish(room, json!("after leaves")).await;
    assert_eq!(
        pushes_before_pub(&mut watcher, room, &json!("after leaves")).await,
        vec!["leave m5"],
    );
}

async fn c_unsubscribe(mut c: Client, room: &str) -> Value {
    c.call(json!({"unsubscribe": {"channel": room}})).await
}

#[tokio::test]
async fn a_room_over_its_publish_rate_gets_error_111_over_websocket_and_api() {
    let s = TestServer::start_with(|c| c.default_namespace.publish_rate_per_room = 1).await;
    let mut a = s.client("alice").await;
    a.subscribe("busy").await;
    // A burst of 2 (twice the rate), then 1 a second, from the client and the API together;
    // the rest get 111.
    let start = std::time::Instant::now();
    let mut allowed = 0;
    for i in 0..12 {
        let r = if i % 2 == 0 {
            a.call(json!({"publish": {"channel": "busy", "data": i}}))
                .await
        } else {
            s.api("publish", json!({"channel": "busy", "data": i}))
                .await
        };
        match r.get("error") {
            Some(e) => assert_eq!(e["code"], 111, "{r}"),
            None => allowed += 1,
        }
    }
    let most = 2 + start.elapsed().as_secs() + 1;
    assert!(
        (2..=most).contains(&allowed) && allowed < 12,
        "{allowed} of 12 allowed, at most {most}"
    );
    let r = s
        .api(
            "broadcast",
            json!({"channels": ["busy", "quiet"], "data": 1}),
        )
        .await;
    assert_eq!(r["result"]["responses"][0]["error"]["code"], 111, "{r}");
    assert!(
        r["result"]["responses"][1]["result"]["offset"].is_u64(),
        "{r}"
    );
    // The publications that went through reached the subscriber, in order.
    let first = a.next_pub("busy").await["offset"].as_u64().unwrap();
    assert_eq!(first, 1);
}

/// Publications `from..=to` through the API, back to back.
async fn burst(s: &TestServer, room: &str, from: u64, to: u64) {
    for n in from..=to {
        assert_eq!(s.publish(room, json!({ "n": n })).await, n);
    }
}

#[tokio::test]
async fn digest_subscribers_get_at_most_one_publication_per_interval_and_the_newest() {
    let interval = std::time::Duration::from_millis(400);
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "feed".into(),
            NamespaceOptions {
                digest_above: 2,
                digest_interval_ms: interval.as_millis() as u64,
                ..NamespaceOptions::default()
            },
        );
    })
    .await;
    let room = "feed:news";
    let mut live = s.client("live").await;
    live.subscribe(room).await;
    // One asks for a digest in its subscribe data; the third is given one by the room's size.
    let mut asked = s.client("asked").await;
    let r = asked
        .call(json!({"subscribe": {"channel": room, "data": {"digest": true}}}))
        .await;
    assert!(r["subscribe"].is_object(), "{r}");
    let mut by_size = s.client("by-size").await;
    by_size.subscribe(room).await;
    // And a fourth opts out of it: live again.
    let mut opted_out = s.client("opted-out").await;
    let r = opted_out
        .call(json!({"subscribe": {"channel": room, "data": {"digest": false}}}))
        .await;
    assert!(r["subscribe"].is_object(), "{r}");

    let mut seen: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
    let start = std::time::Instant::now();
    for round in 0..3u64 {
        let (from, to) = (round * 10 + 1, round * 10 + 10);
        burst(&s, room, from, to).await;
        for (i, c) in [&mut asked, &mut by_size].into_iter().enumerate() {
            loop {
                let p = c.next_pub(room).await;
                let offset = p["offset"].as_u64().unwrap();
                assert_eq!(p["data"]["n"], offset, "the real offset of its publication");
                seen[i].push(offset);
                if offset == to {
                    break; // the newest of the burst always comes
                }
            }
        }
    }
    // No publication came before `start`, and the room's ticks are an interval apart at
    // least: within `elapsed`, at most elapsed / interval + 1 digests.
    let ticks = (start.elapsed().as_millis() / interval.as_millis()) as usize + 1;
    for offsets in &seen {
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
        assert!(
            offsets.len() <= ticks.min(6),
            "at most one per interval ({ticks} ticks) and two per burst: {offsets:?}"
        );
    }
    for c in [&mut live, &mut opted_out] {
        for n in 1..=30u64 {
            assert_eq!(
                c.next_pub(room).await["offset"],
                n,
                "live: every publication"
            );
        }
    }
    // A digest subscription recovering learns the newest position, without publications.
    let mut back = s.client("back").await;
    let r = back
        .call(json!({"subscribe": {"channel": room, "recover": true, "offset": 1, "data": {"digest": true}}}))
        .await;
    assert_eq!(r["subscribe"]["offset"], 30, "{r}");
    assert!(r["subscribe"]
        .get("publications")
        .is_none_or(|p| p.as_array().unwrap().is_empty()));
}
