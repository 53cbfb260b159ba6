//! Subscribing, publishing, fan-out, history, presence, join/leave and every refusal of
//! the client protocol, driven over real WebSockets.

use roomcast::auth::{now_secs, Claims};
use roomcast::config::NamespaceOptions;
use roomcast_testkit::*;
use serde_json::json;

#[tokio::test]
async fn publish_fans_out_to_every_subscriber_in_order() {
    let s = TestServer::start().await;
    let mut subs = Vec::new();
    for u in ["a", "b", "c"] {
        let mut c = s.client(u).await;
        let r = c.subscribe("room-1").await;
        assert_eq!(r["recoverable"], true);
        assert_eq!(r["offset"], json!(null), "empty room: offset 0 is omitted");
        subs.push(c);
    }
    let mut publisher = s.client("pub").await;
    publisher.subscribe("room-1").await;
    for i in 1..=5 {
        let r = publisher
            .call(json!({"publish": {"channel": "room-1", "data": {"n": i}}}))
            .await;
        assert_eq!(r["publish"], json!({}), "{r}");
    }
    for c in &mut subs {
        for i in 1..=5u64 {
            let p = c.next_pub("room-1").await;
            assert_eq!(p["offset"], i);
            assert_eq!(p["data"]["n"], i);
            assert_eq!(p["info"]["user"], "pub");
        }
    }
    // API publications interleave with the same offsets sequence.
    assert_eq!(s.publish("room-1", json!({"n": 6})).await, 6);
    let p = subs[0].next_pub("room-1").await;
    assert_eq!(p["offset"], 6);
    assert!(
        p.get("info").is_none(),
        "API publications carry no client info"
    );
}

#[tokio::test]
async fn several_commands_in_one_frame_are_answered_in_order() {
    let s = TestServer::start().await;
    let mut c = s.client("a").await;
    c.send_raw("{\"id\":10,\"subscribe\":{\"channel\":\"x\"}}\n{\"id\":11,\"publish\":{\"channel\":\"x\",\"data\":1}}\n{\"id\":12,\"history\":{\"channel\":\"x\",\"limit\":10}}").await;
    let mut ids = Vec::new();
    while ids.len() < 3 {
        if let Event::Frame(v) = c.next().await {
            if let Some(id) = v["id"].as_u64() {
                ids.push(id);
                if id == 12 {
                    assert_eq!(v["history"]["publications"][0]["data"], 1);
                }
            }
        }
    }
    assert_eq!(ids, vec![10, 11, 12]);
}

