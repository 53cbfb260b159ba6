//! The gRPC server API (issue 14): Centrifugo's `CentrifugoApi` service over tonic, on its
//! own port (`grpc_api_address`, off by default), with the API key in the metadata as
//! `authorization: apikey <key>`, as Centrifugo takes it.
//!
//! There is no second implementation of the methods: a request message is turned into the
//! HTTP API's JSON body (the generated types derive serde with the same field names, see
//! `build.rs`), run by `http::api::dispatch`, and the result read back into the reply
//! message. Limits are the HTTP API's: the same `api_max_in_flight` slots, a request of at
//! most `API_MAX_BODY` bytes, `batch`'s command limit.
//!
//! - `service.rs`: the service (key check, slot, bridge, one method per rpc);
//! - `json_bytes.rs`: serde of the `bytes` fields holding application JSON;
//! - `proto`: what `build.rs` generates from `proto/api.proto`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::http::api::{Api, API_MAX_BODY};
use crate::node::Node;

pub mod json_bytes;
mod service;

pub use service::GrpcApi;

/// The types and service generated from `proto/api.proto` (see `build.rs`).
#[allow(
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    unused_qualifications,
    missing_docs
)]
pub mod proto {
    tonic::include_proto!("centrifugal.centrifugo.api");
}

/// HTTP/2 streams one gRPC connection may have open at once (calls beyond wait for one;
/// the `api_max_in_flight` slots bound the calls of all connections together).
const MAX_STREAMS: u32 = 256;

/// Binds `addr` and serves the gRPC API until the node shuts down (tracked, so the drain
/// waits for it). Returns the bound address.
pub async fn start(node: &Arc<Node>, addr: SocketAddr, api: Api) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the gRPC API address {addr}"))?;
    let bound = listener.local_addr()?;
    let service = proto::centrifugo_api_server::CentrifugoApiServer::new(GrpcApi::new(api))
        .max_decoding_message_size(API_MAX_BODY);
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let shutdown = node.shutdown.clone();
    node.tasks.spawn(async move {
        let served = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "gRPC API stopped");
        }
    });
    tracing::info!(%bound, "gRPC API listening on {bound}");
    Ok(bound)
}
