//! The gRPC server API (issue 14): every method through a tonic client generated from
//! roomcast's `api.proto`, against a node with `grpc_api_address` set, with WebSocket
//! clients seeing the effects. The key goes in the metadata (`authorization: apikey`).

use std::collections::HashMap;
use std::net::SocketAddr;

use roomcast::grpc::proto::centrifugo_api_client::CentrifugoApiClient;
use roomcast::grpc::proto::*;
use roomcast_testkit::*;
use serde_json::json;
use tonic::transport::Channel;
use tonic::{Code, Request};

async fn start() -> (TestServer, CentrifugoApiClient<Channel>) {
    let s = TestServer::start_with(|c| {
        c.grpc_api_address = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr: SocketAddr = s.server.as_ref().unwrap().grpc_addr.expect("gRPC API on");
    let client = CentrifugoApiClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (s, client)
}

/// `msg` with the API key in the metadata, as Centrifugo's gRPC API takes it.
fn keyed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("apikey {API_KEY}").parse().unwrap(),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_over_grpc() {
    let (s, mut api) = start().await;
    let mut alice = s.client("alice").await;
    alice.subscribe("g").await;

    // publish, with the fields Centrifugo's clients set.
    let r = api
        .publish(keyed(PublishRequest {
            channel: "g".into(),
            data: br#"{"text":"hi"}"#.to_vec(),
            idempotency_key: "k1".into(),
            tags: HashMap::from([("t".into(), "v".into())]),
            skip_history: false,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    let offset = r.result.unwrap().offset;
    assert_eq!(offset, 1);
    assert_eq!(alice.next_pub("g").await["data"], json!({"text": "hi"}));
    // b64data when data is empty.
    let r = api
        .publish(keyed(PublishRequest {
            channel: "g".into(),
            b64data: "WzEsMl0=".into(), // [1,2]
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.result.unwrap().offset, 2);
    assert_eq!(alice.next_pub("g").await["data"], json!([1, 2]));
    // Refusals are the reply's error, with the HTTP API's codes.
    let r = api
        .publish(keyed(PublishRequest {
            channel: "g".into(),
            data: b"not json".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error.unwrap().code, 107, "data must be JSON");
    let r = api
        .publish(keyed(PublishRequest {
            channel: "nope:x".into(),
            data: b"1".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error.unwrap().code, 102);

    // broadcast
    let r = api
        .broadcast(keyed(BroadcastRequest {
            channels: vec!["g".into(), "h".into(), "nope:x".into()],
            data: b"3".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let responses = r.result.unwrap().responses;
    assert_eq!(responses[0].result.as_ref().unwrap().offset, 3);
    assert_eq!(responses[1].result.as_ref().unwrap().offset, 1);
    assert_eq!(responses[2].error.as_ref().unwrap().code, 102);
    assert_eq!(alice.next_pub("g").await["offset"], 3);

    // history, with since and reverse
    let r = api
        .history(keyed(HistoryRequest {
            channel: "g".into(),
            limit: 10,
            since: Some(StreamPosition {
                offset: 1,
                epoch: String::new(),
            }),
            reverse: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    let offsets: Vec<u64> = r.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![2, 3]);
    assert_eq!(r.publications[0].data, b"[1,2]");
    assert_eq!(r.offset, 3);
    assert!(!r.epoch.is_empty());

    // presence, presence_stats
    let r = api
        .presence(keyed(PresenceRequest {
            channel: "g".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.presence.len(), 1);
    assert_eq!(r.presence.values().next().unwrap().user, "alice");
    let r = api
        .presence_stats(keyed(PresenceStatsRequest {
            channel: "g".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!((r.num_clients, r.num_users), (1, 1));

    // channels, info
    let r = api
        .channels(keyed(ChannelsRequest {
            pattern: "g*".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.channels.len(), 1);
    assert_eq!(r.channels["g"].num_clients, 1);
    let r = api
        .info(keyed(InfoRequest {}))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.nodes.len(), 1);
    assert_eq!((r.nodes[0].num_clients, r.nodes[0].num_users), (1, 1));

    // subscribe server-side, recovering from offset 2
    let r = api
        .subscribe(keyed(SubscribeRequest {
            user: "alice".into(),
            channel: "h".into(),
            info: br#"{"seat":4}"#.to_vec(),
            recover_since: Some(StreamPosition {
                offset: 0,
                epoch: String::new(),
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none() && r.result.is_some(), "{r:?}");
    let push = alice.next_push(|p| p.get("subscribe").is_some()).await;
    assert_eq!(push["channel"], "h");
    assert_eq!(push["subscribe"]["publications"][0]["data"], 3, "{push}");

    // unsubscribe
    let r = api
        .unsubscribe(keyed(UnsubscribeRequest {
            user: "alice".into(),
            channel: "g".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    let push = alice.next_push(|p| p.get("unsubscribe").is_some()).await;
    assert_eq!(push["channel"], "g");

    // batch: sequential, one reply per command, errors in place
    let r = api
        .batch(keyed(BatchRequest {
            commands: vec![
                Command {
                    publish: Some(PublishRequest {
                        channel: "h".into(),
                        data: b"4".to_vec(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Command {
                    presence_stats: Some(PresenceStatsRequest {
                        channel: "h".into(),
                    }),
                    ..Default::default()
                },
                Command {
                    history: Some(HistoryRequest {
                        channel: "nope:x".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Command::default(),
            ],
            parallel: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.replies.len(), 4);
    assert_eq!(r.replies[0].publish.as_ref().unwrap().offset, 2);
    assert_eq!(r.replies[1].presence_stats.as_ref().unwrap().num_clients, 1);
    assert_eq!(r.replies[2].error.as_ref().unwrap().code, 102);
    assert_eq!(r.replies[3].error.as_ref().unwrap().code, 107, "no method");
    assert_eq!(alice.next_pub("h").await["offset"], 2);

    // refresh: expire now
    let mut bob = s.client("bob").await;
    let r = api
        .refresh(keyed(RefreshRequest {
            user: "bob".into(),
            expired: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(bob.closed_code().await, Some(3005));

    // disconnect, with a code
    let r = api
        .disconnect(keyed(DisconnectRequest {
            user: "alice".into(),
            disconnect: Some(Disconnect {
                code: 3011,
                reason: "go".into(),
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(alice.closed_code().await, Some(3011));
}

#[tokio::test]
async fn the_key_is_required_and_large_requests_are_refused() {
    let (_s, mut api) = start().await;
    let e = api
        .info(Request::new(InfoRequest {}))
        .await
        .expect_err("no key");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = Request::new(InfoRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "apikey wrong".parse().unwrap());
    assert_eq!(
        api.info(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // Larger than the HTTP API's body limit (2 MiB).
    let big = format!("\"{}\"", "x".repeat(3 << 20));
    let e = api
        .publish(keyed(PublishRequest {
            channel: "g".into(),
            data: big.into_bytes(),
            ..Default::default()
        }))
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // A batch over the command limit.
    let commands = vec![
        Command {
            info: Some(InfoRequest {}),
            ..Default::default()
        };
        1001
    ];
    let e = api
        .batch(keyed(BatchRequest {
            commands,
            parallel: true,
        }))
        .await
        .expect_err("too many commands");
    assert_eq!(e.code(), Code::InvalidArgument);
    // Still serving.
    let r = api.info(keyed(InfoRequest {})).await.unwrap().into_inner();
    assert!(r.result.is_some());
}
