//! Subscribing, recovery, join/leave and rate limits.

use serde_json::json;

use super::fake::*;

#[tokio::test]
async fn subscribe_recovers_what_was_missed_or_says_it_could_not() {
    let node = Fake::new(|c| c.recovery_max_publications = 5);
    node.store("room", 8);
    let mut c = Conn::new(&node);
    c.connect(&node, "alice").await;
    // 3 behind: recovered, with the three publications, then activated from the head.
    let r = c
        .call(json!({"id": 2, "subscribe": {"channel": "room", "recover": true, "epoch": EPOCH, "offset": 5}}))
        .await;
    let sub = &r["subscribe"];
    assert_eq!(sub["recovered"], true, "{r}");
    assert_eq!(sub["offset"], 8);
    let offsets: Vec<u64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![6, 7, 8]);
    assert_eq!(
        node.activated.lock().unwrap().last(),
        Some(&("room".into(), Some(9)))
    );
    assert_eq!(node.entries("room").len(), 1);
    assert!(matches!(
        node.announced.lock().unwrap()[0],
        RoomEvent::Join { .. }
    ));
    // 7 behind, beyond the recovery limit of 5: not recovered, the client pages history.
    node.store("far", 8);
    let r = c
        .call(json!({"id": 3, "subscribe": {"channel": "far", "recover": true, "epoch": EPOCH, "offset": 1}}))
        .await;
    assert_eq!(r["subscribe"]["was_recovering"], true, "{r}");
    assert_ne!(r["subscribe"]["recovered"], true, "{r}");
    assert!(r["subscribe"]
        .get("publications")
        .is_none_or(|p| p.as_array().unwrap().is_empty()));
    // Another epoch: not recovered either.
    node.store("moved", 2);
    let r = c
        .call(json!({"id": 4, "subscribe": {"channel": "moved", "recover": true, "epoch": "old", "offset": 1}}))
        .await;
    assert_eq!(r["subscribe"]["was_recovering"], true, "{r}");
    assert_ne!(r["subscribe"]["recovered"], true, "{r}");
    // Leaving every room on close: hub, presence and a leave event.
    c.session.close().await;
    assert!(node.joined.lock().unwrap().is_empty());
    assert!(node.entries("room").is_empty());
}

