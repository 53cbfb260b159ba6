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

fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|u| u.to_string()).collect()
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
        async || rx.acknowledged(ROOM).len() == 2,
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
        rx.acknowledged(ROOM).len() == 3
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
