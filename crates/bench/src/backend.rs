//! `roomcast-bench accept-backend`: the application backend of the publish-proxy runs. It
//! answers every HTTP/1.1 POST with `{"result":{}}` (accept, data unchanged) on kept-alive
//! connections, as fast as it can, so a run with `proxy_publish` on measures what the proxy
//! round trip costs the server, not a backend's own work. Requests are parsed with
//! `httparse` and bounded (64 KiB of head and body each); anything else closes the
//! connection. `notify.rs` serves its webhook receiver with the same loop (`serve_on`),
//! looking at each request before the answer.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a server does with each request (its headers and body) before answering 200.
pub(crate) type OnRequest = Arc<dyn Fn(&[httparse::Header<'_>], &[u8]) + Send + Sync>;

/// Largest request head or body this backend reads.
const MAX: usize = 64 << 10;
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"result\":{}}";

/// Listens on `listen`, prints `listening ADDR`, serves until killed.
pub(crate) async fn serve(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("listening {}", listener.local_addr()?);
    serve_on(listener, Arc::new(|_, _| {})).await
}

/// Serves `listener` until it fails, calling `on` for every request.
pub(crate) async fn serve_on(listener: TcpListener, on: OnRequest) -> Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true).ok();
        let on = on.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(tcp, on).await {
                eprintln!("accept-backend: {e:#}");
            }
        });
    }
}

/// Serves one connection's requests in order.
async fn connection(mut tcp: TcpStream, on: OnRequest) -> Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read until a whole request (head and body) is buffered.
        let (head, body) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let httparse::Status::Complete(head) = req.parse(&buf)? {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                anyhow::ensure!(len <= MAX, "body of {len} bytes");
                if buf.len() >= head + len {
                    on(req.headers, &buf[head..head + len]);
                    break (head, len);
                }
            }
            anyhow::ensure!(buf.len() <= 2 * MAX, "request too large");
            let mut chunk = [0u8; 8192];
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..head + body);
        tcp.write_all(ANSWER).await?;
    }
}
