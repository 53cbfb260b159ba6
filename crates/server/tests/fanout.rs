//! Fan-out on every core, over real WebSockets: a room above `fanout_parallel_above` is
//! written out by all the node's worker threads (lanes), and every subscriber still gets
//! every publication exactly once and in offset order while several publishers publish to
//! the room at once.

use roomcast_testkit::*;
use serde_json::json;

const SUBSCRIBERS: usize = 40;
const PUBLISHERS: u64 = 4;
const EACH: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_fanned_out_on_every_core_keeps_each_connections_order_exactly_once() {
    let s = TestServer::start_with(|c| c.fanout_parallel_above = 4).await;
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = s.client(&format!("u{i}")).await;
        let r = c.subscribe("big").await;
        assert!(r["epoch"].is_string(), "{r}");
        subs.push(c);
    }
    // Publishers at once: publications of the room are in the lanes together.
    let addr = s.addr;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            tokio::spawn(async move {
                for i in 0..EACH {
                    publish(addr, "big", json!({"p": p, "i": i})).await;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let total = PUBLISHERS * EACH;
    let want: Vec<u64> = (1..=total).collect();
    for (n, c) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..total {
            let p = c.next_pub("big").await;
            got.push(p["offset"].as_u64().unwrap());
        }
        assert_eq!(got, want, "subscriber {n}: every offset once, in order");
    }
    // Nothing more: a publication after the burst is the very next push.
    s.publish("big", json!("last")).await;
    for c in &mut subs {
        let p = c.next_pub("big").await;
        assert_eq!(p["offset"], total + 1, "no duplicate before it");
    }
}
