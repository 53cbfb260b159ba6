//! One behaviour suite for every `Broker` (the seam of `bus/broker.rs`), stamped out as
//! one test per backend by `broker_conformance!` (in-process in `bus/memory.rs`; Redis,
//! Redis Cluster and NATS in `tests/cluster.rs` against real servers).
//!
//! What every broker must do: deliver each channel's envelopes in publish order, to every
//! subscription of that channel, byte for byte; deliver nothing of a channel not (or no
//! longer) subscribed; keep room names that differ apart, whatever bytes they hold; carry
//! the node and control channels like rooms; take a full batch in one call.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;

use super::broker::{Broker, Channel, Outgoing, Subscription};

/// How long one expected envelope may take.
const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for an envelope that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// Stamps one `#[tokio::test]` running the whole suite against the broker `$make`
/// builds: an async block returning `(Arc<dyn Broker>, guard)`, the guard kept alive
/// (a server process) until the suite ends.
#[macro_export]
macro_rules! broker_conformance {
    ($name:ident, $make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (broker, _guard) = $make.await;
            $crate::bus::conformance::run_all(&*broker).await;
        }
    };
}

/// Every check, in turn, each on its own channels.
pub async fn run_all(broker: &dyn Broker) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    in_order_per_channel(broker, &format!("order-{run}")).await;
    only_subscribed_channels_arrive(broker, &format!("only-{run}")).await;
    room_names_with_any_bytes_stay_apart(broker, &run).await;
    every_subscription_gets_everything(broker, &format!("fan-{run}")).await;
    node_and_control_channels(broker, &run).await;
}

fn room(name: &str) -> Channel {
    Channel::Room(name.into())
}

fn out(channel: &Channel, payload: impl Into<Vec<u8>>) -> Outgoing {
    Outgoing {
        channel: channel.clone(),
        payload: payload.into(),
    }
}

async fn open(broker: &dyn Broker, channels: &[Channel]) -> Box<dyn Subscription> {
    let mut sub = timeout(WAIT, broker.subscription())
        .await
        .expect("subscription opened in time")
        .expect("subscription opened");
    timeout(WAIT, sub.subscribe(channels))
        .await
        .expect("subscribed in time")
        .expect("subscribed");
    sub
}

async fn publish(broker: &dyn Broker, batch: &[Outgoing]) {
    timeout(WAIT, broker.publish(batch))
        .await
        .expect("published in time")
        .expect("published");
}

async fn recv(sub: &mut dyn Subscription) -> Vec<u8> {
    timeout(WAIT, sub.next())
        .await
        .expect("an envelope arrived in time")
        .expect("the subscription is alive")
}

async fn nothing_more(sub: &mut dyn Subscription, what: &str) {
    if let Ok(Some(p)) = timeout(QUIET, sub.next()).await {
        panic!("{what}: unexpected {:?}", String::from_utf8_lossy(&p));
    }
}

/// A batch of 512, then 488 one by one: all arrive, in order.
pub async fn in_order_per_channel(broker: &dyn Broker, name: &str) {
    let ch = room(name);
    let mut sub = open(broker, std::slice::from_ref(&ch)).await;
    let batch: Vec<Outgoing> = (0..512).map(|i| out(&ch, format!("{i}"))).collect();
    publish(broker, &batch).await;
    for i in 512..1000 {
        publish(broker, &[out(&ch, format!("{i}"))]).await;
    }
    for i in 0..1000 {
        assert_eq!(
            recv(sub.as_mut()).await,
            format!("{i}").into_bytes(),
            "in order"
        );
    }
    nothing_more(sub.as_mut(), "exactly once").await;
}

