//! Presence that scales, over real WebSockets and the server API: `presence_stats` exact
//! (clients and distinct users) through subscribes, unsubscribes, disconnects and, on a
//! cluster of `roomcast serve` processes sharing a real Redis, a node killed with -9 (its
//! entries gone once their TTL passes); `presence` of a room above
//! `presence_max_entries` answers error 106 "limit exceeded" instead of a list, on the
//! client protocol and the server API, in memory and in Redis.

use std::time::Duration;

use roomcast_testkit::*;
use serde_json::{json, Value};

fn stats(reply: &Value) -> (u64, u64) {
    let s = &reply["presence_stats"];
    (
        s["num_clients"].as_u64().unwrap_or(u64::MAX),
        s["num_users"].as_u64().unwrap_or(u64::MAX),
    )
}

fn api_stats(reply: &Value) -> (u64, u64) {
    let s = &reply["result"];
    (
        s["num_clients"].as_u64().unwrap_or(u64::MAX),
        s["num_users"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Connects `user` to `url` and subscribes it to `room`.
async fn member(url: &str, user: &str, room: &str) -> Client {
    let mut c = Client::connect(url, user).await;
    let r = c.subscribe(room).await;
    assert!(r["epoch"].is_string(), "{r}");
    c
}

#[tokio::test]
async fn single_node_stats_are_exact_and_a_large_room_is_refused_not_listed() {
    let s = TestServer::start_with(|c| c.default_namespace.presence_max_entries = 3).await;
    let url = s.ws_url();
    let mut watcher = member(&url, "watcher", "room").await;
    assert_eq!(
        stats(
            &watcher
                .call(json!({"presence_stats": {"channel": "room"}}))
                .await
        ),
        (1, 1)
    );
    // alice twice (two connections), bob once.
    let a1 = member(&url, "alice", "room").await;
    let mut a2 = member(&url, "alice", "room").await;
    let b = member(&url, "bob", "room").await;
    assert_eq!(
        stats(
            &watcher
                .call(json!({"presence_stats": {"channel": "room"}}))
                .await
        ),
        (4, 3)
    );
    // 4 clients, cap 3: error 106 on both the client protocol and the API, never a list.
    let r = watcher.call(json!({"presence": {"channel": "room"}})).await;
    assert_eq!(error_code(&r), Some(106), "{r}");
    assert!(r.get("presence").is_none(), "{r}");
    let r = s.api("presence", json!({"channel": "room"})).await;
    assert_eq!(r["error"]["code"], 106, "{r}");
    assert!(r.get("result").is_none(), "{r}");
    assert_eq!(
        api_stats(&s.api("presence_stats", json!({"channel": "room"})).await),
        (4, 3)
    );

    // An unsubscribe: alice keeps her other connection (3 clients, 3 users).
    let r = a2.call(json!({"unsubscribe": {"channel": "room"}})).await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(
        stats(
            &watcher
                .call(json!({"presence_stats": {"channel": "room"}}))
                .await
        ),
        (3, 3)
    );
    // At the cap the list comes whole.
    let r = watcher.call(json!({"presence": {"channel": "room"}})).await;
    assert_eq!(
        r["presence"]["presence"]
            .as_object()
            .map(serde_json::Map::len),
        Some(3),
        "{r}"
    );
    let r = s.api("presence", json!({"channel": "room"})).await;
    assert_eq!(
        r["result"]["presence"]
            .as_object()
            .map(serde_json::Map::len),
        Some(3),
        "{r}"
    );

    // Disconnects: alice's last connection, then bob.
    a1.close().await;
    eventually(Duration::from_secs(5), "alice gone", async || {
        api_stats(&s.api("presence_stats", json!({"channel": "room"})).await) == (2, 2)
    })
    .await;
    b.close().await;
    a2.close().await;
    eventually(Duration::from_secs(5), "bob gone", async || {
        api_stats(&s.api("presence_stats", json!({"channel": "room"})).await) == (1, 1)
    })
    .await;
    watcher.close().await;
    eventually(Duration::from_secs(5), "room empty", async || {
        api_stats(&s.api("presence_stats", json!({"channel": "room"})).await) == (0, 0)
    })
    .await;
}

/// A `roomcast serve` on `redis` whose default namespace lists at most `max` entries.
fn node_with_cap(redis: &str, dir: &std::path::Path, max: usize) -> Node {
    let conf = dir.join("roomcast.toml");
    std::fs::write(
        &conf,
        format!("presence_ttl_secs = 10\n[default_namespace]\npresence_max_entries = {max}\n"),
    )
    .unwrap();
    Node::builder()
        .redis(redis)
        .arg("--config")
        .arg(&conf)
        .arg("--ping-interval")
        .arg("120")
        .arg("--pong-timeout")
        .arg("60")
        .start()
}

async fn cluster_stats(nodes: &[Node], room: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(api_stats(
            &n.api("presence_stats", json!({"channel": room})).await,
        ));
    }
    out
}

/// Waits until every node counts `want` in `room`.
async fn all_count(nodes: &[Node], room: &str, want: (u64, u64), within: Duration, what: &str) {
    eventually(within, what, async || {
        cluster_stats(nodes, room).await.iter().all(|s| *s == want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_stats_are_exact_across_nodes_and_a_killed_nodes_entries_expire() {
    let redis = Redis::start();
    let conf = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3)
        .map(|_| node_with_cap(&redis.url(), conf.path(), 4))
        .collect();
    let room = "hall";
    // Node 0: alice, bob. Node 1: alice (again), carol. Node 2: dave, erin.
    let mut c0a = member(&nodes[0].ws_url(), "alice", room).await;
    let c0b = member(&nodes[0].ws_url(), "bob", room).await;
    let c1a = member(&nodes[1].ws_url(), "alice", room).await;
    let mut c1c = member(&nodes[1].ws_url(), "carol", room).await;
    let c2d = member(&nodes[2].ws_url(), "dave", room).await;
    let c2e = member(&nodes[2].ws_url(), "erin", room).await;
    all_count(
        &nodes,
        room,
        (6, 5),
        Duration::from_secs(5),
        "6 clients, 5 users",
    )
    .await;
    assert_eq!(
        stats(&c0a.call(json!({"presence_stats": {"channel": room}})).await),
        (6, 5),
        "over the client protocol too"
    );

    // 6 clients, cap 4: refused cluster-wide, on every node and both protocols.
    for n in &nodes {
        let r = n.api("presence", json!({"channel": room})).await;
        assert_eq!(r["error"]["code"], 106, "{r}");
    }
    let r = c1c.call(json!({"presence": {"channel": room}})).await;
    assert_eq!(error_code(&r), Some(106), "{r}");

    // An unsubscribe and a disconnect: alice keeps her node-0 connection.
    let r = c1c.call(json!({"unsubscribe": {"channel": room}})).await;
    assert!(r.get("error").is_none(), "{r}");
    c1a.close().await;
    all_count(
        &nodes,
        room,
        (4, 4),
        Duration::from_secs(5),
        "alice once, no carol",
    )
    .await;
    // At the cap: the whole list, from Redis, with every node's members.
    let r = nodes[2].api("presence", json!({"channel": room})).await;
    let mut users: Vec<&str> = r["result"]["presence"]
        .as_object()
        .unwrap_or_else(|| panic!("{r}"))
        .values()
        .map(|i| i["user"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob", "dave", "erin"]);

    // Node 2 dies without cleaning up: its two entries stay until their TTL
    // (`presence_ttl_secs`, 10 s here, after its last refresh, every 2 s), then every
    // surviving node counts without them.
    nodes[2].kill();
    drop((c2d, c2e));
    let survivors = &nodes[..2];
    assert_eq!(
        cluster_stats(survivors, room).await,
        vec![(4, 4), (4, 4)],
        "the dead node's entries live until their TTL"
    );
    all_count(
        survivors,
        room,
        (2, 2),
        Duration::from_secs(25),
        "the killed node's entries expire",
    )
    .await;
    // Counts and list agree after the expiry.
    let r = nodes[1].api("presence", json!({"channel": room})).await;
    assert_eq!(
        r["result"]["presence"]
            .as_object()
            .map(serde_json::Map::len),
        Some(2),
        "{r}"
    );

    // A join after the expiry counts from there.
    let _c1f = member(&nodes[1].ws_url(), "frank", room).await;
    all_count(
        survivors,
        room,
        (3, 3),
        Duration::from_secs(5),
        "frank joined",
    )
    .await;
    c0b.close().await;
    c0a.close().await;
    all_count(
        survivors,
        room,
        (1, 1),
        Duration::from_secs(5),
        "only frank",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_the_refresh_keeps_counts_exact() {
    let rc = RedisCluster::start();
    let conf = tempfile::tempdir().unwrap();
    let nodes = vec![
        node_with_cap(&rc.url(), conf.path(), 10),
        node_with_cap(&rc.url(), conf.path(), 10),
    ];
    // Rooms whose keys fall on different shards.
    let rooms = ["r1", "r2", "r3", "r4"];
    let mut clients = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        clients.push(member(&nodes[i % 2].ws_url(), "ann", room).await);
        clients.push(member(&nodes[(i + 1) % 2].ws_url(), "ben", room).await);
    }
    for room in rooms {
        all_count(&nodes, room, (2, 2), Duration::from_secs(5), "joined").await;
    }
    // Two refreshes (every 5 s) re-add every entry: counts unchanged, no refresh error.
    tokio::time::sleep(Duration::from_secs(11)).await;
    for room in rooms {
        assert_eq!(
            cluster_stats(&nodes, room).await,
            vec![(2, 2), (2, 2)],
            "{room}"
        );
    }
    for n in &nodes {
        let failed: Vec<String> = n
            .logs()
            .try_iter()
            .filter(|l| l.contains("presence") && l.contains("failed"))
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
    }
    clients.truncate(0);
    for room in rooms {
        all_count(&nodes, room, (0, 0), Duration::from_secs(5), "all left").await;
    }
}
