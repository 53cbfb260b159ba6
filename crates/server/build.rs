//! Compiles `proto/api.proto` (the gRPC server API) into Rust types and a tonic service
//! with a pure-Rust schema compiler (`protox`), so a build needs nothing but Cargo: no
//! `protoc` on the machine (as `roomcast-proto` does for the client protocol).
//!
//! Every message also derives serde with the JSON field names of the HTTP API, so a gRPC
//! request becomes the HTTP API's JSON body and a result the gRPC reply (`grpc/bridge.rs`):
//! one implementation of every method behind both. `bytes` fields holding application
//! JSON (`data`, `info`, ...) go through `grpc::json_bytes`, as JSON, not arrays of numbers.

/// The `bytes` fields that hold application JSON.
const JSON_BYTES: [&str; 10] = [
    "PublishRequest.data",
    "BroadcastRequest.data",
    "SubscribeRequest.info",
    "SubscribeRequest.data",
    "RefreshRequest.info",
    "ClientInfo.conn_info",
    "ClientInfo.chan_info",
    "Publication.data",
    "UserPublishRequest.data",
    "RoomPreview.data",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let files = protox::compile(["api.proto"], ["proto"])?;
    let mut build = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .type_attribute(
            ".",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        );
    for field in JSON_BYTES {
        build = build.field_attribute(
            field,
            "#[serde(with = \"crate::grpc::json_bytes\", skip_serializing_if = \"Vec::is_empty\")]",
        );
    }
    build.compile_fds(files)?;
    Ok(())
}
