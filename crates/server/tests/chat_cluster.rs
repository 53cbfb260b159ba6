//! The chat layer across three real `roomcast serve` processes sharing a private Redis and
//! a private PostgreSQL: membership added through one node holds on every node (the store
//! is the only truth, nothing cached); unread counts stay exact with publications made on
//! several nodes, across a node killed with -9 and restarted; a read on one node reaches
//! the same user's connection on another. And a PostgreSQL database of the first schema
//! (version 1) is upgraded at connect.

use std::net::SocketAddr;
use std::time::Duration;

use roomcast_testkit::*;
use serde_json::{json, Value};

const CONFIG: &str = "[namespaces.team]\nmembers_only = true\n";

fn node_on(listen: SocketAddr, redis: &str, store: &str, config: &std::path::Path) -> Node {
    Node::builder()
        .listen(listen)
        .redis(redis)
        .store(store)
        .arg("--config")
        .arg(config.as_os_str())
        .start()
}

async fn rpc_ok(c: &mut Client, method: &str, data: Value) -> Value {
    let r = c
        .call(json!({"rpc": {"method": method, "data": data}}))
        .await;
    assert!(r["rpc"].is_object(), "{method} failed: {r}");
    r["rpc"]["data"].clone()
}

async fn total_unread(addr: SocketAddr, user: &str) -> Value {
    api(addr, "unread", json!({"user": user})).await["result"]["total"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exact_unread_through_kill_and_restart_and_reads_reach_other_nodes() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let store = pg.fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roomcast.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let listens: Vec<SocketAddr> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap())
        .collect();
    let mut nodes: Vec<Node> = listens
        .iter()
        .map(|l| node_on(*l, &redis.url(), &store, &config))
        .collect();
    let addr = |i: usize| listens[i];

    // Membership added on node 0 is what node 2 checks.
    for room in ["team:x", "g1", "g2"] {
        api(
            addr(0),
            "add_members",
            json!({"channel": room, "users": ["alice", "bob"]}),
        )
        .await;
    }
    let mut bob = Client::connect(&nodes[2].ws_url(), "bob").await;
    bob.subscribe("team:x").await;
    let mut eve = Client::connect(&nodes[1].ws_url(), "eve").await;
    let r = eve.call(json!({"subscribe": {"channel": "team:x"}})).await;
    assert_eq!(error_code(&r), Some(103), "{r}");

    // Publications on every node, to two rooms.
    for round in 0..4 {
        for (i, node) in nodes.iter().enumerate() {
            node.publish("g1", json!({"round": round, "node": i})).await;
        }
    }
    for i in 0..3 {
        nodes[1].publish("g2", json!({"n": i})).await;
    }
    for i in 0..3 {
        assert_eq!(total_unread(addr(i), "alice").await, 15, "node {i}");
    }

    // Alice on node 0 and on node 1; a read on node 0 reaches node 1.
    let mut phone = Client::connect(&nodes[0].ws_url(), "alice").await;
    let mut laptop = Client::connect(&nodes[1].ws_url(), "alice").await;
    laptop.subscribe("#alice").await;
    let r = rpc_ok(
        &mut phone,
        "roomcast.read",
        json!({"channel": "g1", "offset": 10}),
    )
    .await;
    assert_eq!(r["unread"], 2);
    let ev = laptop.next_pub("#alice").await;
    assert_eq!(
        ev["data"],
        json!({"type": "read", "channel": "g1", "cursor": 10, "top": 12, "unread": 2})
    );
    let l = rpc_ok(&mut laptop, "roomcast.rooms", json!({})).await;
    assert_eq!(l["total_unread"], 5, "{l}");
    let names: Vec<&str> = l["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["g2", "g1", "team:x"], "newest activity first: {l}");

    // Node 2 killed with -9: nothing of the counts lived there.
    nodes[2].kill();
    nodes[0].publish("g1", json!({"after": "kill"})).await;
    nodes[1].publish("g2", json!({"after": "kill"})).await;
    assert_eq!(total_unread(addr(0), "alice").await, 7);
    assert_eq!(total_unread(addr(1), "bob").await, 13 + 4);
    nodes[2] = node_on(listens[2], &redis.url(), &store, &config);
    let mut back = Client::connect(&nodes[2].ws_url(), "alice").await;
    let u = rpc_ok(
        &mut back,
        "roomcast.unread",
        json!({"channels": ["g1", "g2"]}),
    )
    .await;
    assert_eq!(u["total"], 7, "{u}");
    assert_eq!(
        u["channels"][0],
        json!({"channel": "g1", "cursor": 10, "top": 13, "unread": 3})
    );
    assert_eq!(
        u["channels"][1],
        json!({"channel": "g2", "cursor": 0, "top": 4, "unread": 4})
    );

    // A read on the restarted node reaches node 1 too; bob's counts are his own.
    back.call(json!({"subscribe": {"channel": "#alice"}})).await;
    rpc_ok(
        &mut back,
        "roomcast.read",
        json!({"channel": "g2", "offset": 4}),
    )
    .await;
    let ev = laptop.next_pub("#alice").await;
    assert_eq!(ev["data"]["channel"], "g2", "{ev}");
    assert_eq!(ev["data"]["unread"], 0);
    assert_eq!(total_unread(addr(0), "alice").await, 3);
    assert_eq!(total_unread(addr(2), "bob").await, 17);

    // Removing bob on node 1 ends his subscription on node 2 (his first connection went
    // down with the killed node).
    let mut bob = Client::connect(&nodes[2].ws_url(), "bob").await;
    bob.subscribe("team:x").await;
    api(
        addr(1),
        "remove_members",
        json!({"channel": "team:x", "users": ["bob"]}),
    )
    .await;
    let push = bob
        .next_push(|p| p["channel"] == "team:x" && p.get("unsubscribe").is_some())
        .await;
    assert!(push["unsubscribe"].is_object());
}

/// A database as the first release left it (version 1: no chat tables, no version row)
/// is upgraded at connect, keeping its messages; nodes connecting together upgrade it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_postgres_database_is_upgraded() {
    use roomcast::store::conformance::msg;
    use roomcast::store::postgres::PostgresStore;
    use roomcast::store::{ChatStore, Store};
    let pg = Postgres::start();
    let url = pg.fresh_db().await;
    let ttl = Duration::from_secs(300);
    {
        let (s, _c) = PostgresStore::connect(&url, ttl).await.unwrap();
        s.append(msg("old", "1", None)).await.unwrap();
        s.close().await;
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE roomcast_members; DROP TABLE roomcast_cursors;
             ALTER TABLE roomcast_messages DROP COLUMN deleted;
             DELETE FROM roomcast_meta WHERE key = 'schema_version';",
        )
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        PostgresStore::connect(&url, ttl),
        PostgresStore::connect(&url, ttl)
    );
    let ((a, _ca), (b, _cb)) = (a.unwrap(), b.unwrap());
    assert_eq!(a.position("old").await.unwrap().offset, 1);
    assert_eq!(a.add_members("old", &["u".into()]).await.unwrap(), 1);
    assert!(b.is_member("old", "u").await.unwrap());
    assert_eq!(b.set_cursor("u", "old", 9).await.unwrap().offset, 1);
    let v: String = client
        .query_one(
            "SELECT value FROM roomcast_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        v, "4",
        "upgraded to the latest version (3: the notifier cursors, 4: tombstones)"
    );
    // A newer schema than this build knows is refused.
    client
        .batch_execute("UPDATE roomcast_meta SET value = '99' WHERE key = 'schema_version'")
        .await
        .unwrap();
    assert!(PostgresStore::connect(&url, ttl).await.is_err());
    drop(client);
    let _ = driver.await;
    a.close().await;
    b.close().await;
}
