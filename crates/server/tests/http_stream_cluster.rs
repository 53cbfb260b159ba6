//! HTTP-streaming and SSE in a cluster (issue 13): emulation requests are served only by the
//! node of their stream, so the deploy/ nginx example (ip_hash) must send a client's stream and
//! its emulation requests to one node and pass the stream unbuffered. Real `roomcast serve`
//! processes on a private Redis and PostgreSQL, the example nginx config with its ports
//! replaced, raw HTTP clients.

mod stream_client;

use roomcast_testkit::*;
use serde_json::json;
use stream_client::{emulate, Kind, Stream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_their_emulation_through_the_sticky_nginx_example() {
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

    for (i, kind) in [Kind::Lines, Kind::Sse].into_iter().enumerate() {
        let room = format!("lb{i}");
        let (mut c, _) = Stream::connect(lb_addr, kind, "lb-user", json!({})).await;
        // Every command goes through the balancer too, to the node of the stream.
        for _ in 0..5 {
            let r = c.call(json!({"ping": {}})).await;
            assert!(r.get("ping").is_some(), "{r}");
        }
        let r = c
            .call(json!({"subscribe": {"channel": room, "recover": true}}))
            .await;
        assert!(r.get("error").is_none(), "{r}");
        // Publications made on every node reach the stream, one by one, through nginx
        // (unbuffered: each arrives before the next is published).
        for (j, n) in nodes.iter().enumerate() {
            n.publish(&room, json!({"n": j})).await;
            assert_eq!(c.next_pub(&room).await["data"]["n"], j);
        }
        // Sent straight to each node: the one holding the stream takes it (204), the
        // others answer 404 (on which the SDK reconnects).
        let mut statuses = Vec::new();
        for n in &nodes {
            let body = json!({"session": c.session, "node": c.node, "data": "{}"}).to_string();
            statuses.push(emulate(n.addr, "application/json", body.into_bytes()).await);
        }
        statuses.sort_unstable();
        assert_eq!(statuses, vec![204, 404, 404]);
    }
    drop(nodes);
}
