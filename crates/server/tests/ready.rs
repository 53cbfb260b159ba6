//! `/health` and `/ready` against real services: a standalone node is ready on its SQLite
//! store; a cluster node (Redis bus and presence, PostgreSQL store) answers 503 with the
//! reason within 2 s of Redis stalling (SIGSTOP), Redis dying or PostgreSQL stopping (within
//! 3 s of NATS dying: that is seen by the bus probe, sent every second), and 200 again once they are back.

use std::time::Duration;

use roomcast_testkit::*;
use serde_json::Value;
use tokio::time::{sleep, Instant};

/// One `/ready` answer: status and problems.
async fn ready(node: &Node) -> (u16, Vec<String>) {
    match get(node.addr, "/ready", Duration::from_secs(5)).await {
        Ok((status, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let problems = v["problems"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(v["ready"].as_bool(), Some(status == 200), "{status} {body}");
            (status, problems)
        }
        Err(e) => panic!("/ready did not answer: {e}"),
    }
}

/// Polls `/ready` until it answers `want`; returns how long that took and the problems.
async fn until(node: &Node, want: u16, within: Duration) -> (Duration, Vec<String>) {
    let start = Instant::now();
    loop {
        let (status, problems) = ready(node).await;
        if status == want {
            return (start.elapsed(), problems);
        }
        assert!(
            start.elapsed() < within,
            "/ready still {status} after {within:?}: {problems:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_standalone_node_is_healthy_and_ready() {
    let node = Node::builder().start();
    let (status, body) = get(node.addr, "/health", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, problems) = ready(&node).await;
    assert_eq!((status, problems.len()), (200, 0), "{problems:?}");
}

#[tokio::test]
async fn a_cluster_node_is_not_ready_while_redis_or_postgres_is_gone() {
    let mut redis = Redis::start();
    let pg = Postgres::start();
    let db = pg.fresh_db().await;
    let node = Node::start(&redis.url(), &db);
    until(&node, 200, Duration::from_secs(15)).await;

    // A silent Redis stall: PING unanswered, the bus probe does not come back.
    redis.signal("STOP");
    let (took, problems) = until(&node, 503, Duration::from_secs(2)).await;
    assert!(
        problems.iter().any(|p| p.contains("presence")),
        "{problems:?}"
    );
    println!("redis stalled: 503 after {took:?}: {problems:?}");
    redis.signal("CONT");
    until(&node, 200, Duration::from_secs(15)).await;

    // Redis dies and comes back (empty).
    redis.kill();
    let (took, problems) = until(&node, 503, Duration::from_secs(2)).await;
    println!("redis killed: 503 after {took:?}: {problems:?}");
    redis.restart();
    until(&node, 200, Duration::from_secs(20)).await;

    // PostgreSQL stops and starts again.
    pg.stop();
    let (took, problems) = until(&node, 503, Duration::from_secs(2)).await;
    assert!(
        problems.iter().any(|p| p.starts_with("store")),
        "{problems:?}"
    );
    println!("postgres stopped: 503 after {took:?}: {problems:?}");
    pg.resume();
    until(&node, 200, Duration::from_secs(20)).await;
    // And it serves again: a publication is stored.
    node.publish("after", serde_json::json!({"n": 1})).await;
}

#[tokio::test]
async fn a_node_on_nats_is_not_ready_while_nats_is_gone() {
    let redis = Redis::start();
    let mut nats = Nats::start();
    let pg = Postgres::start();
    let db = pg.fresh_db().await;
    let node = Node::builder()
        .redis(&redis.url())
        .nats(&nats.url())
        .store(&db)
        .start();
    until(&node, 200, Duration::from_secs(15)).await;
    nats.kill();
    // Probes go every second and count as lost after 1.8 s: within 3 s, with slack.
    let (took, problems) = until(&node, 503, Duration::from_secs(3)).await;
    assert!(
        problems.iter().any(|p| p.starts_with("bus")),
        "{problems:?}"
    );
    println!("nats killed: 503 after {took:?}: {problems:?}");
    nats.restart();
    until(&node, 200, Duration::from_secs(20)).await;
}
