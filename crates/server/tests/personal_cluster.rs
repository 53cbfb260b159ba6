//! Send-to-user and user status across three `roomcast serve` processes sharing a private
//! PostgreSQL and Redis (the bus on that Redis), with real WebSocket clients.
//!
//! What must hold: `user_publish` on any node reaches the user's connections on every
//! node, in offset order, and nobody else; it travels on the nodes' own channels (no bus
//! channel per user exists); finding a user's nodes is one Redis call whatever the
//! cluster size (one hash per user, connection -> node); what was sent while a connection
//! was away is recovered on reconnect at another node; status is online while any node
//! holds a connection, and offline (with a last-seen time) within the registry TTL of a
//! node killed with -9.

use std::collections::HashMap;
use std::time::Duration;

use roomcast_testkit::*;
use serde_json::{json, Value};
use tokio::time::Instant;

/// The registry TTL the nodes run with (a short one, so the kill test is quick).
const TTL_SECS: u64 = 3;

struct Cluster {
    redis: Redis,
    _pg: Postgres,
    store: String,
    nodes: Vec<Node>,
    _config: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let redis = Redis::start();
    let pg = Postgres::start();
    let store = pg.fresh_db().await;
    let config = tempfile::tempdir().unwrap();
    let path = config.path().join("roomcast.toml");
    std::fs::write(&path, format!("user_registry_ttl_secs = {TTL_SECS}\n")).unwrap();
    let nodes = (0..3)
        .map(|_| {
            Node::builder()
                .redis(&redis.url())
                .store(&store)
                .arg("--config")
                .arg(&path)
                .start()
        })
        .collect();
    Cluster {
        redis,
        _pg: pg,
        store,
        nodes,
        _config: config,
    }
}

async fn redis_conn(redis: &Redis) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn connect(url: &str, user: &str, subs: Value) -> (Client, Value) {
    Client::connect_with_subs(url, user, subs).await
}

