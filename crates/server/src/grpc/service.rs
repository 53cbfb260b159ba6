//! The `CentrifugoApi` service: every rpc checks the key, takes a slot, and runs the HTTP
//! API's method on the request turned into its JSON body (`bridge`).
//!
//! Errors as Centrifugo's gRPC API gives them: a wrong or missing key is the gRPC status
//! `UNAUTHENTICATED`, no free slot `RESOURCE_EXHAUSTED`; anything the method refuses
//! (including a malformed request, as HTTP's 400) is the reply's `error` field with the
//! same code and message the HTTP API gives.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::proto::centrifugo_api_server::CentrifugoApi;
use super::proto::*;
use crate::http::api::{dispatch, Api};
use crate::http::error::ApiError;

pub struct GrpcApi {
    api: Api,
}

impl GrpcApi {
    pub fn new(api: Api) -> GrpcApi {
        GrpcApi { api }
    }

    /// Key, slot, then the method: `Ok(Err(error))` is a refusal for the reply's `error`.
    async fn call<T: Serialize>(
        &self,
        method: &str,
        request: Request<T>,
    ) -> Result<Result<Vec<u8>, Error>, Status> {
        let key = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("apikey "));
        if !key.is_some_and(|k| self.api.is_key(k)) {
            return Err(Status::unauthenticated("invalid or missing API key"));
        }
        let _slot = self
            .api
            .slot()
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let body = match serde_json::to_vec(request.get_ref()) {
            Ok(b) => b,
            Err(e) => return Ok(Err(error(&ApiError::BadBody(e.to_string())))),
        };
        Ok(dispatch(self.api.node(), method, &body)
            .await
            .map(|answer| answer.0)
            .map_err(|e| error(&e)))
    }
}

fn error(e: &ApiError) -> Error {
    let (code, message) = e.code_and_message();
    Error { code, message }
}

/// A method's JSON result as its reply message.
fn result<R: DeserializeOwned>(json: &[u8]) -> Result<R, Status> {
    serde_json::from_slice(json).map_err(|e| {
        tracing::error!(error = %e, "a server API result does not fit its gRPC message");
        Status::internal("result not representable")
    })
}

/// A reply message of the `{error, result}` shape.
trait Reply: Sized {
    type Result: DeserializeOwned;
    fn of(error: Option<Error>, result: Option<Self::Result>) -> Self;
}

macro_rules! reply {
    ($($resp:ident => $res:ident),* $(,)?) => {$(
        impl Reply for $resp {
            type Result = $res;
            fn of(error: Option<Error>, result: Option<$res>) -> Self {
                $resp { error, result }
            }
        }
    )*};
}

reply! {
    PublishResponse => PublishResult,
    BroadcastResponse => BroadcastResult,
    SubscribeResponse => SubscribeResult,
    UnsubscribeResponse => UnsubscribeResult,
    DisconnectResponse => DisconnectResult,
    RefreshResponse => RefreshResult,
    PresenceResponse => PresenceResult,
    PresenceStatsResponse => PresenceStatsResult,
    HistoryResponse => HistoryResult,
    ChannelsResponse => ChannelsResult,
    InfoResponse => InfoResult,
    HistoryRemoveResponse => HistoryRemoveResult,
    ConnectionsResponse => ConnectionsResult,
    DeletePublicationResponse => DeletePublicationResult,
    UserPublishResponse => UserPublishResult,
    UserStatusResponse => UserStatusResult,
    AddMembersResponse => AddMembersResult,
    RemoveMembersResponse => RemoveMembersResult,
    MembersResponse => MembersResult,
    ReadResponse => ReadResult,
    UnreadResponse => UnreadResult,
    RoomsResponse => RoomsResult,
}

impl GrpcApi {
    /// One rpc whose reply is `{error, result}`.
    async fn rpc<T: Serialize, R: Reply>(
        &self,
        method: &str,
        request: Request<T>,
    ) -> Result<Response<R>, Status> {
        let reply = match self.call(method, request).await? {
            Ok(json) => R::of(None, Some(result(&json)?)),
            Err(e) => R::of(Some(e), None),
        };
        Ok(Response::new(reply))
    }
}

