//! Cluster mode end to end: real `roomcast serve` processes sharing a private PostgreSQL and
//! a private Redis, with the bus on that Redis or on a private NATS (services started by
//! `roomcast-testkit`), real WebSocket clients, real nginx. The tests stamped by
//! `on_each_broker!` run once per broker from one body.
//!
//! What must hold: subscribers on every node get publications made on any node, in order;
//! concurrent publishers on different nodes get contiguous, unique offsets; a client of a
//! node killed with -9 recovers everything on another node; a broker restart or stall loses
//! nothing; a node drained by SIGTERM under load loses no acknowledged publication and
//! leaves presence and the node list at once; every broker passes the broker conformance suite;
//! presence and user operations are cluster-wide; the store conformance suite passes on
//! PostgreSQL (and SQLite); on a 3-master Redis Cluster the bus uses sharded Pub/Sub, so a
//! room's channel lives on one shard only.

use std::sync::Arc;
use std::time::Duration;

use roomcast_testkit::*;
use serde_json::json;
use tokio::time::{sleep, Instant};

/// What carries the bus between the nodes (presence is on Redis either way).
#[derive(Clone, Copy, Debug)]
enum Broker {
    Redis,
    Nats,
}

struct Cluster {
    /// The nodes' config file (`presence_ttl_secs = 10`, so a killed node's presence goes
    /// within a test's patience).
    _conf: tempfile::TempDir,
    redis: Redis,
    /// The bus's NATS server, when the bus is on NATS.
    nats: Option<Nats>,
    _pg: Postgres,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Kills the server that carries the bus (-9).
    fn kill_broker(&mut self) {
        match &mut self.nats {
            Some(n) => n.kill(),
            None => self.redis.kill(),
        }
    }

    /// Starts it again, empty (no subscriptions survive).
    fn restart_broker(&mut self) {
        match &mut self.nats {
            Some(n) => n.restart(),
            None => self.redis.restart(),
        }
    }

    /// `STOP` / `CONT` to the server that carries the bus: a silent stall.
    fn signal_broker(&self, sig: &str) {
        match &self.nats {
            Some(n) => n.signal(sig),
            None => self.redis.signal(sig),
        }
    }
}

async fn cluster(n: usize) -> Cluster {
    cluster_on(Broker::Redis, n).await
}

async fn cluster_on(broker: Broker, n: usize) -> Cluster {
    let redis = Redis::start();
    let nats = matches!(broker, Broker::Nats).then(Nats::start);
    let pg = Postgres::start();
    let store = pg.fresh_db().await;
    let conf = tempfile::tempdir().unwrap();
    let conf_file = conf.path().join("roomcast.toml");
    std::fs::write(&conf_file, "presence_ttl_secs = 10\n").unwrap();
    let nodes = (0..n)
        .map(|_| {
            // The tests' subscribers read only once the publishing is done, unlike an SDK,
            // which answers pings all along: a loaded machine must not turn that into a
            // "no pong" close (3012) that the tests would count as a reconnect.
            let node = Node::builder()
                .redis(&redis.url())
                .store(&store)
                .arg("--config")
                .arg(&conf_file)
                .arg("--ping-interval")
                .arg("120")
                .arg("--pong-timeout")
                .arg("60");
            match &nats {
                Some(nats) => node.nats(&nats.url()),
                None => node,
            }
            .start()
        })
        .collect();
    Cluster {
        _conf: conf,
        redis,
        nats,
        _pg: pg,
        nodes,
    }
}

/// Stamps one test per broker (`<name>::redis`, `<name>::nats`) from one async body
/// `async fn <name>(broker: Broker)`.
macro_rules! on_each_broker {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::Broker::Redis).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                super::$name(super::Broker::Nats).await
            }
        }
    };
}