async fn user_publish(node: &Node, user: &str, data: Value) -> u64 {
    let v = node
        .api("user_publish", json!({"user": user, "data": data}))
        .await;
    v["result"]["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("user_publish failed: {v}"))
}

/// Times EVAL was called on the Redis (the registry lookup is one EVAL per user).
async fn evals(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_eval:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_publish_reaches_the_user_on_every_node_only_and_is_recovered() {
    let c = cluster().await;
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let (mut alice_a, ra) = connect(&a.ws_url(), "alice", json!({})).await;
    let (mut alice_c, rc) = connect(&cc.ws_url(), "alice", json!({})).await;
    let (mut bob_b, _) = connect(&b.ws_url(), "bob", json!({})).await;
    let epoch = rc["connect"]["subs"]["#alice"]["epoch"].clone();
    assert_eq!(ra["connect"]["subs"]["#alice"]["recoverable"], true, "{ra}");

    // The registry: one hash for alice, one field per connection naming its node.
    let mut redis = redis_conn(&c.redis).await;
    let hash: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("roomcast:user:{alice}")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut nodes: Vec<&str> = hash
        .iter()
        .filter(|(f, _)| *f != "~seen")
        .map(|(_, v)| v.split_once(':').unwrap().1)
        .collect();
    nodes.sort_unstable();
    let mut expected = vec![
        ra["connect"]["node"].as_str().unwrap(),
        rc["connect"]["node"].as_str().unwrap(),
    ];
    expected.sort_unstable();
    assert_eq!(nodes, expected, "alice's connections, by node: {hash:?}");

    // Sent from B, which holds none of alice's connections: one lookup, whatever the
    // number of nodes. (The connects' join events were routed too: let them settle.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = evals(&mut redis).await;
    for i in 1..=5u64 {
        assert_eq!(user_publish(b, "alice", json!({"n": i})).await, i);
    }
    for client in [&mut alice_a, &mut alice_c] {
        for i in 1..=5u64 {
            let p = client.next_pub("#alice").await;
            assert_eq!(
                (p["offset"].as_u64(), &p["data"]),
                (Some(i), &json!({"n": i}))
            );
        }
    }
    let lookups = evals(&mut redis).await - before;
    assert!(
        (1..=5).contains(&lookups),
        "5 publications to one user cost at most one registry call each, not one per node: {lookups}"
    );
    // No bus channel per user: only rooms, node channels and control exist.
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        channels
            .iter()
            .all(|ch| !ch.contains("alice") && !ch.contains("bob")),
        "{channels:?}"
    );
    // Bob, on B, gets his own first: nothing of alice's reached him.
    user_publish(a, "bob", json!("for bob")).await;
    let p = bob_b.next_pub("#bob").await;
    assert_eq!(p["data"], "for bob");

    // Alice's connection on C goes away; what is sent meanwhile is recovered on B.
    alice_c.close().await;
    user_publish(a, "alice", json!({"n": 6})).await;
    user_publish(cc, "alice", json!({"n": 7})).await;
    let subs = json!({"#alice": {"recover": true, "offset": 5, "epoch": epoch}});
    let (mut alice_b, r) = connect(&b.ws_url(), "alice", subs).await;
    let sub = &r["connect"]["subs"]["#alice"];
    assert_eq!(sub["recovered"], true, "{r}");
    let got: Vec<u64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [6, 7], "{r}");
    // Live on every node holding alice again, in order.
    user_publish(cc, "alice", json!({"n": 8})).await;
    assert_eq!(alice_b.next_pub("#alice").await["offset"], 8);
    for i in 6..=8u64 {
        assert_eq!(alice_a.next_pub("#alice").await["offset"], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_connections_and_a_killed_node_within_the_ttl() {
    let mut c = cluster().await;
    let (alice, _) = connect(&c.nodes[0].ws_url(), "alice", json!({})).await;
    let (_carol, _) = connect(&c.nodes[2].ws_url(), "carol", json!({})).await;
    let (_dave, _) = connect(&c.nodes[2].ws_url(), "dave", json!({})).await;
    let (_dave_b, _) = connect(&c.nodes[1].ws_url(), "dave", json!({})).await;
    let users = json!({"users": ["alice", "carol", "dave", "erin"]});
    let st = c.nodes[1].api("user_status", users.clone()).await;
    let online: Vec<&Value> = st["result"]["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["online"])
        .collect();
    assert_eq!(online, [true, true, true, false], "{st}");
    assert!(
        st["result"]["statuses"][3].get("last_seen").is_none(),
        "{st}"
    );

    // A clean close: offline at once, last seen now.
    let closed = now_ms();
    alice.close().await;
    eventually(WAIT, "alice offline", async || {
        let st = c.nodes[2].api("user_status", users.clone()).await;
        st["result"]["statuses"][0]["online"] == false
    })
    .await;
    let st = c.nodes[1].api("user_status", users.clone()).await;
    let seen = st["result"]["statuses"][0]["last_seen"].as_i64().unwrap();
    assert!(seen >= closed - 1000, "{st}");

    // kill -9 of C: carol (only there) goes offline within the TTL; dave, also on B,
    // stays online.
    let killed = now_ms();
    let at = Instant::now();
    c.nodes[2].kill();
    let mut last = Value::Null;
    eventually(
        Duration::from_secs(TTL_SECS + 3),
        "carol offline after her node was killed",
        async || {
            last = c.nodes[0].api("user_status", users.clone()).await;
            last["result"]["statuses"][1]["online"] == false
        },
    )
    .await;
    eprintln!("carol offline {:?} after the kill", at.elapsed());
    let carol = &last["result"]["statuses"][1];
    let seen = carol["last_seen"].as_i64().unwrap();
    // Last seen: within a refresh period (a third of the TTL) of the kill, and not after.
    let period = (TTL_SECS * 1000 / 3) as i64;
    assert!(
        seen <= killed + 200 && seen >= killed - period - 1000,
        "{carol} (killed at {killed})"
    );
    assert_eq!(last["result"]["statuses"][2]["online"], true, "{last}");
    // The status survives the node restarts: a fresh node reads the same registry.
    let fresh = Node::builder()
        .redis(&c.redis.url())
        .store(&c.store)
        .start();
    let st = api(fresh.addr, "user_status", users.clone()).await;
    assert_eq!(
        st["result"]["statuses"][1]["last_seen"],
        json!(seen),
        "{st}"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