type Answer<R> = Result<Response<R>, Status>;

#[tonic::async_trait]
impl CentrifugoApi for GrpcApi {
    async fn publish(&self, r: Request<PublishRequest>) -> Answer<PublishResponse> {
        self.rpc("publish", r).await
    }
    async fn broadcast(&self, r: Request<BroadcastRequest>) -> Answer<BroadcastResponse> {
        self.rpc("broadcast", r).await
    }
    async fn subscribe(&self, r: Request<SubscribeRequest>) -> Answer<SubscribeResponse> {
        self.rpc("subscribe", r).await
    }
    async fn unsubscribe(&self, r: Request<UnsubscribeRequest>) -> Answer<UnsubscribeResponse> {
        self.rpc("unsubscribe", r).await
    }
    async fn disconnect(&self, r: Request<DisconnectRequest>) -> Answer<DisconnectResponse> {
        self.rpc("disconnect", r).await
    }
    async fn refresh(&self, r: Request<RefreshRequest>) -> Answer<RefreshResponse> {
        self.rpc("refresh", r).await
    }
    async fn presence(&self, r: Request<PresenceRequest>) -> Answer<PresenceResponse> {
        self.rpc("presence", r).await
    }
    async fn presence_stats(
        &self,
        r: Request<PresenceStatsRequest>,
    ) -> Answer<PresenceStatsResponse> {
        self.rpc("presence_stats", r).await
    }
    async fn history(&self, r: Request<HistoryRequest>) -> Answer<HistoryResponse> {
        self.rpc("history", r).await
    }
    async fn channels(&self, r: Request<ChannelsRequest>) -> Answer<ChannelsResponse> {
        self.rpc("channels", r).await
    }
    async fn info(&self, r: Request<InfoRequest>) -> Answer<InfoResponse> {
        self.rpc("info", r).await
    }
    async fn history_remove(
        &self,
        r: Request<HistoryRemoveRequest>,
    ) -> Answer<HistoryRemoveResponse> {
        self.rpc("history_remove", r).await
    }

    // roomcast's own methods.
    async fn connections(&self, r: Request<ConnectionsRequest>) -> Answer<ConnectionsResponse> {
        self.rpc("connections", r).await
    }
    async fn delete_publication(
        &self,
        r: Request<DeletePublicationRequest>,
    ) -> Answer<DeletePublicationResponse> {
        self.rpc("delete_publication", r).await
    }
    async fn user_publish(&self, r: Request<UserPublishRequest>) -> Answer<UserPublishResponse> {
        self.rpc("user_publish", r).await
    }
    async fn user_status(&self, r: Request<UserStatusRequest>) -> Answer<UserStatusResponse> {
        self.rpc("user_status", r).await
    }
    async fn add_members(&self, r: Request<AddMembersRequest>) -> Answer<AddMembersResponse> {
        self.rpc("add_members", r).await
    }
    async fn remove_members(
        &self,
        r: Request<RemoveMembersRequest>,
    ) -> Answer<RemoveMembersResponse> {
        self.rpc("remove_members", r).await
    }
    async fn members(&self, r: Request<MembersRequest>) -> Answer<MembersResponse> {
        self.rpc("members", r).await
    }
    async fn read(&self, r: Request<ReadRequest>) -> Answer<ReadResponse> {
        self.rpc("read", r).await
    }
    async fn unread(&self, r: Request<UnreadRequest>) -> Answer<UnreadResponse> {
        self.rpc("unread", r).await
    }
    async fn rooms(&self, r: Request<RoomsRequest>) -> Answer<RoomsResponse> {
        self.rpc("rooms", r).await
    }

    /// A batch has no `error` of its own: a malformed one (too many commands) is
    /// `INVALID_ARGUMENT`; each command's failure is its reply's `error`.
    async fn batch(&self, request: Request<BatchRequest>) -> Answer<BatchResponse> {
        match self.call("batch", request).await? {
            Ok(json) => Ok(Response::new(result(&json)?)),
            Err(e) => Err(Status::invalid_argument(e.message)),
        }
    }
}
