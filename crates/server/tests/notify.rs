//! Offline notifications over real sockets: a real HTTP receiver started here (axum on a
//! loopback port) takes the webhook's requests, checks each signature (HMAC-SHA256 of the
//! body with the secret) and idempotency key (recomputed from room, offset and batch), and
//! answers 200 or, while "down", 503 (or nothing listens: connection refused).
//!
//! What must hold: each publication of a `notify_offline` room names exactly its members
//! with no connection anywhere (never the sender), in batches of `notify_batch_size`; on
//! one node (SQLite) and on three nodes (Redis + PostgreSQL) with clients spread over
//! them; and when the webhook is refused and then answers 503 for a while and the node is
//! killed (-9) and restarted meanwhile, every notification arrives once it is back, none
//! lost, and a batch arriving twice has the same idempotency key and the same users.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use roomcast_testkit::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET: &str = "webhook-secret";
const ROOM: &str = "n:room";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    body: Value,
    key: String,
    /// The status answered (200, or 503 while down).
    status: u16,
}

/// The webhook receiver.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key the notifier must send: SHA-256 of room, 0, offset (BE u64), batch (BE u32),
/// first 16 bytes in hex.
fn expected_key(room: &str, offset: u64, batch: u32) -> String {
    let mut h = Sha256::new();
    h.update(room.as_bytes());
    h.update([0u8]);
    h.update(offset.to_be_bytes());
    h.update(batch.to_be_bytes());
    hex(&h.finalize()[..16])
}

impl Receiver {
    /// Listens on `addr` (port 0: any).
    async fn start(addr: SocketAddr) -> Receiver {
        use axum::response::IntoResponse;
        let got = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let (g, d) = (got.clone(), down.clone());
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (got, down) = (g.clone(), d.clone());
                async move {
                    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                    mac.update(&body);
                    let want = format!("sha256={}", hex(&mac.finalize().into_bytes()));
                    let sig = headers
                        .get("x-roomcast-signature")
                        .map(|v| v.to_str().unwrap());
                    assert_eq!(sig, Some(want.as_str()), "signature of {body:?}");
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
                    let room = v["room"].as_str().unwrap();
                    let (offset, batch) =
                        (v["offset"].as_u64().unwrap(), v["batch"].as_u64().unwrap());
                    assert_eq!(key, expected_key(room, offset, batch as u32), "{v}");
                    assert_eq!(v["idempotency_key"], key.as_str());
                    let status = if down.load(Ordering::SeqCst) {
                        503
                    } else {
                        200
                    };
                    got.lock().unwrap().push(Got {
                        body: v,
                        key,
                        status,
                    });
                    axum::http::StatusCode::from_u16(status)
                        .unwrap()
                        .into_response()
                }
            },
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            addr,
            got,
            down,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Acknowledged requests' users per offset of `room`, checking that a batch that
    /// arrived twice had the same key and users.
    fn acknowledged(&self, room: &str) -> BTreeMap<u64, BTreeSet<String>> {
        let mut by_key: BTreeMap<String, Value> = BTreeMap::new();
        let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for g in self
            .got()
            .into_iter()
            .filter(|g| g.status == 200 && g.body["room"] == room)
        {
            if let Some(first) = by_key.get(&g.key) {
                assert_eq!(first, &g.body, "a duplicate has the same key and body");
                continue;
            }
            let users = g.body["users"].as_array().unwrap();
            assert!(!users.is_empty(), "no empty batch: {}", g.body);
            let set = out.entry(g.body["offset"].as_u64().unwrap()).or_default();
            for u in users {
                assert!(
                    set.insert(u.as_str().unwrap().to_owned()),
                    "a user once per publication: {}",
                    g.body
                );
            }
            by_key.insert(g.key.clone(), g.body);
        }
        out
    }
}

impl Receiver {
    /// Whether offsets 1 to `n` of `room` were acknowledged, each naming at least `users`
    /// users (a publication's batches arrive one after the other).
    fn complete(&self, room: &str, n: u64, users: usize) -> bool {
        let acked = self.acknowledged(room);
        (1..=n).all(|o| acked.get(&o).is_some_and(|u| u.len() >= users))
    }
}

fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(ToString::to_string).collect()
}

fn tune(c: &mut roomcast::Config, url: &str) {
    c.namespaces.insert(
        "n".into(),
        roomcast::config::NamespaceOptions {
            notify_offline: true,
            ..Default::default()
        },
    );
    c.notify_webhook_url = Some(url.into());
    c.notify_webhook_secret = Some(SECRET.into());
    c.notify_batch_size = 2;
    c.notify_sweep_secs = 1;
}