/// A channel never subscribed, or unsubscribed, delivers nothing.
pub async fn only_subscribed_channels_arrive(broker: &dyn Broker, name: &str) {
    let (a, b) = (room(&format!("{name}-a")), room(&format!("{name}-b")));
    let mut sub = open(broker, std::slice::from_ref(&a)).await;
    publish(broker, &[out(&b, "b1"), out(&a, "a1")]).await;
    assert_eq!(recv(sub.as_mut()).await, b"a1");
    nothing_more(sub.as_mut(), "not subscribed").await;
    timeout(WAIT, sub.subscribe(std::slice::from_ref(&b)))
        .await
        .expect("in time")
        .expect("subscribed");
    timeout(WAIT, sub.unsubscribe(std::slice::from_ref(&a)))
        .await
        .expect("in time")
        .expect("unsubscribed");
    publish(broker, &[out(&a, "a2")]).await;
    publish(broker, &[out(&b, "b2")]).await;
    assert_eq!(recv(sub.as_mut()).await, b"b2");
    nothing_more(sub.as_mut(), "unsubscribed").await;
}

/// Rooms whose names hold separators, wildcards, escapes, spaces or UTF-8 are distinct
/// channels; payloads arrive byte for byte.
pub async fn room_names_with_any_bytes_stay_apart(broker: &dyn Broker, run: &str) {
    let names = ["a.b", "a%2Eb", "a b", "a*", "a>", "é:ü", "a_b", "a-b"];
    let channels: Vec<Channel> = names.iter().map(|n| room(&format!("{run}{n}"))).collect();
    let mut subs = Vec::new();
    for ch in &channels {
        subs.push(open(broker, std::slice::from_ref(ch)).await);
    }
    let payload = |i: usize| {
        let mut p = format!("{{\"room\":{i},\"bytes\":\"").into_bytes();
        p.extend_from_slice(&[0xe2, 0x82, 0xac, b'\\', b'"', 0x7f]);
        p.extend_from_slice(b"\"}");
        p
    };
    let batch: Vec<Outgoing> = channels
        .iter()
        .enumerate()
        .map(|(i, ch)| out(ch, payload(i)))
        .collect();
    publish(broker, &batch).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        assert_eq!(recv(sub.as_mut()).await, payload(i), "room {:?}", names[i]);
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        nothing_more(sub.as_mut(), names[i]).await;
    }
}

/// Two subscriptions of one channel (two nodes) both get everything, in order.
pub async fn every_subscription_gets_everything(broker: &dyn Broker, name: &str) {
    let ch = room(name);
    let mut one = open(broker, std::slice::from_ref(&ch)).await;
    let mut two = open(broker, std::slice::from_ref(&ch)).await;
    let batch: Vec<Outgoing> = (0..100).map(|i| out(&ch, format!("{i}"))).collect();
    publish(broker, &batch).await;
    for i in 0..100 {
        let want = format!("{i}").into_bytes();
        assert_eq!(recv(one.as_mut()).await, want);
        assert_eq!(recv(two.as_mut()).await, want);
    }
}

/// A node's channel reaches that node only; the control channel reaches every node.
pub async fn node_and_control_channels(broker: &dyn Broker, run: &str) {
    let (n1, n2): (Arc<str>, Arc<str>) = (format!("{run}-n1").into(), format!("{run}-n2").into());
    let mut one = open(broker, &[Channel::Node(n1.clone()), Channel::Control]).await;
    let mut two = open(broker, &[Channel::Node(n2.clone()), Channel::Control]).await;
    let control = format!("control {run}");
    publish(
        broker,
        &[
            out(&Channel::Node(n1), "to one"),
            out(&Channel::Node(n2), "to two"),
        ],
    )
    .await;
    assert_eq!(recv(one.as_mut()).await, b"to one");
    assert_eq!(recv(two.as_mut()).await, b"to two");
    publish(broker, &[out(&Channel::Control, control.clone())]).await;
    // Other suites' control traffic may share the channel: skip what is not ours.
    for sub in [&mut one, &mut two] {
        loop {
            if recv(sub.as_mut()).await == control.as_bytes() {
                break;
            }
        }
    }
    nothing_more(one.as_mut(), "node channel").await;
}