#[tokio::test]
async fn history_limits_since_reverse_and_epoch() {
    let s = TestServer::start().await;
    for i in 1..=10 {
        s.publish("h", json!(i)).await;
    }
    let mut c = s.client("a").await;
    let sub = c.subscribe("h").await;
    assert_eq!(sub["offset"], 10);
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    let r = c
        .call(json!({"history": {"channel": "h", "limit": 3}}))
        .await;
    let offsets: Vec<u64> = r["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2, 3]);
    assert_eq!(r["history"]["offset"], 10);
    let r = c
        .call(json!({"history": {"channel": "h", "limit": 2, "reverse": true}}))
        .await;
    let offsets: Vec<u64> = r["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![10, 9]);
    let r = c.call(json!({"history": {"channel": "h", "limit": -1, "since": {"offset": 7, "epoch": epoch}}})).await;
    let offsets: Vec<u64> = r["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![8, 9, 10]);
    let r = c
        .call(json!({"history": {"channel": "h", "limit": 0}}))
        .await;
    assert_eq!(r["history"]["publications"], json!([]));
    assert_eq!(r["history"]["epoch"], epoch.as_str());
    let r = c.call(json!({"history": {"channel": "h", "limit": 5, "since": {"offset": 2, "epoch": "other"}}})).await;
    assert_eq!(error_code(&r), Some(112));
}

#[tokio::test]
async fn presence_and_join_leave() {
    let s = TestServer::start().await;
    let mut a = s.client("alice").await;
    // Join/leave pushes go to the subscriptions that ask for them (the SDKs' `joinLeave`).
    let r = a
        .call(json!({"subscribe": {"channel": "room", "join_leave": true}}))
        .await;
    assert!(r["subscribe"].is_object(), "{r}");
    let mut b = s.client("bob").await;
    b.subscribe("room").await;
    let join = a.next_push(|p| p["join"]["info"]["user"] == "bob").await;
    assert_eq!(join["channel"], "room");
    let r = a.call(json!({"presence": {"channel": "room"}})).await;
    let users: std::collections::BTreeSet<String> = r["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users, ["alice".to_owned(), "bob".to_owned()].into());
    let r = a.call(json!({"presence_stats": {"channel": "room"}})).await;
    assert_eq!(
        r["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );
    let r = b.call(json!({"unsubscribe": {"channel": "room"}})).await;
    assert_eq!(r["unsubscribe"], json!({}));
    let leave = a.next_push(|p| p.get("leave").is_some()).await;
    assert_eq!(leave["leave"]["info"]["user"], "bob");
    b.subscribe("room").await;
    a.next_push(|p| p.get("join").is_some()).await;
    b.close().await;
    let leave = a.next_push(|p| p.get("leave").is_some()).await;
    assert_eq!(
        leave["leave"]["info"]["user"], "bob",
        "a closed connection leaves too"
    );
    let r = a.call(json!({"presence_stats": {"channel": "room"}})).await;
    assert_eq!(r["presence_stats"]["num_clients"], 1);
}

#[tokio::test]
async fn user_limited_channels_admit_only_their_users() {
    let s = TestServer::start().await;
    let mut alice = s.client("alice").await;
    alice.subscribe("dialog#alice,bob").await;
    let mut bob = s.client("bob").await;
    bob.subscribe("dialog#alice,bob").await;
    let mut carol = s.client("carol").await;
    let r = carol
        .call(json!({"subscribe": {"channel": "dialog#alice,bob"}}))
        .await;
    assert_eq!(error_code(&r), Some(103));
    let r = carol
        .call(json!({"publish": {"channel": "dialog#alice,bob", "data": "hi"}}))
        .await;
    assert_eq!(error_code(&r), Some(103));
    let r = bob
        .call(json!({"publish": {"channel": "dialog#alice,bob", "data": "hi alice"}}))
        .await;
    assert_eq!(r["publish"], json!({}));
    assert_eq!(alice.next_pub("dialog#alice,bob").await["data"], "hi alice");
}

#[tokio::test]
async fn refusals_get_the_protocol_error_codes() {
    let s = TestServer::start_with(|c| {
        c.max_channels_per_connection = 3;
        c.namespaces.insert(
            "news".into(),
            NamespaceOptions {
                allow_subscribe_for_client: true,
                allow_publish_for_subscriber: false,
                allow_history_for_subscriber: false,
                presence: false,
                ..NamespaceOptions::default()
            },
        );
        c.namespaces.insert(
            "private".into(),
            NamespaceOptions {
                allow_subscribe_for_client: false,
                ..NamespaceOptions::default()
            },
        );
    })
    .await;
    let mut c = s.client("u").await;
    let code = |r: serde_json::Value| error_code(&r);
    assert_eq!(
        code(c.call(json!({"subscribe": {"channel": "nope:x"}})).await),
        Some(102)
    );
    assert_eq!(
        code(c.call(json!({"subscribe": {"channel": ""}})).await),
        Some(107)
    );
    assert_eq!(
        code(c.call(json!({"subscribe": {"channel": "private:x"}})).await),
        Some(103)
    );
    c.subscribe("news:1").await;
    assert_eq!(
        code(c.call(json!({"subscribe": {"channel": "news:1"}})).await),
        Some(105)
    );
    assert_eq!(
        code(
            c.call(json!({"publish": {"channel": "news:1", "data": 1}}))
                .await
        ),
        Some(103)
    );
    assert_eq!(
        code(
            c.call(json!({"history": {"channel": "news:1", "limit": 1}}))
                .await
        ),
        Some(103)
    );
    assert_eq!(
        code(c.call(json!({"presence": {"channel": "news:1"}})).await),
        Some(108)
    );
    assert_eq!(
        code(
            c.call(json!({"history": {"channel": "lobby", "limit": 1}}))
                .await
        ),
        Some(103),
        "not subscribed"
    );
    assert_eq!(
        code(c.call(json!({"presence": {"channel": "lobby"}})).await),
        Some(103),
        "not subscribed"
    );
    assert_eq!(
        code(
            c.call(json!({"publish": {"channel": "lobby", "data": 1}}))
                .await
        ),
        Some(103),
        "not subscribed"
    );
    assert_eq!(
        code(c.call(json!({"rpc": {"method": "nope", "data": {}}})).await),
        Some(108),
        "no rpc handler: not available, as the SDKs expect (issue 13)"
    );
    c.subscribe("a").await;
    c.subscribe("b").await;
    assert_eq!(
        code(c.call(json!({"subscribe": {"channel": "c"}})).await),
        Some(106),
        "channel limit"
    );
    // `send` has no reply and does not break the connection.
    c.send_raw("{\"send\":{\"data\":{\"x\":1}}}").await;
    let r = c.call(json!({"presence_stats": {"channel": "a"}})).await;
    assert_eq!(r["presence_stats"]["num_clients"], 1);
}

#[tokio::test]
async fn token_channels_are_server_side_subscriptions() {
    let s = TestServer::start().await;
    s.publish("feed", json!("before")).await;
    let t = token_with(Claims {
        sub: "alice".into(),
        exp: Some(now_secs() + 60),
        channels: vec!["feed".into()],
        ..Claims::default()
    });
    let mut c = Client::open(&s.ws_url()).await;
    let r = c.call(json!({"connect": {"token": t}})).await;
    assert_eq!(r["connect"]["subs"]["feed"]["offset"], 1, "{r}");
    assert_eq!(r["connect"]["subs"]["feed"]["recoverable"], true);
    s.publish("feed", json!("after")).await;
    let p = c.next_pub("feed").await;
    assert_eq!(
        (p["offset"].as_u64(), p["data"].as_str()),
        (Some(2), Some("after"))
    );
}

#[tokio::test]
async fn missing_pong_disconnects_with_no_pong() {
    let s = TestServer::start_with(|c| {
        c.ping_interval_secs = 2;
        c.pong_timeout_secs = 1;
    })
    .await;
    let mut quiet = s.client("quiet").await;
    quiet.auto_pong = false;
    let mut polite = s.client("polite").await;
    // The one that answers pings is still there after several ping periods (each call
    // reads what came meanwhile and answers pings).
    for _ in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let r = polite.call(json!({"ping": {}})).await;
        assert!(r.get("ping").is_some(), "{r}");
    }
    assert_eq!(quiet.closed_code().await, Some(3012));
}

#[tokio::test]
async fn subscription_tokens_grant_private_channels() {
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "private".into(),
            NamespaceOptions {
                allow_subscribe_for_client: false,
                ..NamespaceOptions::default()
            },
        );
    })
    .await;
    let sub_token = |user: &str, channel: &str, exp: u64| {
        token_with(Claims {
            sub: user.into(),
            channel: Some(channel.into()),
            exp: Some(exp),
            ..Claims::default()
        })
    };
    let later = now_secs() + 600;
    let mut c = s.client("alice").await;
    let r = c.call(json!({"subscribe": {"channel": "private:r"}})).await;
    assert_eq!(error_code(&r), Some(103), "no token");
    let other = sub_token("alice", "private:other", later);
    let r = c
        .call(json!({"subscribe": {"channel": "private:r", "token": other}}))
        .await;
    assert_eq!(error_code(&r), Some(103), "token for another channel");
    let bobs = sub_token("bob", "private:r", later);
    let r = c
        .call(json!({"subscribe": {"channel": "private:r", "token": bobs}}))
        .await;
    assert_eq!(error_code(&r), Some(103), "token of another user");
    let expired = sub_token("alice", "private:r", now_secs() - 5);
    let r = c
        .call(json!({"subscribe": {"channel": "private:r", "token": expired}}))
        .await;
    assert_eq!(
        error_code(&r),
        Some(109),
        "expired: the SDK fetches a new one"
    );
    let good = sub_token("alice", "private:r", later);
    let r = c
        .call(json!({"subscribe": {"channel": "private:r", "token": good}}))
        .await;
    assert_eq!(r["subscribe"]["recoverable"], true, "{r}");
    let fresh = sub_token("alice", "private:r", later + 600);
    let r = c
        .call(json!({"sub_refresh": {"channel": "private:r", "token": fresh}}))
        .await;
    assert_eq!(r["sub_refresh"]["expires"], true, "{r}");
    assert!(r["sub_refresh"]["ttl"].as_u64().unwrap() > 1000);
}
