//! The embedded web pages over real sockets: `/` and `/admin` and their assets with their
//! types and headers, off with `web_pages = false`; `POST /page/login` signing a name only
//! in insecure mode, with every malformed body refused; the `connections` API method the
//! admin page looks users up with, on one node and across two nodes on a real Redis (the
//! user directory names both). (The pages' behaviour in a browser: interop/browser.)

use std::net::SocketAddr;

use roomcast_testkit::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request on a fresh connection: the status, the head and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    };
    let text = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("answered");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn pages_are_served_with_their_types_and_can_be_turned_off() {
    let s = TestServer::start().await;
    for (path, kind, needle) in [
        ("/", "text/html", "roomcast chat"),
        ("/chat.js", "text/javascript", "/connection/websocket"),
        ("/admin", "text/html", "roomcast admin"),
        ("/admin.js", "text/javascript", "/api/"),
        ("/dom.js", "text/javascript", "textContent"),
        ("/page.css", "text/css", "#messages"),
        ("/favicon.ico", "image/svg+xml", "<svg"),
    ] {
        let (status, head, body) = http(s.addr, "GET", path, "").await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{path}");
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{path}"
        );
        assert!(body.contains(needle), "{path} lacks {needle:?}");
    }
    // The API, health and WebSocket routes are still there beside them.
    assert_eq!(http(s.addr, "GET", "/health", "").await.0, 200);
    assert_eq!(http(s.addr, "GET", "/nope", "").await.0, 404);
    s.stop().await;

    let off = TestServer::start_with(|c| c.web_pages = false).await;
    for path in [
        "/",
        "/admin",
        "/chat.js",
        "/admin.js",
        "/dom.js",
        "/page.css",
    ] {
        assert_eq!(http(off.addr, "GET", path, "").await.0, 404, "{path}");
    }
    let (status, _, _) = http(off.addr, "POST", "/page/login", r#"{"user":"a"}"#).await;
    assert_eq!(status, 404);
    assert_eq!(http(off.addr, "GET", "/health", "").await.0, 200);
    off.stop().await;
}

