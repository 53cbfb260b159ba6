//! The protobuf format over real sockets (issue 13): the SDKs' two ways of asking for it,
//! the protocol's commands in it, JSON and protobuf clients in one room, recovery, and
//! frames an attacker sends (bad varints, lengths beyond the frame, huge lengths, wrong
//! wire types, unknown fields, data that is not JSON): each refused with a clear close
//! code, never a panic, and the node serves the next client as before.

use futures_util::SinkExt;
use prost::Message as _;
use roomcast_proto::protobuf::wire;
use roomcast_testkit::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn publish(channel: &str, data: &str) -> wire::Command {
    wire::Command {
        publish: Some(wire::PublishRequest {
            channel: channel.into(),
            data: data.as_bytes().to_vec(),
        }),
        ..Default::default()
    }
}

fn sub(channel: &str) -> wire::SubscribeRequest {
    wire::SubscribeRequest {
        channel: channel.into(),
        ..Default::default()
    }
}

fn text(data: &[u8]) -> &str {
    std::str::from_utf8(data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_subscribe_publish_history_presence_either_way_of_asking() {
    let s = TestServer::start().await;
    for (i, ask) in [Ask::Subprotocol, Ask::Query].into_iter().enumerate() {
        let room = format!("room{i}");
        let mut c = PbClient::open(&s.ws_url(), ask).await;
        match ask {
            Ask::Subprotocol => assert_eq!(c.subprotocol.as_deref(), Some("centrifuge-protobuf")),
            Ask::Query => assert_eq!(c.subprotocol, None),
        }
        let r = c
            .call(wire::Command {
                connect: Some(wire::ConnectRequest {
                    token: token("alice"),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        let connect = r.connect.expect("connect result");
        assert!(!connect.client.is_empty() && connect.ping > 0 && connect.pong);

        let subscribed = c
            .subscribe(wire::SubscribeRequest {
                recover: true,
                ..sub(&room)
            })
            .await;
        assert!(subscribed.recoverable && !subscribed.epoch.is_empty());
        assert_eq!(subscribed.offset, 0);

        let r = c.call(publish(&room, r#"{"text":"hi"}"#)).await;
        assert!(r.publish.is_some() && r.error.is_none(), "{r:?}");
        let p = c.next_pub(&room).await;
        assert_eq!((text(&p.data), p.offset), (r#"{"text":"hi"}"#, 1));
        assert_eq!(p.info.unwrap().user, "alice");

        let r = c
            .call(wire::Command {
                history: Some(wire::HistoryRequest {
                    channel: room.clone(),
                    limit: -1,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        let h = r.history.expect("history result");
        assert_eq!((h.offset, h.epoch.as_str()), (1, subscribed.epoch.as_str()));
        assert_eq!(h.publications.len(), 1);

        let r = c
            .call(wire::Command {
                presence: Some(wire::PresenceRequest {
                    channel: room.clone(),
                }),
                ..Default::default()
            })
            .await;
        let presence = r.presence.expect("presence result").presence;
        assert_eq!(presence.get(&connect.client).unwrap().user, "alice");
        let r = c
            .call(wire::Command {
                presence_stats: Some(wire::PresenceStatsRequest {
                    channel: room.clone(),
                }),
                ..Default::default()
            })
            .await;
        let stats = r.presence_stats.expect("presence stats");
        assert_eq!((stats.num_clients, stats.num_users), (1, 1));

        // An error reply, and rpc with no handler: 108 "not available".
        let r = c.call(publish("other", "1")).await;
        assert_eq!(r.error.map(|e| e.code), Some(103));
        let r = c
            .call(wire::Command {
                rpc: Some(wire::RpcRequest {
                    method: "nope".into(),
                    data: b"{}".to_vec(),
                }),
                ..Default::default()
            })
            .await;
        assert_eq!(r.error.map(|e| e.code), Some(108));
        let r = c
            .call(wire::Command {
                ping: Some(wire::PingRequest {}),
                ..Default::default()
            })
            .await;
        assert!(r.ping.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_protobuf_clients_share_a_room() {
    let s = TestServer::start().await;
    let mut j = s.client("jay").await;
    j.subscribe("mixed").await;
    let mut p = PbClient::connect(&s.ws_url(), Ask::Subprotocol, "pat").await;
    p.subscribe(sub("mixed")).await;

    let offset = s.publish("mixed", json!({"n": 1, "s": "é\"\n"})).await;
    let got = j.next_pub("mixed").await;
    assert_eq!(
        (got["offset"].as_u64(), &got["data"]),
        (Some(offset), &json!({"n": 1, "s": "é\"\n"}))
    );
    let got = p.next_pub("mixed").await;
    assert_eq!(got.offset, offset);
    let data: serde_json::Value = serde_json::from_slice(&got.data).unwrap();
    assert_eq!(data, json!({"n": 1, "s": "é\"\n"}));

    // A protobuf client's publication reaches the JSON client as JSON, with its sender.
    let r = p.call(publish("mixed", "[1,2,3]")).await;
    assert!(r.error.is_none(), "{r:?}");
    let got = j.next_pub("mixed").await;
    assert_eq!(
        (&got["data"], got["info"]["user"].as_str()),
        (&json!([1, 2, 3]), Some("pat"))
    );
    assert_eq!(text(&p.next_pub("mixed").await.data), "[1,2,3]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_missed_publications_after_a_disconnect() {
    let s = TestServer::start().await;
    let mut c = PbClient::connect(&s.ws_url(), Ask::Subprotocol, "alice").await;
    let first = c
        .subscribe(wire::SubscribeRequest {
            recover: true,
            ..sub("rec")
        })
        .await;
    s.publish("rec", json!(1)).await;
    let seen = c.next_pub("rec").await.offset;
    drop(c);
    for n in 2..=4 {
        s.publish("rec", json!(n)).await;
    }
    let mut c = PbClient::connect(&s.ws_url(), Ask::Subprotocol, "alice").await;
    let r = c
        .subscribe(wire::SubscribeRequest {
            recover: true,
            offset: seen,
            epoch: first.epoch.clone(),
            ..sub("rec")
        })
        .await;
    assert!(r.recovered, "{r:?}");
    let got: Vec<(u64, &str)> = r
        .publications
        .iter()
        .map(|p| (p.offset, text(&p.data)))
        .collect();
    assert_eq!(got, vec![(2, "2"), (3, "3"), (4, "4")]);
    s.publish("rec", json!(5)).await;
    assert_eq!(c.next_pub("rec").await.offset, 5, "then live again");
}

/// A connect command's bytes with `extra` appended inside it.
fn connect_with(extra: &[u8]) -> Vec<u8> {
    let mut cmd = wire::Command {
        id: 1,
        connect: Some(wire::ConnectRequest {
            token: token("alice"),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    cmd.extend_from_slice(extra);
    let mut frame = Vec::new();
    prost::encoding::encode_varint(cmd.len() as u64, &mut frame);
    frame.extend_from_slice(&cmd);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_skipped() {
    let s = TestServer::start().await;
    let mut c = PbClient::open(&s.ws_url(), Ask::Subprotocol).await;
    // Field 99 as a varint, field 100 as bytes, field 101 as fixed32: a newer SDK's fields.
    let mut extra = vec![0x98, 0x06, 0x2a, 0xa2, 0x06, 0x03, b'a', b'b', b'c'];
    extra.extend_from_slice(&[0xad, 0x06, 1, 2, 3, 4]);
    c.send_binary(connect_with(&extra)).await;
    let r = c.reply(1).await;
    assert!(r.connect.is_some(), "{r:?}");
    c.subscribe(sub("u")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacker_frames_close_with_bad_request_and_the_node_goes_on() {
    let s = TestServer::start().await;
    let mut huge = Vec::new();
    prost::encoding::encode_varint(1 << 62, &mut huge);
    huge.extend_from_slice(b"abc");
    let cmd_truncated_inside = vec![5, 0x22, 0x7f, 0x0a, 0x01, b'x'];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("varint longer than 10 bytes", vec![0xff; 11]),
        ("varint cut by the frame's end", vec![0x80, 0x80]),
        ("length beyond the frame", vec![0x05, 0x08, 0x01]),
        ("huge length", huge),
        // id (field 1) sent as length-delimited instead of a varint.
        ("wrong wire type", vec![3, 0x0a, 0x01, 0x00]),
        // connect (field 4) announcing 127 bytes inside a 5-byte command.
        ("nested length beyond the command", cmd_truncated_inside),
        // wire type 7 does not exist.
        ("bad wire type", vec![2, 0x0f, 0x00]),
        (
            "publish data that is not JSON",
            publish("room", "not json").encode_length_delimited_to_vec(),
        ),
        (
            "publish data that is not UTF-8",
            wire::Command {
                id: 9,
                publish: Some(wire::PublishRequest {
                    channel: "room".into(),
                    data: vec![0xff, 0xfe],
                }),
                ..Default::default()
            }
            .encode_length_delimited_to_vec(),
        ),
    ];
    for (what, frame) in cases {
        let mut c = PbClient::connect(&s.ws_url(), Ask::Subprotocol, "mallory").await;
        c.send_binary(frame).await;
        assert_eq!(c.closed_code().await, Some(3501), "{what}");
    }
    let mut c = PbClient::open(&s.ws_url(), Ask::Query).await;
    c.send_binary(vec![0xff; 11]).await;
    assert_eq!(c.closed_code().await, Some(3501), "before connect");
    // A text message on a protobuf connection, and a binary one on a JSON connection.
    let mut c = PbClient::connect(&s.ws_url(), Ask::Subprotocol, "mallory").await;
    c.send_text(r#"{"id":2,"ping":{}}"#).await;
    assert_eq!(c.closed_code().await, Some(3501), "text on protobuf");
    let mut j = s.client("mallory").await;
    j.ws_mut()
        .send(Message::binary(
            publish("room", "1").encode_length_delimited_to_vec(),
        ))
        .await
        .unwrap();
    assert_eq!(j.closed_code().await, Some(3501), "binary on JSON");

    // The node is unharmed: a new client of each format works.
    let mut c = PbClient::connect(&s.ws_url(), Ask::Subprotocol, "alice").await;
    c.subscribe(sub("after")).await;
    assert!(c.call(publish("after", "1")).await.publish.is_some());
    assert_eq!(c.next_pub("after").await.offset, 1);
    s.client("bob").await.subscribe("after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_empty_replies_and_an_empty_command_is_the_pong() {
    let s = TestServer::start_with(|c| {
        c.ping_interval_secs = 2;
        c.pong_timeout_secs = 1;
    })
    .await;
    let mut quiet = PbClient::connect(&s.ws_url(), Ask::Subprotocol, "quiet").await;
    quiet.auto_pong = false;
    let mut polite = PbClient::connect(&s.ws_url(), Ask::Query, "polite").await;
    // The one that answers pings is still there after several ping periods (each call
    // reads what came meanwhile and answers pings).
    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let r = polite
            .call(wire::Command {
                ping: Some(wire::PingRequest {}),
                ..Default::default()
            })
            .await;
        assert!(r.ping.is_some(), "{r:?}");
    }
    assert!(polite.pings >= 1, "a ping came within two ping periods");
    assert_eq!(quiet.closed_code().await, Some(3012));
    assert!(quiet.pings >= 1);
}
