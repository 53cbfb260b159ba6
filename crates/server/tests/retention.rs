//! Retention, ephemeral namespaces, deleted publications and `history_remove`, over real
//! sockets: what history and recovery answer once publications are trimmed, deleted or
//! cleared, and that ephemeral publications are live only.

use std::time::Duration;

use roomcast::config::NamespaceOptions;
use roomcast_testkit::*;
use serde_json::{json, Value};

fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array()
        .map(|a| a.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

fn namespace(tune: impl FnOnce(&mut NamespaceOptions)) -> NamespaceOptions {
    let mut ns = NamespaceOptions::default();
    tune(&mut ns);
    ns
}

async fn history(c: &mut Client, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut req = json!({"channel": channel, "limit": 100});
    if let Some((offset, epoch)) = since {
        req["since"] = json!({"offset": offset, "epoch": epoch});
    }
    // History is for subscribers (the namespace default).
    c.call(json!({"subscribe": {"channel": channel}})).await;
    let r = c.call(json!({ "history": req })).await;
    c.call(json!({"unsubscribe": {"channel": channel}})).await;
    r
}

async fn recover(c: &mut Client, channel: &str, offset: u64, epoch: &str) -> Value {
    let r = c
        .call(json!({"subscribe": {"channel": channel, "recover": true, "offset": offset, "epoch": epoch}}))
        .await;
    c.call(json!({"unsubscribe": {"channel": channel}})).await;
    r["subscribe"].clone()
}

/// `history_size = 3`: history holds the newest three; a position whose next publication
/// was trimmed is not recovered (the client must reload), a position inside what is kept
/// is; history `since` a trimmed position answers what is kept (as Centrifugo), another
/// epoch is error 112.
#[tokio::test]
async fn history_size_trims_and_positions_behind_it_are_unrecoverable() {
    let s = TestServer::start_with(|c| {
        c.namespaces
            .insert("short".into(), namespace(|n| n.history_size = 3));
    })
    .await;
    for i in 1..=6 {
        s.publish("short:r", json!({ "n": i })).await;
    }
    let mut c = s.client("alice").await;
    let r = history(&mut c, "short:r", None).await;
    assert_eq!(offsets(&r["history"]["publications"]), [4, 5, 6], "{r}");
    assert_eq!(r["history"]["offset"], 6);
    let epoch = r["history"]["epoch"].as_str().unwrap().to_owned();

    let behind = recover(&mut c, "short:r", 1, &epoch).await;
    assert_eq!(behind["was_recovering"], true, "{behind}");
    assert_eq!(behind.get("recovered"), None, "2 and 3 are gone: {behind}");
    assert_eq!(behind.get("publications"), None);
    assert_eq!(behind["offset"], 6);

    let inside = recover(&mut c, "short:r", 3, &epoch).await;
    assert_eq!(inside["recovered"], true, "{inside}");
    assert_eq!(offsets(&inside["publications"]), [4, 5, 6]);

    let since = history(&mut c, "short:r", Some((1, &epoch))).await;
    assert_eq!(
        offsets(&since["history"]["publications"]),
        [4, 5, 6],
        "{since}"
    );
    let other = history(&mut c, "short:r", Some((1, "another"))).await;
    assert_eq!(error_code(&other), Some(112), "{other}");

    // The default namespace keeps everything.
    for i in 1..=6 {
        s.publish("lobby", json!(i)).await;
    }
    let r = history(&mut c, "lobby", None).await;
    assert_eq!(offsets(&r["history"]["publications"]), [1, 2, 3, 4, 5, 6]);
}

/// `history_ttl`: once publications are older than it, history is empty though the
/// position stays, a client behind it is not recovered, a client at the top is, and the
/// next publication takes the next offset.
#[tokio::test]
async fn history_ttl_expires_publications_but_not_the_position() {
    let s = TestServer::start_with(|c| {
        c.namespaces
            .insert("brief".into(), namespace(|n| n.history_ttl = 400));
    })
    .await;
    for i in 1..=2 {
        s.publish("brief:r", json!(i)).await;
    }
    let mut c = s.client("alice").await;
    let r = history(&mut c, "brief:r", None).await;
    assert_eq!(offsets(&r["history"]["publications"]), [1, 2]);
    let epoch = r["history"]["epoch"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = history(&mut c, "brief:r", None).await;
    assert!(
        offsets(&r["history"]["publications"]).is_empty(),
        "expired: {r}"
    );
    assert_eq!(r["history"]["offset"], 2);
    let behind = recover(&mut c, "brief:r", 1, &epoch).await;
    assert_eq!(behind.get("recovered"), None, "{behind}");
    let top = recover(&mut c, "brief:r", 2, &epoch).await;
    assert_eq!(top["recovered"], true, "nothing missed: {top}");
    assert_eq!(s.publish("brief:r", json!(3)).await, 3);
    let r = history(&mut c, "brief:r", None).await;
    assert_eq!(offsets(&r["history"]["publications"]), [3]);
}
