//! The server API client: a minimal HTTP/1.1 POST over a raw socket (the tests need no
//! HTTP client dependency), and the two calls every test makes, bounded by [`WAIT`].

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{API_KEY, WAIT};

/// `POST /api/{method}` with `body`, and `X-API-Key: key` when given; returns the status
/// and the JSON body (`Null` when the body is not JSON).
pub async fn api_raw(
    addr: SocketAddr,
    method: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    try_api_raw(addr, method, key, body).await.unwrap()
}

/// Calls `method` with the kit's API key, bounded by `within`; `Ok` only for HTTP 200
/// (the body), else the error (refused, timed out, status and body). For runs where a
/// node may be down.
pub async fn try_api(
    addr: SocketAddr,
    method: &str,
    body: &Value,
    within: Duration,
) -> Result<Value, String> {
    let body = body.to_string();
    let call = try_api_raw(addr, method, Some(API_KEY), &body);
    match tokio::time::timeout(within, call).await {
        Err(_) => Err(format!("{method}: no answer within {within:?}")),
        Ok(Err(e)) => Err(format!("{method}: {e}")),
        Ok(Ok((200, v))) => Ok(v),
        Ok(Ok((status, v))) => Err(format!("{method}: HTTP {status}: {v}")),
    }
}

/// [`api_raw`] with I/O errors returned instead of panicking.
pub async fn try_api_raw(
    addr: SocketAddr,
    method: &str,
    key: Option<&str>,
    body: &str,
) -> Result<(u16, Value), String> {
    let key_header = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{key_header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, body) = exchange(addr, &req).await?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the whole
/// answer: its status and body.
async fn exchange(addr: SocketAddr, req: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8(out).map_err(|e| e.to_string())?;
    let status: u16 = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP reply: {text:.200}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// `GET path` (e.g. `/ready`), bounded by `within`: the status and the body as text.
pub async fn get(addr: SocketAddr, path: &str, within: Duration) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let call = exchange(addr, &req);
    tokio::time::timeout(within, call)
        .await
        .map_err(|_| format!("GET {path}: no answer within {within:?}"))?
}

/// Calls `method` with the kit's API key; asserts an answer within [`WAIT`] with HTTP 200
/// and returns the body.
pub async fn api(addr: SocketAddr, method: &str, body: Value) -> Value {
    let body = body.to_string();
    let call = api_raw(addr, method, Some(API_KEY), &body);
    let (status, v) = tokio::time::timeout(WAIT, call)
        .await
        .expect("API answered in time");
    assert_eq!(status, 200, "{method}: {v}");
    v
}

/// Publishes through the server API; returns the offset (panics on an error reply).
pub async fn publish(addr: SocketAddr, channel: &str, data: Value) -> u64 {
    let v = api(addr, "publish", json!({"channel": channel, "data": data})).await;
    v["result"]["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("publish failed: {v}"))
}
