//! Recovery without loss: a client that comes back with its last offset and epoch gets
//! everything it missed, in order, once; while publications keep coming, too.

use std::time::Duration;

use roomcast_testkit::*;
use serde_json::{json, Value};

fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .map(|a| a.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn reconnecting_client_recovers_what_it_missed() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    let sub = c.subscribe("room").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        s.publish("room", json!({"n": i})).await;
    }
    for i in 1..=3u64 {
        assert_eq!(c.next_pub("room").await["offset"], i);
    }
    c.close().await;
    for i in 4..=8 {
        s.publish("room", json!({"n": i})).await;
    }
    let mut c = s.client("alice").await;
    let r = c
        .call(
            json!({"subscribe": {"channel": "room", "recover": true, "offset": 3, "epoch": epoch}}),
        )
        .await;
    let sub = &r["subscribe"];
    assert_eq!(sub["recovered"], true, "{r}");
    assert_eq!(sub["was_recovering"], true);
    assert_eq!(offsets(&sub["publications"]), vec![4, 5, 6, 7, 8]);
    assert_eq!(sub["publications"][0]["data"]["n"], 4);
    assert_eq!(sub["offset"], 8);
    s.publish("room", json!({"n": 9})).await;
    assert_eq!(
        c.next_pub("room").await["offset"],
        9,
        "live after recovery, no duplicate of 8"
    );
}

#[tokio::test]
async fn gap_beyond_the_limit_or_another_epoch_is_not_recovered() {
    let s = TestServer::start_with(|c| c.recovery_max_publications = 5).await;
    for i in 1..=10 {
        s.publish("room", json!(i)).await;
    }
    let mut c = s.client("a").await;
    let epoch = c.subscribe("room").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    c.call(json!({"unsubscribe": {"channel": "room"}})).await;
    let r = c
        .call(
            json!({"subscribe": {"channel": "room", "recover": true, "offset": 2, "epoch": epoch}}),
        )
        .await;
    assert_eq!(
        r["subscribe"].get("recovered"),
        None,
        "8 missed > limit 5: {r}"
    );
    assert_eq!(r["subscribe"]["was_recovering"], true);
    assert_eq!(r["subscribe"]["offset"], 10);
    assert_eq!(r["subscribe"].get("publications"), None);
    c.call(json!({"unsubscribe": {"channel": "room"}})).await;
    let r = c
        .call(
            json!({"subscribe": {"channel": "room", "recover": true, "offset": 6, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "4 missed <= 5: {r}");
    assert_eq!(offsets(&r["subscribe"]["publications"]), vec![7, 8, 9, 10]);
    c.call(json!({"unsubscribe": {"channel": "room"}})).await;
    let r = c.call(json!({"subscribe": {"channel": "room", "recover": true, "offset": 9, "epoch": "stale"}})).await;
    assert_eq!(r["subscribe"].get("recovered"), None, "another epoch: {r}");
    c.call(json!({"unsubscribe": {"channel": "room"}})).await;
    let r = c.call(json!({"subscribe": {"channel": "room", "recover": true, "offset": 50, "epoch": epoch}})).await;
    assert_eq!(
        r["subscribe"].get("recovered"),
        None,
        "an offset past the top is another stream: {r}"
    );
}

/// A publisher keeps going while a client drops and comes back again and again; the
/// client ends with every offset exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_while_publications_keep_coming() {
    const TOTAL: u64 = 400;
    let s = TestServer::start().await;
    let addr = s.addr;
    let publisher = tokio::spawn(async move {
        for i in 1..=TOTAL {
            assert_eq!(publish(addr, "busy", json!({"n": i})).await, i);
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut epoch = String::new();
    let mut rounds = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.last().copied().unwrap_or(0) < TOTAL {
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not catch up; saw {} publications",
            seen.len()
        );
        rounds += 1;
        let mut c = s.client("reader").await;
        let cmd = match seen.last() {
            None => json!({"subscribe": {"channel": "busy"}}),
            Some(&last) => {
                json!({"subscribe": {"channel": "busy", "recover": true, "offset": last, "epoch": epoch}})
            }
        };
        let r = c.call(cmd).await;
        let sub = &r["subscribe"];
        if seen.is_empty() {
            epoch = sub["epoch"].as_str().unwrap().to_owned();
            // Joined mid-stream: history up to the reply's offset, then live.
            let top = sub["offset"].as_u64().unwrap_or(0);
            if top > 0 {
                let h = c
                    .call(json!({"history": {"channel": "busy", "limit": -1}}))
                    .await;
                let hist: Vec<u64> = offsets(&h["history"]["publications"])
                    .into_iter()
                    .filter(|&o| o <= top)
                    .collect();
                seen.extend(hist);
            }
        } else {
            assert_eq!(sub["recovered"], true, "{r}");
            seen.extend(offsets(&sub["publications"]));
        }
        // Read live for a while, then drop the connection.
        let n = 15 + rounds * 7 % 40;
        for _ in 0..n {
            if seen.last().copied() == Some(TOTAL) {
                break;
            }
            seen.push(c.next_pub("busy").await["offset"].as_u64().unwrap());
        }
        c.close().await;
    }
    publisher.await.unwrap();
    assert!(rounds > 3, "the client reconnected {rounds} times");
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "every offset once, in order"
    );
}
