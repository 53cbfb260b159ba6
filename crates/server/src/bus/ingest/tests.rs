//! The shared ingest over the in-process broker: two nodes, one SQLite store, real hubs
//! and outboxes, no sockets.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::{sleep, timeout, Instant};

use super::BrokerBus;
use crate::bus::memory::MemoryBroker;
use crate::bus::Bus;
use crate::hub::{Hub, Out, Outbox, RoomEvent};
use crate::presence::LocalRegistry;
use crate::store::sqlite::SqliteStore;
use crate::store::{NewMessage, Store};

struct TestNode {
    bus: Arc<BrokerBus>,
    hub: Arc<Hub>,
}

fn node(
    name: &str,
    broker: &MemoryBroker,
    registry: &Arc<LocalRegistry>,
    store: &Arc<dyn Store>,
) -> TestNode {
    node_with(name, broker, registry, store, None)
}

fn node_with(
    name: &str,
    broker: &MemoryBroker,
    registry: &Arc<LocalRegistry>,
    store: &Arc<dyn Store>,
    personal: Option<super::Personal>,
) -> TestNode {
    let hub = Arc::new(Hub::new());
    let bus = Arc::new(BrokerBus::start(
        Arc::new(broker.clone()),
        registry.clone(),
        name.into(),
        hub.clone(),
        store.clone(),
        personal,
    ));
    TestNode { bus, hub }
}

fn msg(room: &str, n: u64) -> NewMessage {
    NewMessage {
        room: room.into(),
        data: RawValue::from_string(n.to_string()).unwrap(),
        user: "u".into(),
        client: "c".into(),
        info: None,
        idempotency_key: None,
    }
}

/// Offsets the outbox has received so far.
fn offsets(outbox: &Outbox, seen: &mut Vec<u64>) {
    let mut out = Vec::new();
    outbox.take(&mut out);
    for o in out {
        if let Out::Frame(b) = o {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            if let Some(off) = v["push"]["pub"]["offset"].as_u64() {
                seen.push(off);
            }
        }
    }
}

async fn collect(outbox: &Outbox, seen: &mut Vec<u64>, top: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while seen.last().copied().unwrap_or(0) < top {
        assert!(Instant::now() < deadline, "got {seen:?}, want up to {top}");
        sleep(Duration::from_millis(20)).await;
        offsets(outbox, seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_of_another_node_arrive_in_order_and_a_lost_subscription_is_resynced() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut committed) =
        SqliteStore::open(&dir.path().join("m.db"), Duration::from_secs(60)).unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let broker = MemoryBroker::new();
    let registry = Arc::new(LocalRegistry::default());
    let a = node("a", &broker, &registry, &store);
    let b = node("b", &broker, &registry, &store);
    // Node a's dispatcher: every committed batch onto its bus, in commit order.
    let a_bus = a.bus.clone();
    tokio::spawn(async move {
        while let Some(batch) = committed.recv().await {
            let events = batch.into_iter().map(RoomEvent::Publication).collect();
            a_bus.publish(events).await.unwrap();
        }
    });
    // A subscriber on node b.
    let outbox = Arc::new(Outbox::new(1 << 20));
    assert!(
        b.hub
            .subscribe("r", 1, outbox.clone(), crate::hub::SubMode::default())
            .new_room
    );
    b.bus.watch("r").await.unwrap();
    b.hub.activate("r", 1, Some(1));
    let mut seen = Vec::new();
    for n in 1..=50 {
        store.append(msg("r", n)).await.unwrap();
    }
    collect(&outbox, &mut seen, 50, Duration::from_secs(5)).await;
    // The broker drops every subscription; what is published meanwhile is lost on the
    // broker, and b reads it from the store once resubscribed.
    broker.sever();
    for n in 51..=80 {
        store.append(msg("r", n)).await.unwrap();
    }
    collect(&outbox, &mut seen, 80, Duration::from_secs(5)).await;
    assert_eq!(seen, (1..=80).collect::<Vec<_>>(), "once each, in order");
    // Both nodes know each other from heartbeats, and a's drain removes it at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.bus.nodes().await.len() < 2 {
        assert!(Instant::now() < deadline, "b hears a's heartbeat");
        sleep(Duration::from_millis(50)).await;
    }
    timeout(Duration::from_secs(5), a.bus.close())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    while b.bus.nodes().await.len() > 1 {
        assert!(
            Instant::now() < deadline,
            "b drops a on its leave announcement"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// A directory that names fixed nodes for each user.
struct Fixed(std::collections::HashMap<String, Vec<String>>);

#[async_trait::async_trait]
impl crate::personal::Directory for Fixed {
    async fn add(&self, _user: &str, _client: &str) {}
    async fn remove(&self, _user: &str, _client: &str) {}
    async fn lookup(
        &self,
        users: &[String],
    ) -> Result<Vec<crate::personal::UserEntry>, crate::personal::DirectoryError> {
        Ok(users
            .iter()
            .map(|u| crate::personal::UserEntry {
                nodes: self.0.get(u).cloned().unwrap_or_default(),
                last_seen_ms: None,
            })
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_channels_go_to_the_nodes_the_directory_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut committed) =
        SqliteStore::open(&dir.path().join("m.db"), Duration::from_secs(60)).unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let broker = MemoryBroker::new();
    let registry = Arc::new(LocalRegistry::default());
    let directory = Arc::new(Fixed(
        [("alice".to_owned(), vec!["a".to_owned(), "b".to_owned()])].into(),
    ));
    let personal = super::Personal {
        channels: crate::personal::PersonalChannels::new(""),
        directory,
    };
    let [a, b, c] =
        ["a", "b", "c"].map(|n| node_with(n, &broker, &registry, &store, Some(personal.clone())));
    // Each node's first resync (on subscribing to the broker) reads every watched room from
    // the store: it must be done before c watches #alice, or it hands c what was committed
    // meanwhile (rightly: a resync fills from the store whatever routed it here).
    for n in [&a, &b, &c] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while n.bus.nodes().await[0].bus_resyncs == 0 {
            assert!(Instant::now() < deadline, "no first resync");
            sleep(Duration::from_millis(5)).await;
        }
    }
    let a_bus = a.bus.clone();
    tokio::spawn(async move {
        while let Some(batch) = committed.recv().await {
            let events = batch.into_iter().map(RoomEvent::Publication).collect();
            a_bus.publish(events).await.unwrap();
        }
    });
    // Subscribers of #alice on b (named by the directory) and on c (not named).
    let mut outboxes = Vec::new();
    for n in [&b, &c] {
        let outbox = Arc::new(Outbox::new(1 << 20));
        n.hub
            .subscribe("#alice", 1, outbox.clone(), crate::hub::SubMode::default());
        n.bus.watch("#alice").await.unwrap();
        n.hub.activate("#alice", 1, Some(1));
        outboxes.push(outbox);
    }
    for n in 1..=30 {
        store.append(msg("#alice", n)).await.unwrap();
    }
    let mut seen = Vec::new();
    collect(&outboxes[0], &mut seen, 30, Duration::from_secs(5)).await;
    assert_eq!(seen, (1..=30).collect::<Vec<_>>(), "once each, in order");
    // c is not in the directory: nothing reached it (no room channel carries #alice).
    sleep(Duration::from_millis(300)).await;
    let mut on_c = Vec::new();
    offsets(&outboxes[1], &mut on_c);
    assert!(on_c.is_empty(), "c got {on_c:?}");
}
