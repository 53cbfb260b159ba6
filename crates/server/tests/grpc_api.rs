//! The gRPC server API (issue 14): every method through a tonic client generated from
//! roomcast's `api.proto`, against a node with `grpc_api_address` set, with WebSocket
//! clients seeing the effects. The key goes in the metadata (`authorization: apikey`).
//! roomcast's own methods' results are also checked equal to the HTTP API's answer read
//! into the same message (one document behind both).

use std::collections::HashMap;
use std::net::SocketAddr;

use roomcast::grpc::proto::centrifugo_api_client::CentrifugoApiClient;
use roomcast::grpc::proto::*;
use roomcast_testkit::*;
use serde_json::{json, Value};
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

/// The result of an rpc whose reply is `{error, result}`, asserting it has no error.
macro_rules! ok {
    ($call:expr) => {{
        let r = $call.await.unwrap().into_inner();
        assert!(r.error.is_none(), "{:?}", r.error);
        r.result.expect("a result")
    }};
}

/// The error code of an rpc refused in its reply's `error`.
macro_rules! refused {
    ($call:expr) => {{
        let r = $call.await.unwrap().into_inner();
        assert!(r.result.is_none(), "{:?}", r.result);
        r.error.expect("an error").code
    }};
}

/// What the HTTP API answers to `method` with `body`, read into the gRPC result message:
/// the same document, so equal to what the rpc answered.
async fn http<R: serde::de::DeserializeOwned>(s: &TestServer, method: &str, body: Value) -> R {
    let v = s.api(method, body).await;
    assert!(v.get("error").is_none(), "{method}: {v}");
    serde_json::from_value(v["result"].clone()).unwrap_or_else(|e| panic!("{method}: {e}: {v}"))
}

