//! HTTP-streaming and SSE transports with bidirectional emulation (issue 13), driven with
//! raw HTTP through hyper's client: the stream is a real chunked response read frame by
//! frame, the commands after the first go to `/emulation` as the SDKs send them. Covered:
//! connect (session and node in the reply), subscribe, publish, history, presence,
//! recovery after a stream ended with publications missed, protobuf over HTTP-streaming,
//! pings answered (and not answered) through emulation, a client that goes away, a client
//! that stops reading (slow, then dropped), and every refusal of the endpoints.

mod stream_client;

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use roomcast_proto::protobuf::wire;
use roomcast_testkit::*;
use serde_json::{json, Value};
use stream_client::{emulate, request, Kind, Stream};

async fn presence_len(s: &TestServer, room: &str) -> usize {
    let p = s.api("presence", json!({"channel": room})).await;
    p["result"]["presence"].as_object().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_publish_history_presence_over_http_stream_and_sse() {
    let s = TestServer::start().await;
    for (i, kind) in [Kind::Lines, Kind::Sse].into_iter().enumerate() {
        let room = format!("room{i}");
        let (mut c, connect) = Stream::connect(s.addr, kind, "alice", json!({})).await;
        assert!(!connect["client"].as_str().unwrap().is_empty());
        assert!(connect["ping"].as_u64().unwrap() > 0 && connect["pong"] == true);
        assert_eq!(c.session.len(), 36, "a uuid");

        let r = c
            .call(json!({"subscribe": {"channel": room, "recover": true}}))
            .await;
        assert!(r.get("error").is_none(), "{r}");
        let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_owned();

        // From the server API and from the client itself (through emulation).
        s.publish(&room, json!({"n": 1})).await;
        assert_eq!(c.next_pub(&room).await["data"], json!({"n": 1}));
        let r = c
            .call(json!({"publish": {"channel": room, "data": {"n": 2}}}))
            .await;
        assert!(r.get("error").is_none(), "{r}");
        let p = c.next_pub(&room).await;
        assert_eq!(
            (p["data"].clone(), p["offset"].as_u64()),
            (json!({"n": 2}), Some(2))
        );

        if kind == Kind::Sse {
            // Data as the client wrote it, line breaks and all: one event, its lines in
            // data fields.
            let raw = format!(
                "{{\"id\":60,\"publish\":{{\"channel\":\"{room}\",\"data\":{{\"n\":\r\n3}}}}}}"
            );
            assert_eq!(c.send(&raw).await, 204);
            assert_eq!(c.next_pub(&room).await["data"], json!({"n": 3}));
        }
        let h = c
            .call(json!({"history": {"channel": room, "limit": 10}}))
            .await;
        let want = if kind == Kind::Sse { 3 } else { 2 };
        assert_eq!(h["history"]["publications"].as_array().unwrap().len(), want);
        assert_eq!(h["history"]["epoch"], epoch.as_str());
        let p = c.call(json!({"presence": {"channel": room}})).await;
        assert_eq!(p["presence"]["presence"].as_object().unwrap().len(), 1);
        let p = c.call(json!({"presence_stats": {"channel": room}})).await;
        assert_eq!(p["presence_stats"]["num_users"], 1);
        // Several commands in one emulation request, replies in order.
        let two = format!(
            "{}\n{}",
            json!({"id": 7, "ping": {}}),
            json!({"id": 8, "unsubscribe": {"channel": room}})
        );
        assert_eq!(c.send(&two).await, 204);
        assert!(c.reply(7).await.get("ping").is_some());
        assert!(c.reply(8).await.get("unsubscribe").is_some());
        assert_eq!(presence_len(&s, &room).await, 0);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_recovers_what_the_last_one_missed() {
    let s = TestServer::start().await;
    for kind in [Kind::Lines, Kind::Sse] {
        let room = format!("rec{}", kind as u8);
        let (mut c, _) = Stream::connect(s.addr, kind, "bob", json!({})).await;
        let r = c
            .call(json!({"subscribe": {"channel": room, "recover": true}}))
            .await;
        let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_owned();
        s.publish(&room, json!({"n": 1})).await;
        let offset = c.next_pub(&room).await["offset"].as_u64().unwrap();
        drop(c);
        // The stream is gone: the session left the room.
        eventually(WAIT, "the session left the room", || async {
            presence_len(&s, &room).await == 0
        })
        .await;
        for n in 2..=4 {
            s.publish(&room, json!({"n": n})).await;
        }
        // Recovery in the subscribe, as an SDK does after a reconnect.
        let (mut c, _) = Stream::connect(s.addr, kind, "bob", json!({})).await;
        let r = c
            .call(json!({"subscribe": {"channel": room, "recover": true, "offset": offset, "epoch": epoch}}))
            .await;
        assert_eq!(r["subscribe"]["recovered"], true, "{r}");
        let pubs = r["subscribe"]["publications"].as_array().unwrap();
        let got: Vec<_> = pubs
            .iter()
            .map(|p| p["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(got, vec![2, 3, 4]);
        // Live publications follow the recovered ones.
        s.publish(&room, json!({"n": 5})).await;
        assert_eq!(c.next_pub(&room).await["data"]["n"], 5);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_over_http_stream() {
    let s = TestServer::start().await;
    let connect = wire::Command {
        id: 1,
        connect: Some(wire::ConnectRequest {
            token: token("carol"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (status, mut c) = Stream::open(
        s.addr,
        Kind::Protobuf,
        connect.encode_length_delimited_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let r = c.next_pb().await.unwrap();
    let result = r.connect.expect("connect result");
    assert_eq!(result.session.len(), 36);
    let subscribe = wire::Command {
        id: 2,
        subscribe: Some(wire::SubscribeRequest {
            channel: "pb".into(),
            recover: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let body = wire::EmulationRequest {
        node: result.node.clone(),
        session: result.session.clone(),
        data: subscribe.encode_length_delimited_to_vec(),
    };
    assert_eq!(
        emulate(s.addr, "application/octet-stream", body.encode_to_vec()).await,
        204
    );
    let r = c.next_pb().await.unwrap();
    assert_eq!(r.id, 2);
    assert!(r.subscribe.is_some() && r.error.is_none());
    s.publish("pb", json!({"text": "hi"})).await;
    let push = loop {
        let r = c.next_pb().await.unwrap();
        if let Some(p) = r.push {
            if p.r#pub.is_some() {
                break p;
            }
        }
    };
    let p = push.r#pub.unwrap();
    assert_eq!(push.channel, "pb");
    assert_eq!(
        serde_json::from_slice::<Value>(&p.data).unwrap(),
        json!({"text": "hi"})
    );
    // A JSON emulation request for a protobuf stream is a bad request: disconnect 3501.
    let json_body = json!({"session": result.session, "node": result.node, "data": "{}"});
    assert_eq!(
        emulate(s.addr, "application/json", json_body.to_string().into()).await,
        204
    );
    let end = loop {
        let Some(r) = c.next_pb().await else {
            panic!("stream ended without a disconnect push")
        };
        if let Some(d) = r.push.and_then(|p| p.disconnect) {
            break d;
        }
    };
    assert_eq!((end.code, end.reconnect), (3501, false));
    assert!(
        c.next_pb().await.is_none(),
        "the stream ends after the disconnect"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_through_emulation_or_the_stream_ends_with_no_pong() {
    let s = TestServer::start_with(|c| {
        c.ping_interval_secs = 2;
        c.pong_timeout_secs = 1;
    })
    .await;
    let (mut alive, _) = Stream::connect(s.addr, Kind::Lines, "dave", json!({})).await;
    let (mut silent, _) = Stream::connect(s.addr, Kind::Sse, "erin", json!({})).await;
    silent.auto_pong = false;
    // The silent one: pinged, no pong, closed with 3012 (reconnect) within a few seconds;
    // the other answers every ping it gets meanwhile (through emulation) and lives on.
    let (code, lived) = tokio::join!(silent.disconnect_code(), alive.idle(Duration::from_secs(6)));
    assert_eq!(code, Some(3012));
    assert!(lived, "the stream that answers pings was closed");
    let r = alive.call(json!({"ping": {}})).await;
    assert!(r.get("ping").is_some());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_or_stops_reading_is_torn_down() {
    let s = TestServer::start_with(|c| {
        c.outbox_max_bytes = 64 << 10;
        c.write_timeout_secs = 2;
    })
    .await;
    // Goes away: the session leaves at once, its session id answers "gone" (204).
    let (mut c, _) = Stream::connect(s.addr, Kind::Lines, "frank", json!({})).await;
    c.call(json!({"subscribe": {"channel": "gone"}})).await;
    assert_eq!(presence_len(&s, "gone").await, 1);
    let (session, node) = (c.session.clone(), c.node.clone());
    drop(c);
    eventually(WAIT, "the session left the room", || async {
        presence_len(&s, "gone").await == 0
    })
    .await;
    let body = json!({"session": session, "node": node, "data": "{}"});
    assert_eq!(
        emulate(s.addr, "application/json", body.to_string().into()).await,
        204
    );

    // Stops reading: the body backs up, the outbox overflows (slow), and with nobody
    // taking the disconnect push the connection is dropped within the write timeout.
    let (mut c, _) = Stream::connect(s.addr, Kind::Sse, "gina", json!({})).await;
    c.call(json!({"subscribe": {"channel": "flood"}})).await;
    let big = "x".repeat(8 << 10);
    for _ in 0..400 {
        s.publish("flood", json!({"big": big})).await;
        if presence_len(&s, "flood").await == 0 {
            break;
        }
    }
    eventually(WAIT, "the slow stream was dropped", || async {
        presence_len(&s, "flood").await == 0
    })
    .await;
    drop(c);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_never_hurt_the_node() {
    let s = TestServer::start_with(|c| c.max_message_size = 4096).await;
    let addr = s.addr;
    let json_ct = "application/json";
    // Streams whose first commands are not a connect, or not commands at all.
    for (kind, first) in [
        (Kind::Lines, "not json"),
        (Kind::Lines, r#"{"id":1,"ping":{}}"#),
        (Kind::Sse, "{\"id\":1,"),
        (Kind::Lines, r#"{"id":1,"connect":{"token":"bad"}}"#),
    ] {
        let (status, mut c) = Stream::open(addr, kind, first.as_bytes().to_vec()).await;
        assert_eq!(status, 200);
        let code = c.disconnect_code().await;
        assert!(matches!(code, Some(3500 | 3501)), "{first}: {code:?}");
    }
    // A first body over the message size limit, an SSE without its parameter.
    let (status, _) = Stream::open(addr, Kind::Lines, vec![b' '; 5000]).await;
    assert_eq!(status, 413);
    let (status, _, _) = request(addr, "GET", "/connection/sse", "text/plain", Bytes::new()).await;
    assert_eq!(status, 400);
    let long = format!("{{\"pad\":\"{}\"}}", "y".repeat(5000));
    let (status, _) = Stream::open(addr, Kind::Sse, long.into_bytes()).await;
    assert!(status == 413 || status == 431, "{status}");

    // Emulation: malformed, no session, too many commands, too large, another node,
    // an unknown session.
    let (c, _) = Stream::connect(addr, Kind::Lines, "hank", json!({})).await;
    assert_eq!(emulate(addr, json_ct, b"{".to_vec()).await, 400);
    assert_eq!(
        emulate(addr, json_ct, br#"{"data":"{}"}"#.to_vec()).await,
        400
    );
    let bad = json!({"session": c.session, "node": c.node, "data": "{\"id\":"});
    assert_eq!(emulate(addr, json_ct, bad.to_string().into()).await, 400);
    let many = "{}".repeat(1025);
    let req = json!({"session": c.session, "node": c.node, "data": many});
    assert_eq!(emulate(addr, json_ct, req.to_string().into()).await, 400);
    let huge = json!({"session": c.session, "node": c.node, "data": "x".repeat(6000)});
    assert_eq!(emulate(addr, json_ct, huge.to_string().into()).await, 413);
    let other = json!({"session": c.session, "node": "another-node", "data": "{}"});
    assert_eq!(emulate(addr, json_ct, other.to_string().into()).await, 404);
    let unknown = json!({"session": "00000000-0000-4000-8000-000000000000", "data": "{}"});
    assert_eq!(
        emulate(addr, json_ct, unknown.to_string().into()).await,
        204
    );
    assert_eq!(
        emulate(addr, "application/octet-stream", vec![0xff; 9]).await,
        400
    );
    let (status, _, _) = request(addr, "GET", "/emulation", json_ct, Bytes::new()).await;
    assert_eq!(status, 405);
    // The stream survived all of it.
    let mut c = c;
    assert!(c.call(json!({"ping": {}})).await.get("ping").is_some());
    s.stop().await;
}