// The broker conformance suite (`roomcast::bus::conformance`), once per real backend (the
// in-process broker runs it in the library's unit tests).
roomcast::broker_conformance!(broker_conformance_redis, async {
    let redis = Redis::start();
    let broker = roomcast::bus::redis::RedisBroker::connect(&redis.url())
        .await
        .expect("redis broker");
    (
        Arc::new(broker) as Arc<dyn roomcast::bus::broker::Broker>,
        redis,
    )
});

roomcast::broker_conformance!(broker_conformance_redis_cluster, async {
    let rc = RedisCluster::start();
    let broker = roomcast::bus::redis::RedisBroker::connect(&rc.url())
        .await
        .expect("redis cluster broker");
    (
        Arc::new(broker) as Arc<dyn roomcast::bus::broker::Broker>,
        rc,
    )
});

roomcast::broker_conformance!(broker_conformance_nats, async {
    let nats = Nats::start();
    let broker = roomcast::bus::nats::NatsBroker::connect(&nats.url())
        .await
        .expect("nats broker");
    (
        Arc::new(broker) as Arc<dyn roomcast::bus::broker::Broker>,
        nats,
    )
});

// The store suite on PostgreSQL, stamped from the one definition (`store::conformance`) that
// `store/sqlite.rs` stamps for SQLite.
roomcast::store_conformance!(postgres_store_conformance, Postgres::start(), |pg, _n| {
    roomcast::store::postgres::PostgresStore::connect(
        &pg.fresh_db().await,
        Duration::from_secs(300),
    )
    .await
    .unwrap()
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_on_postgres_and_sqlite() {
    use roomcast::store::conformance as suite;
    use roomcast::store::postgres::PostgresStore;
    use roomcast::store::sqlite::SqliteStore;
    use roomcast::store::Store;
    let ttl = Duration::from_secs(300);
    let pg = Postgres::start();

    // Two stores on one database (two nodes): appends interleave without reusing an offset.
    let db = pg.fresh_db().await;
    let (a, _ca) = PostgresStore::connect(&db, ttl).await.unwrap();
    let (b, _cb) = PostgresStore::connect(&db, ttl).await.unwrap();
    let (a, b): (Arc<dyn Store>, Arc<dyn Store>) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    for (i, s) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for j in 0..50 {
                let m = suite::msg("shared", &format!("{i}-{j}"), None);
                got.push(s.append(m).await.unwrap().offset);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<_>>());
    assert_eq!(
        a.position("shared").await.unwrap(),
        b.position("shared").await.unwrap()
    );

    // One idempotency key sent to both nodes at once: stored once, both get its offset.
    let key = suite::msg("shared", "k", Some("same-key"));
    let key2 = suite::msg("shared", "k", Some("same-key"));
    let (ra, rb) = tokio::join!(a.append(key), b.append(key2));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.offset, rb.offset);
    assert!(
        ra.duplicate != rb.duplicate,
        "exactly one of them stored it"
    );
    assert_eq!(a.position("shared").await.unwrap().offset, 201);

    // A NUL in a room name (client input) fails that append only, not its batch.
    let (bad, good) = tokio::join!(
        a.append(suite::msg("nul\0room", "x", None)),
        a.append(suite::msg("shared", "fine", None))
    );
    assert!(bad.is_err());
    assert_eq!(good.unwrap().offset, 202);

    // Reopening keeps offsets and the epoch.
    let (s, _c) = PostgresStore::connect(&db, ttl).await.unwrap();
    let r = s.append(suite::msg("shared", "again", None)).await.unwrap();
    assert_eq!(r.offset, 203);
    assert_eq!(r.epoch, a.position("shared").await.unwrap().epoch);

    // The same suite on SQLite, so both backends answer to one definition.
    let dir = tempfile::tempdir().unwrap();
    let dir = &dir;
    suite::run_all(|n| async move {
        SqliteStore::open(&dir.path().join(format!("{n}.db")), ttl).unwrap()
    })
    .await;

    // A bad URL is an error, not a panic.
    assert!(PostgresStore::connect("not a url", ttl).await.is_err());
}

on_each_broker!(three_nodes_concurrent_publishers_contiguous_offsets_in_order_everywhere);
async fn three_nodes_concurrent_publishers_contiguous_offsets_in_order_everywhere(broker: Broker) {
    let c = cluster_on(broker, 3).await;
    let mut subs = Vec::new();
    for node in &c.nodes {
        subs.push(Subscriber::start(&node.ws_url(), "reader", "chat").await);
    }
    let per_node = 100u64;
    let mut publishers = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        let addr = node.addr;
        publishers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for j in 0..per_node {
                offsets.push(publish(addr, "chat", json!({"node": i, "n": j})).await);
            }
            offsets
        }));
    }
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    let total = per_node * c.nodes.len() as u64;
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "offsets unique, no hole"
    );
    for s in &mut subs {
        s.collect(total, Duration::from_secs(30)).await;
        s.assert_complete(total);
        assert_eq!(s.reconnects, 0, "no subscriber needed to recover");
    }
    // How much reordering the nodes did (informative: it depends on timing).
    let info = api(c.nodes[0].addr, "info", json!({})).await;
    let (mut early, mut fills) = (0, 0);
    for n in info["result"]["nodes"].as_array().unwrap() {
        early += n["bus_early"].as_u64().unwrap_or(0);
        fills += n["bus_gap_fills"].as_u64().unwrap_or(0);
    }
    eprintln!(
        "publications that arrived ahead of a missing one: {early}; filled from the store: {fills}"
    );
    // History agrees, from any node.
    let h = api(
        c.nodes[2].addr,
        "history",
        json!({"channel": "chat", "limit": -1}),
    )
    .await;
    let offs: Vec<u64> = h["result"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, (1..=total).collect::<Vec<_>>());
}

