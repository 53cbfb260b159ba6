//! Replies and pushes -> protobuf: the conversion of the format-independent result types
//! into the wire types, and the length-delimited framing of one reply.

use bytes::Bytes;
use prost::Message as _;
use serde_json::value::RawValue;

use super::wire;
use crate::reply::{
    ClientInfo, ConnectResult, DeltaData, HistoryResult, PresenceResult, PresenceStatsResult,
    Publication, PushBody, RefreshResult, RpcResult, SubRefreshResult, SubscribeResult,
};

/// A command's result as the protobuf format carries it: the `Reply` field it goes in.
pub trait ReplyResult: serde::Serialize {
    /// Sets this result's field of `reply`.
    fn put(&self, reply: &mut wire::Reply);
}

/// One reply, preceded by its length: frames of one write are then simply concatenated.
pub fn delimited(reply: &wire::Reply) -> Bytes {
    Bytes::from(reply.encode_length_delimited_to_vec())
}

fn raw(data: &RawValue) -> Vec<u8> {
    data.get().as_bytes().to_vec()
}

fn raw_opt(data: &Option<Box<RawValue>>) -> Vec<u8> {
    data.as_deref().map(raw).unwrap_or_default()
}

pub(crate) fn client_info(i: &ClientInfo) -> wire::ClientInfo {
    wire::ClientInfo {
        user: i.user.clone(),
        client: i.client.clone(),
        conn_info: raw_opt(&i.conn_info),
        chan_info: raw_opt(&i.chan_info),
    }
}

fn publication(p: &Publication) -> wire::Publication {
    wire::Publication {
        data: raw(&p.data),
        info: p.info.as_ref().map(client_info),
        offset: p.offset,
        tags: p.tags.clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn subscribe_result(r: &SubscribeResult) -> wire::SubscribeResult {
    wire::SubscribeResult {
        expires: r.expires,
        ttl: r.ttl,
        recoverable: r.recoverable,
        epoch: r.epoch.clone(),
        publications: r.publications.iter().map(publication).collect(),
        recovered: r.recovered,
        offset: r.offset,
        positioned: r.positioned,
        was_recovering: r.was_recovering,
        delta: r.delta,
        ..Default::default()
    }
}

/// A publication pushed to a delta subscription: the data's bytes in full, or the delta's.
pub(crate) fn delta_push(channel: &str, p: &Publication, data: DeltaData<'_>) -> wire::Reply {
    let mut publication = publication(p);
    if let DeltaData::Delta(d) = data {
        publication.data = d.as_bytes().to_vec();
        publication.delta = true;
    }
    wire::Reply {
        push: Some(wire::Push {
            channel: channel.to_owned(),
            r#pub: Some(publication),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A push in its reply envelope (id 0).
pub(crate) fn push(channel: &str, body: PushBody<'_>) -> wire::Reply {
    let mut push = wire::Push {
        channel: channel.to_owned(),
        ..Default::default()
    };
    match body {
        PushBody::Pub(p) => push.r#pub = Some(publication(p)),
        PushBody::Join { info } => {
            push.join = Some(wire::Join {
                info: Some(client_info(info)),
            });
        }
        PushBody::Leave { info } => {
            push.leave = Some(wire::Leave {
                info: Some(client_info(info)),
            });
        }
        PushBody::Unsubscribe { code, reason } => {
            push.unsubscribe = Some(wire::Unsubscribe {
                code,
                reason: reason.to_owned(),
            });
        }
        PushBody::Subscribe(r) => {
            push.subscribe = Some(wire::Subscribe {
                recoverable: r.recoverable,
                epoch: r.epoch.clone(),
                offset: r.offset,
                positioned: r.positioned,
                data: Vec::new(),
            });
        }
        PushBody::Message { data } => push.message = Some(wire::Message { data: raw(data) }),
    }
    wire::Reply {
        push: Some(push),
        ..Default::default()
    }
}

impl ReplyResult for ConnectResult {
    fn put(&self, reply: &mut wire::Reply) {
        reply.connect = Some(wire::ConnectResult {
            client: self.client.clone(),
            version: self.version.clone(),
            expires: self.expires,
            ttl: self.ttl,
            data: Vec::new(),
            subs: self
                .subs
                .iter()
                .map(|(k, v)| (k.clone(), subscribe_result(v)))
                .collect(),
            ping: self.ping,
            pong: self.pong,
            session: self.session.clone(),
            node: self.node.clone(),
        });
    }
}

impl ReplyResult for RefreshResult {
    fn put(&self, reply: &mut wire::Reply) {
        reply.refresh = Some(wire::RefreshResult {
            client: self.client.clone(),
            version: self.version.clone(),
            expires: self.expires,
            ttl: self.ttl,
        });
    }
}

impl ReplyResult for SubscribeResult {
    fn put(&self, reply: &mut wire::Reply) {
        reply.subscribe = Some(subscribe_result(self));
    }
}

impl ReplyResult for SubRefreshResult {
    fn put(&self, reply: &mut wire::Reply) {
        reply.sub_refresh = Some(wire::SubRefreshResult {
            expires: self.expires,
            ttl: self.ttl,
        });
    }
}

impl ReplyResult for HistoryResult {
    fn put(&self, reply: &mut wire::Reply) {
        reply.history = Some(wire::HistoryResult {
            publications: self.publications.iter().map(publication).collect(),
            epoch: self.epoch.clone(),
            offset: self.offset,
        });
    }
}

impl ReplyResult for PresenceResult {
    fn put(&self, reply: &mut wire::Reply) {
        reply.presence = Some(wire::PresenceResult {
            presence: self
                .presence
                .iter()
                .map(|(k, v)| (k.clone(), client_info(v)))
                .collect(),
        });
    }
}

impl ReplyResult for PresenceStatsResult {
    fn put(&self, reply: &mut wire::Reply) {
        reply.presence_stats = Some(wire::PresenceStatsResult {
            num_clients: self.num_clients,
            num_users: self.num_users,
        });
    }
}

impl ReplyResult for RpcResult {
    fn put(&self, reply: &mut wire::Reply) {
        reply.rpc = Some(wire::RpcResult {
            data: raw_opt(&self.data),
        });
    }
}

/// The empty result of a method (`publish`, `unsubscribe`, `ping`, ...), by its JSON name.
/// A name with no empty result here sets nothing: the client then sees a reply with only
/// its id, which the SDKs take as success.
pub(crate) fn put_empty(reply: &mut wire::Reply, method: &str) {
    match method {
        "publish" => reply.publish = Some(wire::PublishResult {}),
        "unsubscribe" => reply.unsubscribe = Some(wire::UnsubscribeResult {}),
        "ping" => reply.ping = Some(wire::PingResult {}),
        "sub_refresh" => reply.sub_refresh = Some(wire::SubRefreshResult::default()),
        "rpc" => reply.rpc = Some(wire::RpcResult::default()),
        "presence" => reply.presence = Some(wire::PresenceResult::default()),
        "history" => reply.history = Some(wire::HistoryResult::default()),
        _ => {}
    }
}