#[tokio::test]
async fn page_login_signs_a_name_only_in_insecure_mode() {
    let secure = TestServer::start().await;
    let (status, _, body) = http(secure.addr, "POST", "/page/login", r#"{"user":"mallory"}"#).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("insecure"), "{body}");
    secure.stop().await;

    let s = TestServer::start_with(|c| c.insecure = true).await;
    let (status, _, body) = http(s.addr, "POST", "/page/login", r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["ttl"], 3600);
    // The token is a real connection token of alice's: connect, then alice's own rpc.
    let mut c = Client::open(&s.ws_url()).await;
    let reply = c.call(json!({"connect": {"token": v["token"]}})).await;
    assert!(reply["connect"]["client"].is_string(), "{reply}");
    let rooms = c
        .call(json!({"rpc": {"method": "roomcast.rooms", "data": {}}}))
        .await;
    assert_eq!(rooms["rpc"]["data"]["total_unread"], 0, "{rooms}");
    let conns = s.api("connections", json!({"user": "alice"})).await;
    assert_eq!(conns["result"]["connections"].as_array().unwrap().len(), 1);

    let long = "a".repeat(300);
    let huge = format!(r#"{{"user":"{}"}}"#, "b".repeat(2000));
    for (body, want) in [
        ("", 400),
        ("not json", 400),
        (r#"{"user":""}"#, 400),
        (r#"{"user":"a,b"}"#, 400),
        (r#"{"user":"a\u0007"}"#, 400),
        (r#"{"user":5}"#, 400),
        (r#"{"user":"a","admin":true}"#, 400),
        (&format!(r#"{{"user":"{long}"}}"#), 400),
        (&huge, 413),
    ] {
        let (status, _, answer) = http(s.addr, "POST", "/page/login", body).await;
        assert_eq!(status, want, "{body:.40}: {answer}");
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert!(v["error"].is_string(), "{answer}");
    }
    assert_eq!(http(s.addr, "GET", "/page/login", "").await.0, 405);
    s.stop().await;
}

#[tokio::test]
async fn connections_lists_a_users_clients_for_the_admin_page() {
    let s = TestServer::start().await;
    let empty = s.api("connections", json!({"user": "alice"})).await;
    assert_eq!(
        empty["result"],
        json!({"user": "alice", "nodes": [], "connections": []})
    );

    let mut a1 = s.client("alice").await;
    let mut a2 = s.client("alice").await;
    let _bob = s.client("bob").await;
    let v = s.api("connections", json!({"user": "alice"})).await;
    let r = &v["result"];
    let node = r["nodes"][0].as_str().unwrap().to_owned();
    assert_eq!(r["nodes"].as_array().unwrap().len(), 1, "{v}");
    let conns = r["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "{v}");
    let info = s.api("info", json!({})).await;
    assert_eq!(info["result"]["nodes"][0]["uid"], node.as_str());
    for c in conns {
        assert_eq!(c["node"], node.as_str());
        assert!(c["queued_bytes"].is_u64());
    }

    // Disconnecting one client (as the admin page's button does) leaves the other.
    let first = conns[0]["client"].as_str().unwrap().to_owned();
    s.api("disconnect", json!({"user": "alice", "client": first}))
        .await;
    let (_closed, _open) = if closed_soon(&mut a1).await {
        (a1, a2)
    } else {
        assert!(closed_soon(&mut a2).await, "neither connection was closed");
        (a2, a1)
    };
    eventually(WAIT, "one connection of alice left", async || {
        let v = s.api("connections", json!({"user": "alice"})).await;
        let left = v["result"]["connections"].as_array().unwrap().clone();
        left.len() == 1 && left[0]["client"] != first.as_str()
    })
    .await;

    for body in [json!({"user": ""}), json!({"user": "a,b"})] {
        let v = s.api("connections", body.clone()).await;
        assert_eq!(v["error"]["code"], 107, "{body}: {v}");
    }
    for body in ["{}", r#"{"user": 1}"#] {
        let (status, v) = api_raw(s.addr, "connections", Some(API_KEY), body).await;
        assert_eq!(status, 400, "{body}: {v}");
    }
    // Unknown fields are ignored, as by every server API method (Centrifugo's API grows).
    let (status, v) = api_raw(
        s.addr,
        "connections",
        Some(API_KEY),
        r#"{"user": "a", "extra": 1}"#,
    )
    .await;
    assert_eq!((status, &v["result"]["user"]), (200, &json!("a")), "{v}");
    let (status, _) = api_raw(s.addr, "connections", None, r#"{"user":"alice"}"#).await;
    assert_eq!(status, 401);
    s.stop().await;
}

/// Whether the server closes `c` within a second (it says 3503, force disconnect).
async fn closed_soon(c: &mut Client) -> bool {
    match tokio::time::timeout(std::time::Duration::from_secs(1), c.closed_code()).await {
        Ok(code) => {
            assert_eq!(code, Some(3503));
            true
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn connections_names_every_node_of_the_user_in_a_cluster() {
    // Two nodes on one real Redis (bus, presence, user directory).
    let redis = Redis::start();
    let url = redis.url();
    let a = TestServer::start_with(|c| c.redis_url = Some(url.clone())).await;
    let b = TestServer::start_with(|c| c.redis_url = Some(url.clone())).await;
    for s in [&a, &b] {
        let v = s.api("connections", json!({"user": "nobody"})).await;
        assert_eq!(v["result"]["nodes"], json!([]), "{v}");
    }
    let _on_a = a.client("alice").await;
    let _on_b = b.client("alice").await;
    let mut ids = Vec::new();
    for s in [&a, &b] {
        let v = s.api("connections", json!({"user": "alice"})).await;
        let conns = v["result"]["connections"].as_array().unwrap().clone();
        assert_eq!(conns.len(), 1, "each node lists its own connection: {v}");
        ids.push(conns[0]["node"].as_str().unwrap().to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    let mut both = ids.clone();
    both.sort();
    for s in [&a, &b] {
        let v = s.api("connections", json!({"user": "alice"})).await;
        assert_eq!(v["result"]["nodes"], json!(both), "{v}");
    }
    // The admin page's "disconnect all" goes through the bus to every node.
    a.api("disconnect", json!({"user": "alice"})).await;
    eventually(WAIT, "alice gone from both nodes", async || {
        let v = b.api("connections", json!({"user": "alice"})).await;
        v["result"]["nodes"] == json!([]) && v["result"]["connections"] == json!([])
    })
    .await;
    a.stop().await;
    b.stop().await;
}