/// The last non-empty line of `redis-cli` output, as a number (`PUBSUB SHARDNUMSUB ch`
/// prints the channel, then its count).
fn last_number(out: &str) -> u64 {
    out.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("a number in {out:?}"))
}

/// `calls=` of one command in `INFO commandstats` (0 when never called).
fn command_calls(commandstats: &str, command: &str) -> u64 {
    commandstats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_sharded_pubsub_three_nodes_in_order_on_one_shard() {
    let rc = RedisCluster::start();
    let pg = Postgres::start();
    let store = pg.fresh_db().await;
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&rc.url(), &store)).collect();
    let mut subs = Vec::new();
    for node in &nodes {
        subs.push(Subscriber::start(&node.ws_url(), "reader", "chat").await);
    }
    let per_node = 50u64;
    let mut publishers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let addr = node.addr;
        publishers.push(tokio::spawn(async move {
            for j in 0..per_node {
                publish(addr, "chat", json!({"node": i, "n": j})).await;
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let total = per_node * nodes.len() as u64;
    for s in &mut subs {
        s.collect(total, Duration::from_secs(30)).await;
        s.assert_complete(total);
        assert_eq!(s.reconnects, 0, "no subscriber needed to recover");
    }

    // Sharded: the room's channel is subscribed (by all three nodes) on exactly one
    // master, and nothing uses cluster-wide PUBLISH/SUBSCRIBE.
    let channel = "roomcast:room:chat";
    let counts: Vec<u64> = rc
        .ports
        .iter()
        .map(|p| last_number(&rc.cli(*p, &["PUBSUB", "SHARDNUMSUB", channel])))
        .collect();
    eprintln!("SHARDNUMSUB {channel} per master: {counts:?}");
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        vec![0, 0, 3],
        "one shard holds the room's subscriptions"
    );
    let owner = rc.ports[counts.iter().position(|n| *n == 3).unwrap()];
    for p in &rc.ports {
        let stats = rc.cli(*p, &["INFO", "commandstats"]);
        assert_eq!(command_calls(&stats, "publish"), 0, "no PUBLISH on {p}");
        assert_eq!(command_calls(&stats, "subscribe"), 0, "no SUBSCRIBE on {p}");
        assert_eq!(
            last_number(&rc.cli(*p, &["PUBSUB", "NUMSUB", channel])),
            0,
            "no plain subscription on {p}"
        );
        if *p == owner {
            assert!(
                command_calls(&stats, "spublish") >= total,
                "the owner shard took every publication: {stats}"
            );
        }
    }

    // Presence (hash-tagged keys, Lua), the node list (control channel) and the
    // channels registry (one key per node, on different shards) are cluster-wide.
    let p = api(nodes[1].addr, "presence_stats", json!({"channel": "chat"})).await;
    assert_eq!(p["result"]["num_clients"], 3, "presence: {p}");
    eventually(Duration::from_secs(10), "info lists 3 nodes", async || {
        let v = api(nodes[0].addr, "info", json!({})).await;
        v["result"]["nodes"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "channels counts 3 in chat",
        async || {
            let v = api(nodes[0].addr, "channels", json!({})).await;
            v["result"]["channels"]["chat"]["num_clients"] == json!(3)
        },
    )
    .await;

    // The last local subscriber leaving unsubscribes the shard (SUNSUBSCRIBE).
    for s in subs {
        s.client.close().await;
    }
    eventually(Duration::from_secs(10), "room unsubscribed", async || {
        last_number(&rc.cli(owner, &["PUBSUB", "SHARDNUMSUB", channel])) == 0
    })
    .await;
    drop(nodes);
}

on_each_broker!(kill_9_a_node_mid_stream_and_its_clients_recover_on_another);
async fn kill_9_a_node_mid_stream_and_its_clients_recover_on_another(broker: Broker) {
    let mut c = cluster_on(broker, 3).await;
    let mut sub = Subscriber::start(&c.nodes[2].ws_url(), "victim", "stream").await;
    let total = 300u64;
    let addr = c.nodes[0].addr;
    let publisher = tokio::spawn(async move {
        for j in 0..total {
            publish(addr, "stream", json!({"n": j})).await;
            sleep(Duration::from_millis(3)).await;
        }
    });
    sub.collect(50, Duration::from_secs(20)).await;
    c.nodes[2].kill();
    // The client sees its connection drop and reconnects to a live node.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sub.client.next().await {
            Event::Frame(v) => {
                if let Some(o) = v["push"]["pub"]["offset"].as_u64() {
                    sub.offsets.push(o);
                }
            }
            Event::Closed(_) => break,
        }
        assert!(
            Instant::now() < deadline,
            "the killed node's socket never closed"
        );
    }
    let other = c.nodes[1].ws_url();
    sub.recover(&other).await;
    publisher.await.unwrap();
    sub.collect(total, Duration::from_secs(30)).await;
    sub.assert_complete(total);
}

on_each_broker!(broker_restart_mid_stream_loses_nothing);
async fn broker_restart_mid_stream_loses_nothing(broker: Broker) {
    let mut c = cluster_on(broker, 3).await;
    let mut subs = Vec::new();
    for node in &c.nodes {
        subs.push(Subscriber::start(&node.ws_url(), "reader", "durable").await);
    }
    let addrs: Vec<_> = c.nodes.iter().map(|n| n.addr).collect();
    let total = 240u64;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let publisher = tokio::spawn(async move {
        for j in 0..total {
            // Alternate the publishing node, so every node has remote publications to miss.
            publish(addrs[j as usize % addrs.len()], "durable", json!({"n": j})).await;
            let _ = progress_tx.send(j + 1);
            sleep(Duration::from_millis(10)).await;
        }
    });
    progress.wait_for(|&n| n >= 60).await.unwrap();
    c.kill_broker();
    progress.wait_for(|&n| n >= 120).await.unwrap();
    c.restart_broker();
    publisher.await.unwrap();
    for s in &mut subs {
        s.collect(total, Duration::from_secs(40)).await;
        s.assert_complete(total);
        assert_eq!(
            s.reconnects, 0,
            "the nodes caught up from the store; no client had to"
        );
    }
}

on_each_broker!(a_silent_broker_stall_is_detected_and_recovered_from_the_store);
async fn a_silent_broker_stall_is_detected_and_recovered_from_the_store(broker: Broker) {
    let c = cluster_on(broker, 2).await;
    let mut sub = Subscriber::start(&c.nodes[1].ws_url(), "reader", "quiet").await;
    let a = c.nodes[0].addr;
    for j in 0..10u64 {
        publish(a, "quiet", json!({"n": j})).await;
    }
    sub.collect(10, Duration::from_secs(10)).await;
    // The broker freezes: connections stay open, nothing is delivered, nothing fails fast.
    c.signal_broker("STOP");
    for j in 10..20u64 {
        publish(a, "quiet", json!({"n": j})).await; // committed; the bus cannot carry it
    }
    sleep(Duration::from_secs(4)).await;
    c.signal_broker("CONT");
    let resumed = Instant::now();
    // The node noticed its probes stopped coming back, resubscribed once the broker answered
    // and read what it missed from the store.
    sub.collect(20, Duration::from_secs(8)).await;
    sub.assert_complete(20);
    assert_eq!(
        sub.reconnects, 0,
        "recovered by the node, not by the client"
    );
    eprintln!(
        "{broker:?}: caught up {:?} after the broker resumed",
        resumed.elapsed()
    );
}

on_each_broker!(sigterm_under_load_loses_nothing_and_peers_drop_the_node_at_once);
async fn sigterm_under_load_loses_nothing_and_peers_drop_the_node_at_once(broker: Broker) {
    let mut c = cluster_on(broker, 3).await;
    let mut subs = Vec::new();
    for node in &c.nodes[..2] {
        subs.push(Subscriber::start(&node.ws_url(), "reader", "drain").await);
    }
    // Clients of the node that will drain, in presence.
    let mut present = Vec::new();
    for user in ["dora", "dave"] {
        let mut cl = Client::open(&c.nodes[2].ws_url()).await;
        cl.call(json!({"connect": {"token": token(user)}})).await;
        cl.subscribe("drain").await;
        // Reads like a real client (and so answers the server's close).
        present.push(tokio::spawn(async move {
            while let Event::Frame(_) = cl.next().await {}
        }));
    }
    let (a, draining) = (c.nodes[0].addr, c.nodes[2].addr);
    let p = api(a, "presence_stats", json!({"channel": "drain"})).await;
    assert_eq!(
        p["result"]["num_clients"], 4,
        "2 readers + 2 on the draining node"
    );
    eventually(Duration::from_secs(10), "info lists 3 nodes", async || {
        let v = api(a, "info", json!({})).await;
        v["result"]["nodes"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    // Publishing load on the draining node: 4 concurrent publishers, as fast as it
    // answers; every acknowledged offset is kept.
    let (started_tx, mut started) = tokio::sync::watch::channel(0u64);
    let started_tx = Arc::new(started_tx);
    let mut publishers = Vec::new();
    for w in 0..4u64 {
        let tx = started_tx.clone();
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for j in 0.. {
                let body = json!({"channel": "drain", "data": {"w": w, "n": j}}).to_string();
                // Its own task: the helper panics when the connection is refused, which
                // here only means the node is gone.
                let call = tokio::spawn(async move {
                    api_raw(draining, "publish", Some(API_KEY), &body).await
                });
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Ok(Ok((200, v))) => match v["result"]["offset"].as_u64() {
                        Some(o) => {
                            acked.push(o);
                            tx.send_modify(|n| *n += 1);
                        }
                        None => break, // an error reply: the node is draining
                    },
                    _ => break, // refused or closed: the node is gone
                }
            }
            acked
        }));
    }
    started.wait_for(|&n| n >= 200).await.unwrap();
    let term = Instant::now();
    c.nodes[2].signal("TERM");
    // Within 1 s the other nodes no longer list its clients, nor the node itself.
    eventually(
        Duration::from_secs(1),
        "the drained node's clients leave presence",
        async || {
            let p = api(a, "presence_stats", json!({"channel": "drain"})).await;
            p["result"]["num_clients"] == json!(2)
        },
    )
    .await;
    let presence_gone = term.elapsed();
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    for cl in present {
        cl.await.unwrap();
    }
    let mut node = c.nodes.remove(2);
    let status = tokio::task::spawn_blocking(move || node.wait())
        .await
        .unwrap();
    assert!(status.success(), "a drained node exits cleanly: {status:?}");
    let exited = term.elapsed();
    eventually(
        Duration::from_secs(1),
        "peers drop the node from info",
        async || {
            let v = api(a, "info", json!({})).await;
            v["result"]["nodes"].as_array().map(Vec::len) == Some(2)
        },
    )
    .await;
    acked.sort_unstable();
    let top = *acked.last().expect("publications acknowledged");
    // Every acknowledged publication reaches the other nodes' subscribers, in order,
    // well before a silent node would be noticed (10 s): through the bus, flushed by the
    // drain, not through a client's recovery.
    for s in &mut subs {
        s.collect(top, Duration::from_secs(5)).await;
        assert_eq!(
            s.offsets[..top as usize],
            (1..=top).collect::<Vec<_>>(),
            "every acknowledged publication, once, in order"
        );
        assert_eq!(s.reconnects, 0);
    }
    eprintln!(
        "{broker:?}: {} acknowledged before the drain; presence cleared after {presence_gone:?}, node exited after {exited:?}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_missing_from_the_bus_is_filled_from_the_store() {
    use roomcast::store::postgres::PostgresStore;
    use roomcast::store::Store;
    let redis = Redis::start();
    let pg = Postgres::start();
    let store_url = pg.fresh_db().await;
    let nodes: Vec<Node> = (0..2)
        .map(|_| Node::start(&redis.url(), &store_url))
        .collect();
    let mut sub = Subscriber::start(&nodes[1].ws_url(), "reader", "gap").await;
    publish(nodes[0].addr, "gap", json!({"n": 1})).await;
    sub.collect(1, Duration::from_secs(10)).await;
    // A "node" that commits offset 2 and dies before publishing it: the store has it, the
    // bus never carries it.
    let (silent, _committed) = PostgresStore::connect(&store_url, Duration::from_secs(300))
        .await
        .unwrap();
    let r = silent
        .append(roomcast::store::conformance::msg("gap", "2", None))
        .await
        .unwrap();
    assert_eq!(r.offset, 2);
    assert_eq!(publish(nodes[0].addr, "gap", json!({"n": 3})).await, 3);
    // Node 1 sees 3 without 2, waits briefly, reads 2 from the store, delivers 2 then 3.
    sub.collect(3, Duration::from_secs(10)).await;
    sub.assert_complete(3);
    assert_eq!(sub.reconnects, 0);
    let info = api(nodes[1].addr, "info", json!({})).await;
    let fills: u64 = info["result"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["bus_gap_fills"].as_u64().unwrap_or(0))
        .sum();
    assert!(fills >= 1, "the gap was filled from the store: {info}");

    // The tail case: a node commits and dies before publishing, and nothing is published
    // after. The others notice its heartbeats stopped and catch up from the store.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let beat = json!({"heartbeat": {"n": "ghost", "s": {"uid": "ghost", "name": "ghost",
        "version": "0", "num_clients": 0, "num_users": 0, "num_channels": 0, "uptime": 0}}});
    let _: i64 = redis::cmd("PUBLISH")
        .arg("roomcast:control")
        .arg(beat.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the ghost node is known",
        async || {
            let v = api(nodes[1].addr, "info", json!({})).await;
            v["result"]["nodes"].as_array().map(Vec::len) == Some(3)
        },
    )
    .await;
    let r = silent
        .append(roomcast::store::conformance::msg("gap", "4", None))
        .await
        .unwrap();
    assert_eq!(r.offset, 4);
    sub.collect(4, Duration::from_secs(20)).await;
    sub.assert_complete(4);
    assert_eq!(sub.reconnects, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_fails_publishes_cleanly_then_the_node_reconnects() {
    if std::env::var_os("ROOMCAST_TEST_POSTGRES").is_some() {
        return; // an external server is not ours to restart
    }
    let redis = Redis::start();
    let pg = Postgres::start();
    let store = pg.fresh_db().await;
    let nodes: Vec<Node> = (0..2).map(|_| Node::start(&redis.url(), &store)).collect();
    let mut sub = Subscriber::start(&nodes[1].ws_url(), "reader", "pg").await;
    assert_eq!(publish(nodes[0].addr, "pg", json!({"n": 1})).await, 1);
    pg.restart();
    // Publishes fail with an error (never hang, never crash the node) until the store's
    // connections are back; then they succeed and continue the same stream.
    let mut acked = vec![1u64];
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.len() < 5 {
        assert!(Instant::now() < deadline, "publishing never recovered");
        let body = json!({"channel": "pg", "data": {"n": acked.len()}}).to_string();
        let call = api_raw(nodes[0].addr, "publish", Some(API_KEY), &body);
        let (status, v) = tokio::time::timeout(WAIT, call)
            .await
            .expect("publish answered in time");
        match v["result"]["offset"].as_u64() {
            Some(o) => acked.push(o),
            None => {
                assert!(
                    status == 200 && v["error"]["code"].is_u64() || status >= 500,
                    "a failed publish is an error reply: {status} {v}"
                );
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(acked, vec![1, 2, 3, 4, 5]);
    sub.collect(5, Duration::from_secs(20)).await;
    sub.assert_complete(5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_channels_info_and_user_ops_are_cluster_wide() {
    let mut c = cluster(3).await;
    let (a, b) = (c.nodes[0].addr, c.nodes[1].addr);
    let mut alice = Client::open(&c.nodes[0].ws_url()).await;
    alice
        .call(json!({"connect": {"token": token("alice")}}))
        .await;
    alice.subscribe("lobby").await;
    let mut bob = Client::open(&c.nodes[2].ws_url()).await;
    bob.call(json!({"connect": {"token": token("bob")}})).await;
    bob.subscribe("lobby").await;

    // Presence from a node where neither is connected.
    let p = api(b, "presence_stats", json!({"channel": "lobby"})).await;
    assert_eq!(p["result"], json!({"num_clients": 2, "num_users": 2}));
    let p = api(b, "presence", json!({"channel": "lobby"})).await;
    let users: std::collections::BTreeSet<String> = p["result"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i["user"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(users.into_iter().collect::<Vec<_>>(), vec!["alice", "bob"]);

    // Every node is listed by every node (heartbeats), channels are summed.
    eventually(Duration::from_secs(10), "info lists 3 nodes", async || {
        let v = api(b, "info", json!({})).await;
        v["result"]["nodes"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "channels counts 2 in lobby",
        async || {
            let v = api(b, "channels", json!({})).await;
            v["result"]["channels"]["lobby"]["num_clients"] == json!(2)
        },
    )
    .await;

    // Unsubscribe and disconnect users connected to other nodes.
    api(b, "unsubscribe", json!({"user": "bob", "channel": "lobby"})).await;
    let push = bob.next_push(|p| p.get("unsubscribe").is_some()).await;
    assert_eq!(push["channel"], "lobby");
    api(b, "disconnect", json!({"user": "alice"})).await;
    assert!(alice.closed_code().await.is_some_and(|c| c >= 3000));

    // A node killed without cleanup: its presence entries are gone within their TTL
    // (`presence_ttl_secs`, 10 s here) after its last refresh.
    let mut carol = Client::open(&c.nodes[2].ws_url()).await;
    carol
        .call(json!({"connect": {"token": token("carol")}}))
        .await;
    carol.subscribe("wake").await;
    let p = api(a, "presence_stats", json!({"channel": "wake"})).await;
    assert_eq!(p["result"]["num_clients"], 1);
    let killed = Instant::now();
    c.nodes[2].kill();
    eventually(
        Duration::from_secs(31),
        "dead node's presence expires",
        async || {
            let p = api(a, "presence_stats", json!({"channel": "wake"})).await;
            p["result"]["num_clients"] == json!(0)
        },
    )
    .await;
    eprintln!(
        "presence of a killed node gone after {:?}",
        killed.elapsed()
    );
}

/// The deploy/ example, with its ports replaced, in front of real nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sticky_load_balancer_in_front_of_the_cluster() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let store = pg.fresh_db().await;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes: Vec<Node> = ports
        .iter()
        .map(|p| {
            Node::start_on(
                format!("127.0.0.1:{p}").parse().unwrap(),
                &redis.url(),
                &store,
            )
        })
        .collect();
    let lb_port = free_port();
    let lb = Nginx::start_example(lb_port, [ports[0], ports[1], ports[2]]);
    let lb_addr = lb.addr();
    let url = format!("ws://{lb_addr}/connection/websocket");
    // Two clients through the balancer (sticky: both land on one node) and one direct.
    let mut via_lb = Subscriber::start(&url, "lb1", "room").await;
    let mut via_lb2 = Subscriber::start(&url, "lb2", "room").await;
    let mut direct = Subscriber::start(&nodes[1].ws_url(), "direct", "room").await;
    // Publish through every node directly and through the balancer's API route.
    for j in 0..30u64 {
        let addr = if j % 4 == 3 {
            lb_addr
        } else {
            nodes[j as usize % 3].addr
        };
        publish(addr, "room", json!({"n": j})).await;
    }
    for s in [&mut via_lb, &mut via_lb2, &mut direct] {
        s.collect(30, Duration::from_secs(20)).await;
        s.assert_complete(30);
    }
    let info = api(lb_addr, "info", json!({})).await;
    assert!(info["result"]["nodes"]
        .as_array()
        .is_some_and(|n| !n.is_empty()));
    drop(nodes);
}

/// Publish throughput through the server API, SQLite vs PostgreSQL + Redis, one node each
/// (not a CI test: `cargo test --release --test cluster -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn publish_throughput_sqlite_vs_postgres() {
    let redis = Redis::start();
    let pg = Postgres::start();
    let pg_url = pg.fresh_db().await;
    for (name, cluster) in [("sqlite", false), ("postgres+redis", true)] {
        let server = TestServer::start_with(|c| {
            if cluster {
                c.store_url = Some(pg_url.clone());
                c.redis_url = Some(redis.url());
            }
        })
        .await;
        let mut reader = Subscriber::start(&server.ws_url(), "reader", "bench").await;
        let (tasks, each) = (32u64, 100u64);
        let started = Instant::now();
        let mut handles = Vec::new();
        for t in 0..tasks {
            let addr = server.addr;
            handles.push(tokio::spawn(async move {
                for j in 0..each {
                    publish(addr, "bench", json!({"t": t, "j": j})).await;
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let acked = started.elapsed();
        reader.collect(tasks * each, Duration::from_secs(60)).await;
        reader.assert_complete(tasks * each);
        eprintln!(
            "{name}: {} publishes from {tasks} concurrent API callers: {:.0}/s acknowledged, all delivered after {:?}",
            tasks * each,
            (tasks * each) as f64 / acked.as_secs_f64(),
            started.elapsed()
        );
        server.stop().await;
    }
}