#[tokio::test]
async fn subscribe_refusals() {
    let node = Fake::new(|c| {
        c.max_channels_per_connection = 2;
        c.namespaces.insert(
            "private".into(),
            crate::config::NamespaceOptions {
                allow_subscribe_for_client: false,
                ..Default::default()
            },
        );
    });
    let mut c = Conn::new(&node);
    c.connect(&node, "alice").await;
    let r = c
        .call(json!({"id": 2, "subscribe": {"channel": "private:x"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::PERMISSION_DENIED.code as u64);
    let r = c
        .call(json!({"id": 3, "subscribe": {"channel": "dm#bob,carol"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::PERMISSION_DENIED.code as u64);
    c.call(json!({"id": 4, "subscribe": {"channel": "a"}}))
        .await;
    let r = c
        .call(json!({"id": 5, "subscribe": {"channel": "a"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::ALREADY_SUBSCRIBED.code as u64);
    c.call(json!({"id": 6, "subscribe": {"channel": "b"}}))
        .await;
    let r = c
        .call(json!({"id": 7, "subscribe": {"channel": "c"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::LIMIT_EXCEEDED.code as u64);
    let r = c
        .call(json!({"id": 8, "subscribe": {"channel": "nope:x"}}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::UNKNOWN_CHANNEL.code as u64);
}

#[tokio::test]
async fn the_rate_limit_refills_with_the_time_passed_in() {
    let node = Fake::new(|c| c.commands_per_second = 5);
    let mut c = Conn::new(&node);
    c.connect(&node, "alice").await;
    // A burst of twice the rate, the connect included, then refusals.
    for id in 2..=10 {
        let r = c.call(json!({"id": id, "ping": {}})).await;
        assert!(r.get("error").is_none(), "{id}: {r}");
    }
    let r = c.call(json!({"id": 11, "ping": {}})).await;
    assert_eq!(error_code(&r), ErrorCode::TOO_MANY_REQUESTS.code as u64);
    // One second later, five more.
    c.now.at += Duration::from_secs(1);
    for id in 12..=16 {
        let r = c.call(json!({"id": id, "ping": {}})).await;
        assert!(r.get("error").is_none(), "{id}: {r}");
    }
    let r = c.call(json!({"id": 17, "ping": {}})).await;
    assert_eq!(error_code(&r), ErrorCode::TOO_MANY_REQUESTS.code as u64);
}

#[tokio::test]
async fn join_leave_goes_to_those_asking_and_stops_above_the_room_size_limit() {
    let node = Fake::new(|c| c.default_namespace.join_leave_max_room_size = 2);
    let mut conns = Vec::new();
    for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
        let mut c = Conn::new(&node);
        c.connect(&node, user).await;
        let asks = i == 0;
        let r = c
            .call(json!({"id": 2, "subscribe": {"channel": "room", "join_leave": asks}}))
            .await;
        assert!(r["subscribe"].is_object(), "{r}");
        conns.push(c);
    }
    let modes: Vec<bool> = node
        .modes
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.join_leave)
        .collect();
    assert_eq!(
        modes,
        vec![true, false, false],
        "pushed only to those asking"
    );
    let joins = |node: &Fake| {
        node.announced
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                RoomEvent::Join { info, .. } => format!("+{}", info.user),
                RoomEvent::Leave { info, .. } => format!("-{}", info.user),
                RoomEvent::Publication(_) => "pub".into(),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        joins(&node),
        ["+a", "+b"],
        "the third join is above the limit"
    );
    assert_eq!(
        node.entries("room").len(),
        3,
        "presence still counts every member"
    );
    conns.pop().unwrap().session.close().await;
    conns.pop().unwrap().session.close().await;
    assert_eq!(
        joins(&node),
        ["+a", "+b", "-b"],
        "leaves from 3 are not pushed, from 2 are"
    );
    // A namespace forcing join/leave pushes them to everyone.
    let node = Fake::new(|c| c.default_namespace.force_push_join_leave = true);
    let mut c = Conn::new(&node);
    c.connect(&node, "a").await;
    c.call(json!({"id": 2, "subscribe": {"channel": "room"}}))
        .await;
    assert!(node.modes.lock().unwrap()[0].1.join_leave);
}

#[tokio::test]
async fn a_room_publish_rate_is_shared_by_its_publishers() {
    let node = Fake::new(|c| c.default_namespace.publish_rate_per_room = 2);
    let (mut a, mut b) = (Conn::new(&node), Conn::new(&node));
    a.connect(&node, "alice").await;
    b.connect(&node, "bob").await;
    b.now = a.now;
    for c in [&mut a, &mut b] {
        c.call(json!({"id": 1, "subscribe": {"channel": "room"}}))
            .await;
        c.call(json!({"id": 1, "subscribe": {"channel": "other"}}))
            .await;
    }
    let mut codes = Vec::new();
    for id in 2..=4 {
        for c in [&mut a, &mut b] {
            let r = c
                .call(json!({"id": id, "publish": {"channel": "room", "data": id}}))
                .await;
            codes.push(error_code(&r));
        }
    }
    // A burst of twice the rate for the room, whoever publishes.
    assert_eq!(codes, [0, 0, 0, 0, 111, 111]);
    let r = a
        .call(json!({"id": 5, "publish": {"channel": "other", "data": 1}}))
        .await;
    assert_eq!(error_code(&r), 0, "another room has its own budget");
    b.now.at += Duration::from_secs(1);
    for expect in [0, 0, 111] {
        let r = b
            .call(json!({"id": 6, "publish": {"channel": "room", "data": 1}}))
            .await;
        assert_eq!(error_code(&r), expect, "{r}");
    }
}

#[tokio::test]
async fn digest_is_asked_in_data_or_given_above_the_room_size() {
    let node = Fake::new(|c| c.default_namespace.digest_above = 2);
    node.store("room", 3);
    let mut digests = Vec::new();
    for data in [
        json!(null),
        json!({"digest": true}),
        json!("app data"),
        json!({"digest": false}),
    ] {
        let mut c = Conn::new(&node);
        c.connect(&node, "a").await;
        let r = c
            .call(json!({"id": 2, "subscribe": {"channel": "room", "data": data, "recover": true, "offset": 1}}))
            .await;
        let mode = node.modes.lock().unwrap().last().unwrap().1;
        digests.push(mode.digest.map(|d| d.as_millis()));
        if mode.digest.is_some() {
            // Not recovered: the newest position, for the client to page history from.
            assert_eq!(r["subscribe"]["offset"], 3, "{r}");
            assert!(r["subscribe"].get("publications").is_none(), "{r}");
        }
    }
    // Room of 0: live; asked: digest; room of 2 with other data: digest; opted out: live.
    assert_eq!(digests, [None, Some(1000), Some(1000), None]);
}
