//! What acts on a user's connections wherever they are connected: `subscribe`,
//! `unsubscribe`, `disconnect`, `refresh`. Each becomes a `UserOp` the bus applies on
//! every node (this one included); the call is answered once the operation is handed to
//! the bus, as Centrifugo answers, not when every connection has acted on it.
//!
//! `client` narrows an operation to one connection of the user. Accepted, not acted on
//! (README, "Server API"): `session` (roomcast has no sessions apart from client ids),
//! `subscribe`'s `expire_at` (subscriptions do not expire server-side) and `data` (the
//! subscribe push carries no custom data).

use std::sync::Arc;

use roomcast_proto::{Disconnect, ErrorCode, StreamPosition};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{given, json_or_b64, ok, Answer};
use crate::bus::UserOp;
use crate::channel::Channel;
use crate::http::error::ApiError;
use crate::hub::{ServerSubscribe, SubOverrides};
use crate::node::Node;

#[derive(Deserialize)]
pub(super) struct DisconnectCode {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
pub(super) struct DisconnectBody {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    disconnect: Option<DisconnectCode>,
    /// Client ids of the user to leave connected.
    #[serde(default)]
    whitelist: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct UnsubscribeBody {
    user: String,
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

/// A `BoolValue` of Centrifugo's `override`: `{"value": true}`.
#[derive(Deserialize, Clone, Copy)]
struct BoolValue {
    #[serde(default)]
    value: bool,
}

#[derive(Deserialize, Default)]
struct Override {
    #[serde(default)]
    presence: Option<BoolValue>,
    #[serde(default)]
    join_leave: Option<BoolValue>,
    #[serde(default)]
    force_push_join_leave: Option<BoolValue>,
    #[serde(default)]
    force_positioning: Option<BoolValue>,
    #[serde(default)]
    force_recovery: Option<BoolValue>,
}

#[derive(Deserialize)]
pub(super) struct SubscribeBody {
    user: String,
    channel: String,
    #[serde(default)]
    client: Option<String>,
    /// Channel info of the subscription (presence, join/leave); `b64info` in base64.
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    b64info: Option<String>,
    #[serde(default)]
    recover_since: Option<StreamPosition>,
    #[serde(default, rename = "override")]
    overrides: Option<Override>,
}

#[derive(Deserialize)]
pub(super) struct RefreshBody {
    user: String,
    #[serde(default)]
    client: Option<String>,
    /// Close the connections now, as expired.
    #[serde(default)]
    expired: bool,
    /// Unix seconds the connections expire at; absent or 0: never.
    #[serde(default)]
    expire_at: Option<i64>,
    /// New connection info.
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

/// Hands an operation to the bus (every node applies it to its connections of the user).
async fn send(node: &Node, op: UserOp) -> Result<Answer, ApiError> {
    node.bus.user_op(op).await.map_err(|e| {
        tracing::error!(error = %e, "user operation not sent to the cluster");
        ErrorCode::INTERNAL
    })?;
    Ok(ok(json!({})))
}

pub(super) async fn disconnect(node: &Arc<Node>, b: DisconnectBody) -> Result<Answer, ApiError> {
    let why = match &b.disconnect {
        None => Disconnect::FORCE_NO_RECONNECT,
        // gRPC's absent `disconnect` arrives as code 0: the default.
        Some(d) if d.code == 0 => Disconnect::FORCE_NO_RECONNECT,
        Some(d) => custom_disconnect(d)?,
    };
    send(
        node,
        UserOp::Disconnect {
            user: b.user,
            client: given(b.client),
            keep: b.whitelist,
            why,
        },
    )
    .await
}

pub(super) async fn unsubscribe(node: &Arc<Node>, b: UnsubscribeBody) -> Result<Answer, ApiError> {
    Channel::resolve(&node.config, &b.channel)?;
    send(
        node,
        UserOp::Unsubscribe {
            user: b.user,
            channel: b.channel,
            client: given(b.client),
        },
    )
    .await
}

/// Subscribes the user's connections (or the one `client`) to a channel server-side: each
/// gets a subscribe push, recovering from `recover_since` when given. The channel must
/// resolve; the server decides, so the namespace's client permissions do not apply.
pub(super) async fn subscribe(node: &Arc<Node>, b: SubscribeBody) -> Result<Answer, ApiError> {
    Channel::resolve(&node.config, &b.channel)?;
    let info = json_or_b64(b.info, b.b64info.as_deref(), "b64info")?;
    if let Some(info) = &info {
        node.check_data(info)
            .map_err(|e| ApiError::BadBody(format!("info: {e}")))?;
    }
    let o = b.overrides.unwrap_or_default();
    let value = |v: Option<BoolValue>| v.map(|v| v.value);
    let sub = ServerSubscribe {
        channel: b.channel,
        recover_since: b.recover_since,
        info,
        overrides: SubOverrides {
            presence: value(o.presence),
            join_leave: value(o.join_leave),
            force_push_join_leave: value(o.force_push_join_leave),
            force_positioning: value(o.force_positioning),
            force_recovery: value(o.force_recovery),
        },
    };
    send(
        node,
        UserOp::Subscribe {
            user: b.user,
            client: given(b.client),
            sub: Arc::new(sub),
        },
    )
    .await
}

/// Sets when the user's connections expire, or expires them now (`expired`). An
/// `expire_at` in the past expires them at the keepalive's next check.
pub(super) async fn refresh(node: &Arc<Node>, b: RefreshBody) -> Result<Answer, ApiError> {
    let expire_at = match b.expire_at {
        None | Some(0) => None,
        Some(t) if t < 0 => {
            return Err(ApiError::RefusedWith(
                ErrorCode::BAD_REQUEST,
                format!("expire_at {t} is not a Unix time"),
            ))
        }
        Some(t) => Some(t as u64),
    };
    if let Some(info) = &b.info {
        node.check_data(info)
            .map_err(|e| ApiError::BadBody(format!("info: {e}")))?;
    }
    send(
        node,
        UserOp::Refresh {
            user: b.user,
            client: given(b.client),
            expired: b.expired,
            expire_at,
            info: b.info,
        },
    )
    .await
}

/// A disconnect code given through the API: one the protocol defines for operators (its
/// reason is the protocol's); any other code is refused.
fn custom_disconnect(d: &DisconnectCode) -> Result<Disconnect, ApiError> {
    Disconnect::operator(d.code).ok_or_else(|| {
        let known: Vec<String> = Disconnect::OPERATOR
            .iter()
            .map(|k| k.code.to_string())
            .collect();
        ApiError::RefusedWith(
            ErrorCode::BAD_REQUEST,
            format!(
                "disconnect code {} ({}) is not one roomcast sends; use one of {}",
                d.code,
                d.reason,
                known.join(", ")
            ),
        )
    })
}