async fn publish_to(api: &mut CentrifugoApiClient<Channel>, channel: &str, data: &str) -> u64 {
    ok!(api.publish(keyed(PublishRequest {
        channel: channel.into(),
        data: data.as_bytes().to_vec(),
        ..Default::default()
    })))
    .offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_remove_and_delete_publication_over_grpc() {
    let (s, mut api) = start().await;
    for i in 1..=2 {
        assert_eq!(publish_to(&mut api, "r", &i.to_string()).await, i);
    }
    let history = |channel: &str| {
        keyed(HistoryRequest {
            channel: channel.into(),
            limit: 10,
            ..Default::default()
        })
    };
    let before = ok!(api.history(history("r")));
    assert_eq!(before.publications.len(), 2);

    // history_remove: nothing stored any more, the position kept.
    ok!(api.history_remove(keyed(HistoryRemoveRequest {
        channel: "r".into()
    })));
    let after = ok!(api.history(history("r")));
    assert!(after.publications.is_empty(), "{after:?}");
    assert_eq!((after.offset, &after.epoch), (2, &before.epoch));
    assert_eq!(
        publish_to(&mut api, "r", "3").await,
        3,
        "offsets not reused"
    );
    let code = refused!(api.history_remove(keyed(HistoryRemoveRequest {
        channel: "nope:x".into()
    })));
    assert_eq!(code, 102);

    // delete_publication: a tombstone at the offset, the rest untouched.
    for i in 1..=2 {
        assert_eq!(
            publish_to(&mut api, "d", &format!("{{\"n\":{i}}}")).await,
            i
        );
    }
    ok!(api.delete_publication(keyed(DeletePublicationRequest {
        channel: "d".into(),
        offset: 1,
    })));
    let h = ok!(api.history(history("d")));
    assert_eq!(h.publications.len(), 2, "{h:?}");
    assert_eq!(h.publications[0].offset, 1);
    assert_eq!(
        h.publications[0].tags,
        HashMap::from([("deleted".to_owned(), "1".to_owned())])
    );
    assert_ne!(h.publications[0].data, br#"{"n":1}"#, "the payload is gone");
    assert_eq!(h.publications[1].data, br#"{"n":2}"#);
    let same: HistoryResult = http(&s, "history", json!({"channel": "d", "limit": 10})).await;
    assert_eq!(h, same);
    let code = refused!(api.delete_publication(keyed(DeletePublicationRequest {
        channel: "d".into(),
        offset: 99,
    })));
    assert_eq!(code, 104, "nothing stored at 99");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_methods_over_grpc() {
    let (s, mut api) = start().await;
    let (mut alice, connected) = Client::connect_with_subs(&s.ws_url(), "alice", json!({})).await;
    let client_id = connected["connect"]["client"].as_str().unwrap().to_owned();

    // connections: alice's one connection, on this node.
    let c = ok!(api.connections(keyed(ConnectionsRequest {
        user: "alice".into()
    })));
    assert_eq!(c.user, "alice");
    assert_eq!(c.nodes.len(), 1, "{c:?}");
    assert_eq!(c.connections.len(), 1, "{c:?}");
    assert_eq!(c.connections[0].client, client_id);
    assert_eq!(c.connections[0].node, c.nodes[0]);
    assert!(!c.truncated);
    let same: ConnectionsResult = http(&s, "connections", json!({"user": "alice"})).await;
    assert_eq!(c, same);
    let c = ok!(api.connections(keyed(ConnectionsRequest {
        user: "nobody".into()
    })));
    assert!(c.nodes.is_empty() && c.connections.is_empty(), "{c:?}");
    let code = refused!(api.connections(keyed(ConnectionsRequest { user: "".into() })));
    assert_eq!(code, 107);

    // user_publish: to alice's personal channel, over her WebSocket. Only the fields
    // set that a caller needs: "" is no idempotency key (two such calls both publish).
    let send = |data: &str, key: &str| {
        keyed(UserPublishRequest {
            user: "alice".into(),
            data: data.as_bytes().to_vec(),
            idempotency_key: key.into(),
        })
    };
    let r = ok!(api.user_publish(send(r#"{"text":"for alice"}"#, "")));
    assert_eq!(r.offset, 1);
    assert!(!r.epoch.is_empty());
    let p = alice.next_pub("#alice").await;
    assert_eq!(
        (p["offset"].as_u64(), &p["data"]),
        (Some(1), &json!({"text": "for alice"}))
    );
    assert_eq!(ok!(api.user_publish(send("2", ""))).offset, 2);
    assert_eq!(alice.next_pub("#alice").await["data"], 2);
    assert_eq!(ok!(api.user_publish(send("3", "k"))).offset, 3);
    assert_eq!(ok!(api.user_publish(send("3", "k"))).offset, 3, "same key");
    assert_eq!(refused!(api.user_publish(send("", ""))), 107, "no data");
    assert_eq!(refused!(api.user_publish(send("not json", ""))), 107);

    // user_status
    let st = ok!(api.user_status(keyed(UserStatusRequest {
        users: vec!["alice".into(), "nobody".into()],
    })));
    assert_eq!(
        st.statuses,
        vec![
            UserOnlineStatus {
                user: "alice".into(),
                online: true,
                last_seen: None,
            },
            UserOnlineStatus {
                user: "nobody".into(),
                online: false,
                last_seen: None,
            },
        ]
    );
    let same: UserStatusResult =
        http(&s, "user_status", json!({"users": ["alice", "nobody"]})).await;
    assert_eq!(st, same);
    let code = refused!(api.user_status(keyed(UserStatusRequest {
        users: vec!["a,b".into()],
    })));
    assert_eq!(code, 107);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_methods_over_grpc() {
    let (s, mut api) = start().await;
    let change = |users: &[&str]| AddMembersRequest {
        channel: "room".into(),
        users: users.iter().map(|u| (*u).to_owned()).collect(),
    };

    // add_members, members (paged; limit and after unset are "not given").
    let r = ok!(api.add_members(keyed(change(&["bob", "alice"]))));
    assert_eq!(r.added, 2);
    assert_eq!(ok!(api.add_members(keyed(change(&["alice"])))).added, 0);
    let page = |limit: Option<u64>, after: Option<&str>| {
        keyed(MembersRequest {
            channel: "room".into(),
            limit,
            after: after.map(str::to_owned),
        })
    };
    let m = ok!(api.members(page(None, None)));
    assert_eq!(m.users, vec!["alice", "bob"]);
    assert_eq!(m.next, None);
    let same: MembersResult = http(&s, "members", json!({"channel": "room"})).await;
    assert_eq!(m, same);
    let m = ok!(api.members(page(Some(1), None)));
    assert_eq!(
        (m.users, m.next.as_deref()),
        (vec!["alice".to_owned()], Some("alice"))
    );
    let m = ok!(api.members(page(Some(1), Some("alice"))));
    assert_eq!(m.users, vec!["bob"]);
    let same: MembersResult = http(
        &s,
        "members",
        json!({"channel": "room", "limit": 1, "after": "alice"}),
    )
    .await;
    assert_eq!(m, same);
    assert_eq!(refused!(api.add_members(keyed(change(&[])))), 107);
    let code = refused!(api.members(keyed(MembersRequest {
        channel: "nope:x".into(),
        ..Default::default()
    })));
    assert_eq!(code, 102);

    // remove_members
    let r = ok!(api.remove_members(keyed(RemoveMembersRequest {
        channel: "room".into(),
        users: vec!["bob".into(), "carol".into()],
    })));
    assert_eq!(r.removed, 1);
    assert_eq!(ok!(api.members(page(None, None))).users, vec!["alice"]);

    // read, unread, rooms: alice's cursor in a room of 3 publications.
    for i in 1..=3 {
        assert_eq!(
            publish_to(&mut api, "room", &format!("{{\"n\":{i}}}")).await,
            i
        );
    }
    let read = |user: &str, channel: &str| {
        keyed(ReadRequest {
            user: user.into(),
            channel: channel.into(),
            offset: 1,
        })
    };
    let cursor = ReadResult {
        channel: "room".into(),
        cursor: 1,
        top: 3,
        unread: 2,
    };
    assert_eq!(ok!(api.read(read("alice", "room"))), cursor);
    assert_eq!(refused!(api.read(read("", "room"))), 107, "no user");
    assert_eq!(refused!(api.read(read("alice", "nope:x"))), 102);

    let u = ok!(api.unread(keyed(UnreadRequest {
        user: "alice".into(),
        channels: vec!["room".into()],
    })));
    assert_eq!((u.total, u.rooms), (2, 1));
    assert_eq!(u.channels, vec![cursor.clone()]);
    let same: UnreadResult =
        http(&s, "unread", json!({"user": "alice", "channels": ["room"]})).await;
    assert_eq!(u, same);

    let r = ok!(api.rooms(keyed(RoomsRequest {
        user: "alice".into(),
        ..Default::default()
    })));
    assert_eq!((r.total_unread, r.next.as_deref()), (2, None), "{r:?}");
    assert_eq!(r.rooms.len(), 1, "{r:?}");
    let room = &r.rooms[0];
    assert_eq!(
        (room.channel.as_str(), room.top, room.cursor, room.unread),
        ("room", 3, 1, 2)
    );
    let preview = room.preview.as_ref().expect("a preview");
    assert_eq!(
        (preview.offset, preview.data.as_slice()),
        (3, &br#"{"n":3}"#[..])
    );
    assert!(!preview.truncated && !preview.deleted);
    let same: RoomsResult = http(&s, "rooms", json!({"user": "alice"})).await;
    assert_eq!(r, same);
    let r = ok!(api.rooms(keyed(RoomsRequest {
        user: "alice".into(),
        limit: Some(1),
        ..Default::default()
    })));
    assert!(r.next.is_some(), "a full page has a next: {r:?}");
    let code = refused!(api.rooms(keyed(RoomsRequest {
        user: "alice".into(),
        after: Some("not a token".into()),
        ..Default::default()
    })));
    assert_eq!(code, 107);
}

/// Every new method runs as a batch command too, its reply in the field of its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_runs_roomcast_methods() {
    let (s, mut api) = start().await;
    let _alice = s.client("alice").await;
    assert_eq!(publish_to(&mut api, "b", "1").await, 1);
    let commands = vec![
        Command {
            add_members: Some(AddMembersRequest {
                channel: "b".into(),
                users: vec!["alice".into()],
            }),
            ..Default::default()
        },
        Command {
            members: Some(MembersRequest {
                channel: "b".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Command {
            read: Some(ReadRequest {
                user: "alice".into(),
                channel: "b".into(),
                offset: 1,
            }),
            ..Default::default()
        },
        Command {
            unread: Some(UnreadRequest {
                user: "alice".into(),
                channels: vec!["b".into()],
            }),
            ..Default::default()
        },
        Command {
            rooms: Some(RoomsRequest {
                user: "alice".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Command {
            remove_members: Some(RemoveMembersRequest {
                channel: "b".into(),
                users: vec!["alice".into()],
            }),
            ..Default::default()
        },
        Command {
            user_publish: Some(UserPublishRequest {
                user: "alice".into(),
                data: b"{}".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Command {
            user_status: Some(UserStatusRequest {
                users: vec!["alice".into()],
            }),
            ..Default::default()
        },
        Command {
            connections: Some(ConnectionsRequest {
                user: "alice".into(),
            }),
            ..Default::default()
        },
        Command {
            delete_publication: Some(DeletePublicationRequest {
                channel: "b".into(),
                offset: 1,
            }),
            ..Default::default()
        },
        Command {
            history_remove: Some(HistoryRemoveRequest {
                channel: "b".into(),
            }),
            ..Default::default()
        },
        Command {
            delete_publication: Some(DeletePublicationRequest {
                channel: "b".into(),
                offset: 1,
            }),
            ..Default::default()
        },
    ];
    let r = api
        .batch(keyed(BatchRequest {
            commands,
            parallel: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.replies.len(), 12);
    let ok = |i: usize| {
        assert!(r.replies[i].error.is_none(), "{i}: {:?}", r.replies[i]);
        &r.replies[i]
    };
    assert_eq!(ok(0).add_members.as_ref().unwrap().added, 1);
    assert_eq!(ok(1).members.as_ref().unwrap().users, vec!["alice"]);
    assert_eq!(ok(2).read.as_ref().unwrap().cursor, 1);
    assert_eq!(ok(3).unread.as_ref().unwrap().rooms, 1);
    assert_eq!(ok(4).rooms.as_ref().unwrap().rooms[0].channel, "b");
    assert_eq!(ok(5).remove_members.as_ref().unwrap().removed, 1);
    // The read's cursor event took offset 1 of alice's personal channel.
    assert_eq!(ok(6).user_publish.as_ref().unwrap().offset, 2);
    assert!(ok(7).user_status.as_ref().unwrap().statuses[0].online);
    assert_eq!(ok(8).connections.as_ref().unwrap().connections.len(), 1);
    assert!(ok(9).delete_publication.is_some());
    assert!(ok(10).history_remove.is_some());
    assert_eq!(r.replies[11].error.as_ref().map(|e| e.code), Some(104));
}
