//! `/metrics` after a scripted session, read with a Prometheus text parser
//! (`prometheus-parse`): every counter has the exact value the script implies. The node
//! is its own process (metrics are per process).

use std::collections::HashMap;
use std::time::Duration;

use roomcast_testkit::*;
use serde_json::json;

/// The exposition, parsed: sample name + sorted labels -> value.
async fn scrape(node: &Node) -> HashMap<String, f64> {
    let (status, text) = get(node.addr, "/metrics", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let mut out = HashMap::new();
    for s in parsed.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let key = if labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, labels.join(","))
        };
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                // Keyed `<name>_bucket`: the +Inf bucket's count.
                let all = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
                out.insert(format!("{}_bucket", s.metric), all);
                continue;
            }
            _ => continue,
        };
        out.insert(key, v);
    }
    out
}

fn check(m: &HashMap<String, f64>, want: &[(&str, f64)]) {
    for (k, v) in want {
        assert_eq!(m.get(*k).copied(), Some(*v), "{k} (scrape: {m:?})");
    }
}

#[tokio::test]
async fn metrics_count_a_scripted_session_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("roomcast.toml");
    // A small outbox so that one reader that stops reading is closed as slow.
    std::fs::write(&conf, "outbox_max_bytes = 65536\n").unwrap();
    let node = Node::builder().arg("--config").arg(&conf).start();

    // alice: connect, subscribe, publish (delivered to herself), a refused subscribe.
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    let sub = alice.subscribe("room").await;
    let epoch = sub["subscribe"]["epoch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = alice
        .call(json!({"publish": {"channel": "room", "data": {"n": 1}}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    alice.next_pub("room").await;
    let r = alice
        .call(json!({"subscribe": {"channel": "nope:x"}}))
        .await;
    assert_eq!(error_code(&r), Some(102), "{r}");
    alice.close().await;

    // mallory: a forged token, refused with 3500.
    let forged = {
        let mut parts: Vec<String> = token("mallory").split('.').map(str::to_owned).collect();
        parts[2] = "c2lnbmF0dXJl".into();
        parts.join(".")
    };
    let mut mallory = Client::open(&node.ws_url()).await;
    mallory.send(json!({"connect": {"token": forged}})).await;
    assert_eq!(mallory.closed_code().await, Some(3500));
    drop(mallory);

    // bob: recovers alice's publication from the start of the room.
    let mut bob = Client::connect(&node.ws_url(), "bob").await;
    let r = bob
        .call(
            json!({"subscribe": {"channel": "room", "recover": true, "offset": 0, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    bob.close().await;

    let m = settled(
        &node,
        &[
            ("roomcast_connects_total", 2.0),
            ("roomcast_commands_total{method=connect}", 3.0),
            ("roomcast_commands_total{method=subscribe}", 3.0),
            ("roomcast_commands_total{method=publish}", 1.0),
            ("roomcast_command_errors_total{code=102}", 1.0),
            ("roomcast_token_refusals_total", 1.0),
            ("roomcast_disconnects_total{code=3500}", 1.0),
            ("roomcast_disconnects_total{code=1000}", 2.0),
            ("roomcast_publications_total", 1.0),
            ("roomcast_deliveries_total", 1.0),
            ("roomcast_recoveries_total{outcome=recovered}", 1.0),
            ("roomcast_recovered_publications_total", 1.0),
            ("roomcast_store_commit_seconds_count", 1.0),
            ("roomcast_store_commit_batch_sum", 1.0),
            ("roomcast_subscriptions", 0.0),
            ("roomcast_connections", 0.0),
            ("roomcast_slow_closes_total", 0.0),
        ],
    )
    .await;
    assert!(m["process_resident_memory_bytes"] > 0.0);
    // Every series the Grafana dashboard queries exists.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/roomcast.json"
    ))
    .unwrap();
    let mut queried: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("roomcast_") || w.starts_with("process_"))
        .collect();
    queried.sort_unstable();
    queried.dedup();
    for name in queried {
        assert!(
            m.keys()
                .any(|k| k == name || k.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
    assert!(m["process_open_fds"] > 0.0);

    // carol stops reading while 200 publications of 32 KiB flood her room: closed as
    // slow once her socket buffers and the 64 KiB outbox are full.
    let mut carol = Client::connect(&node.ws_url(), "carol").await;
    carol.subscribe("flood").await;
    let big = "x".repeat(32 << 10);
    for i in 0..200 {
        node.publish("flood", json!({"i": i, "pad": big})).await;
    }
    assert_eq!(carol.closed_code().await, Some(3008));
    drop(carol);
    settled(
        &node,
        &[
            ("roomcast_slow_closes_total", 1.0),
            ("roomcast_disconnects_total{code=3008}", 1.0),
            ("roomcast_connects_total", 3.0),
            ("roomcast_publications_total", 201.0),
        ],
    )
    .await;
}

/// Scrapes until every value in `want` holds (a disconnect is counted when its task ends,
/// just after the client saw the close), at most 10 s; then checks them.
async fn settled(node: &Node, want: &[(&str, f64)]) -> HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(node).await;
        let done = want.iter().all(|(k, v)| m.get(*k) == Some(v));
        if done || tokio::time::Instant::now() > deadline {
            check(&m, want);
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `metrics = false`: `/metrics` is not served (404) and the node works as before.
#[tokio::test]
async fn metrics_off_is_not_served_and_the_node_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("roomcast.toml");
    std::fs::write(&conf, "metrics = false\n").unwrap();
    let node = Node::builder().arg("--config").arg(&conf).start();
    let (status, _) = get(node.addr, "/metrics", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let mut alice = Client::connect(&node.ws_url(), "alice").await;
    alice.subscribe("room").await;
    let r = alice
        .call(json!({"publish": {"channel": "room", "data": {"n": 1}}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    alice.next_pub("room").await;
    let (status, _) = get(node.addr, "/health", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status, 200);
}
