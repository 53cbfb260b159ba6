//! Logs as an operator reads them: `--log-format json` gives one JSON object per line;
//! each connection's connect and disconnect is one `info` line with its client id, user
//! and close code; a bad token is logged with its reason; no secret, API key or token is
//! ever written.

use std::time::Duration;

use roomcast_testkit::*;
use serde_json::{json, Value};

/// The node's log lines so far (waits a moment for stderr to be read).
fn lines(
    node: &Node,
    within: Duration,
    until: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, Vec<String>) {
    let deadline = std::time::Instant::now() + within;
    let mut parsed = Vec::new();
    let mut raw = Vec::new();
    while std::time::Instant::now() < deadline && !until(&parsed) {
        if let Ok(line) = node.logs().recv_timeout(Duration::from_millis(100)) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            parsed.push(v);
            raw.push(line);
        }
    }
    (parsed, raw)
}

fn find<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["message"] == message).collect()
}

#[tokio::test]
async fn json_logs_carry_the_connection_lifecycle_and_no_secret() {
    let node = Node::builder().arg("--log-format").arg("json").start();
    let alice_token = token("alice");
    let alice = Client::connect(&node.ws_url(), "alice").await;
    alice.close().await;

    // A token signed with another secret: refused with 3500, logged with its reason.
    let forged = {
        let mut parts: Vec<String> = token("mallory").split('.').map(str::to_owned).collect();
        parts[2] = "c2lnbmF0dXJl".into();
        parts.join(".")
    };
    let mut mallory = Client::open(&node.ws_url()).await;
    mallory.send(json!({"connect": {"token": forged}})).await;
    assert_eq!(mallory.closed_code().await, Some(3500));

    let (logs, raw) = lines(&node, Duration::from_secs(20), |l| {
        !find(l, "disconnected").is_empty()
            && !find(l, "connection refused: invalid token").is_empty()
    });
    let conn = find(&logs, "connected");
    assert_eq!(conn.len(), 1, "{logs:?}");
    assert_eq!(conn[0]["level"], "INFO");
    assert_eq!(conn[0]["user"], "alice");
    let client = conn[0]["client"].as_str().expect("client id").to_owned();
    let gone = find(&logs, "disconnected");
    assert_eq!(gone.len(), 1, "{logs:?}");
    assert_eq!(gone[0]["client"], client.as_str());
    assert_eq!(gone[0]["user"], "alice");
    // The client closed normally (1000 from the kit's close).
    assert_eq!(gone[0]["code"], 1000, "{:?}", gone[0]);
    let refused = find(&logs, "connection refused: invalid token");
    assert!(
        refused[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{refused:?}"
    );

    for line in &raw {
        for secret in [SECRET, API_KEY, alice_token.as_str(), forged.as_str()] {
            assert!(!line.contains(secret), "a secret in the log: {line}");
        }
    }
}