async fn add_members(addr: SocketAddr, room: &str, users: &[&str]) {
    let r = api(
        addr,
        "add_members",
        json!({"channel": room, "users": users}),
    )
    .await;
    assert!(r["result"]["added"].is_u64(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_notifies_exactly_the_offline_members_in_signed_batches() {
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let url = rx.url();
    let s = TestServer::start_with(|c| tune(c, &url)).await;
    add_members(s.addr, ROOM, &["alice", "bob", "carol", "dave", "erin"]).await;
    add_members(s.addr, "plain", &["carol"]).await;
    let mut alice = s.client("alice").await;
    let bob = s.client("bob").await;
    alice.subscribe(ROOM).await;
    let r = alice
        .call(json!({"publish": {"channel": ROOM, "data": {"text": "hi"}}}))
        .await;
    assert_eq!(r["publish"], json!({}), "{r}");
    s.publish(ROOM, json!({"text": "from the backend"})).await;
    s.publish("plain", json!({"text": "not notified"})).await;
    let offline = set(&["carol", "dave", "erin"]);
    eventually(
        Duration::from_secs(10),
        "two publications notified",
        async || rx.complete(ROOM, 2, 3),
    )
    .await;
    let acked = rx.acknowledged(ROOM);
    assert_eq!(acked[&1], offline, "alice sent it, bob is online");
    assert_eq!(acked[&2], offline);
    let got = rx.got();
    assert_eq!(
        got.len(),
        4,
        "three users in batches of two, twice: {got:?}"
    );
    let first: Vec<&Got> = got.iter().filter(|g| g.body["offset"] == 1).collect();
    assert_eq!(first[0].body["sender"], "alice");
    assert_eq!(first[0].body["users"].as_array().unwrap().len(), 2);
    assert_eq!(first[1].body["batch"], 1);
    let second = got.iter().find(|g| g.body["offset"] == 2).unwrap();
    assert_eq!(
        second.body["sender"],
        Value::Null,
        "the server API has no sender"
    );
    let history = s.api("history", json!({"channel": ROOM, "limit": 2})).await;
    let pubs = &history["result"]["publications"];
    assert_eq!(pubs.as_array().unwrap().len(), 2, "{history}");
    assert!(first[0].body["publication_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    // Bob leaves: the next publication names him too; nothing for the plain room.
    bob.close().await;
    eventually(Duration::from_secs(5), "bob offline", async || {
        let r = s.api("user_status", json!({"users": ["bob"]})).await;
        r["result"]["statuses"][0]["online"] == false
    })
    .await;
    s.publish(ROOM, json!({"text": "third"})).await;
    eventually(Duration::from_secs(10), "third notified", async || {
        rx.acknowledged(ROOM).get(&3).is_some_and(|u| u.len() == 4)
    })
    .await;
    assert_eq!(
        rx.acknowledged(ROOM)[&3],
        set(&["alice", "bob", "carol", "dave", "erin"])
            .difference(&set(&["alice"]))
            .cloned()
            .collect()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        rx.got().iter().all(|g| g.body["room"] == ROOM),
        "plain is not notified"
    );
    assert_eq!(
        rx.got().len(),
        6,
        "nothing sent twice while the webhook is up"
    );
    s.stop().await;
}

/// A node's config file for the notifier, webhook at `url`.
fn config_file(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("roomcast.toml");
    std::fs::write(
        &path,
        format!(
            "notify_webhook_url = \"{url}\"\nnotify_webhook_secret = \"{SECRET}\"\n\
             notify_batch_size = 2\nnotify_sweep_secs = 1\nnotify_lease_secs = 2\n\
             notify_retry_min_ms = 50\nnotify_retry_max_ms = 400\nnotify_timeout_ms = 1000\n\
             user_registry_ttl_secs = 3\n\
             [namespaces.n]\nnotify_offline = true\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_outage_and_a_killed_node_lose_nothing() {
    // Nothing listens on the webhook's port at first: connections are refused.
    let port = free_port();
    let hook: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let path = config_file(conf.path(), &format!("http://{hook}/hook"));
    let start = || {
        Node::builder()
            .data_dir(data.path())
            .arg("--config")
            .arg(&path)
            .start()
    };
    let mut node = start();
    let offline = ["u1", "u2", "u3", "u4", "u5"];
    add_members(node.addr, ROOM, &offline).await;
    add_members(node.addr, ROOM, &["online"]).await;
    let online = Client::connect(&node.ws_url(), "online").await;
    for i in 0..8 {
        node.publish(ROOM, json!({"i": i})).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Then it answers 503.
    let rx = Receiver::start(hook).await;
    rx.down.store(true, Ordering::SeqCst);
    for i in 8..12 {
        node.publish(ROOM, json!({"i": i})).await;
    }
    eventually(Duration::from_secs(10), "503s seen", async || {
        rx.got().iter().filter(|g| g.status == 503).count() >= 2
    })
    .await;
    // Killed while retrying, and started again on its store.
    drop(online);
    node.kill();
    let node = start();
    for i in 12..16 {
        node.publish(ROOM, json!({"i": i})).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        rx.got().iter().all(|g| g.status == 503),
        "nothing acknowledged while down"
    );
    rx.down.store(false, Ordering::SeqCst);
    // The old node's lease lapses (2 s), the restarted node resumes from the cursor.
    // "online" lost its connection with the kill: offline from then on (within the TTL).
    eventually(
        Duration::from_secs(30),
        "every publication notified",
        async || rx.complete(ROOM, 16, 5),
    )
    .await;
    let acked = rx.acknowledged(ROOM);
    let five = set(&offline);
    for (offset, users) in &acked {
        assert!(
            users.is_superset(&five),
            "offset {offset}: every offline member, got {users:?}"
        );
        assert!(users.len() <= 6, "members only: {users:?}");
    }
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=16).collect::<Vec<_>>()
    );
    // Once acknowledged, nothing is sent again.
    let n = rx.got().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rx.got().len(),
        n,
        "no request after everything was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_notify_each_publication_once_and_take_over_a_dead_node() {
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap()).await;
    let redis = Redis::start();
    let pg = Postgres::start();
    let store = pg.fresh_db().await;
    let conf = tempfile::tempdir().unwrap();
    let path = config_file(conf.path(), &rx.url());
    let mut nodes: Vec<Node> = (0..3)
        .map(|_| {
            Node::builder()
                .redis(&redis.url())
                .store(&store)
                .arg("--config")
                .arg(&path)
                .start()
        })
        .collect();
    add_members(nodes[0].addr, ROOM, &["a", "b", "c", "d", "e", "f"]).await;
    // a, b and c are connected, each on another node; d, e and f nowhere.
    let mut clients = Vec::new();
    for (i, user) in ["a", "b", "c"].iter().enumerate() {
        let mut c = Client::connect(&nodes[i].ws_url(), user).await;
        c.subscribe(ROOM).await;
        clients.push(c);
    }
    let mut offset = 0;
    for round in 0..3 {
        for n in &nodes {
            offset = n.publish(ROOM, json!({"round": round})).await;
        }
    }
    for c in &mut clients {
        let r = c
            .call(json!({"publish": {"channel": ROOM, "data": {"from": "client"}}}))
            .await;
        assert_eq!(r["publish"], json!({}), "{r}");
        offset += 1;
    }
    eventually(
        Duration::from_secs(20),
        "every publication notified",
        async || rx.complete(ROOM, offset, 3),
    )
    .await;
    let offline = set(&["d", "e", "f"]);
    for (o, users) in rx.acknowledged(ROOM) {
        assert_eq!(users, offline, "offset {o}");
    }
    let got = rx.got();
    assert_eq!(
        got.len(),
        2 * offset as usize,
        "each publication once, by one node (two batches each): {got:?}"
    );
    let senders: BTreeSet<String> = got
        .iter()
        .filter_map(|g| g.body["sender"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(senders, set(&["a", "b", "c"]));

    // The webhook goes down, node 0 accepts three more and is killed while retrying:
    // another node takes the room over once its lease lapses.
    rx.down.store(true, Ordering::SeqCst);
    for i in 0..3 {
        offset = nodes[0].publish(ROOM, json!({"late": i})).await;
    }
    eventually(Duration::from_secs(10), "node 0 retrying", async || {
        rx.got().iter().any(|g| g.status == 503)
    })
    .await;
    nodes[0].kill();
    rx.down.store(false, Ordering::SeqCst);
    eventually(
        Duration::from_secs(30),
        "the dead node's publications notified",
        async || rx.complete(ROOM, offset, 3),
    )
    .await;
    for (o, users) in rx.acknowledged(ROOM) {
        assert!(users.is_superset(&offline), "offset {o}: {users:?}");
        assert!(
            !users.contains("b") && !users.contains("c"),
            "online: {users:?}"
        );
    }
    drop(clients);
    drop(nodes);
}
