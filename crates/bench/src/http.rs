//! A minimal HTTP/1.1 keep-alive client for publishing through server APIs (roomcast `POST
//! /api/publish`, Sockudo's signed Pusher REST API). A whole HTTP stack would cost more build time than
//! the ~100 lines these two fixed request shapes need; responses must carry Content-Length.

use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use std::fmt::Write as _;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) struct HttpConn {
    addr: SocketAddr,
    stream: TcpStream,
    /// Bytes read past the previous response (none with strict request/response, kept for safety).
    buf: Vec<u8>,
    /// The server said `Connection: close` (Sockudo does on every response): reconnect before the next
    /// request rather than write into a socket the server is closing.
    must_reconnect: bool,
    /// How many TCP connections this client had to open, reported so per-request reconnects show.
    pub connections: u64,
}

impl HttpConn {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<HttpConn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            addr,
            stream,
            buf: Vec::with_capacity(4096),
            must_reconnect: false,
            connections: 1,
        })
    }

    /// Sends a POST with a JSON body and returns (status, body).
    pub(crate) async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, Vec<u8>)> {
        if self.must_reconnect {
            let fresh = HttpConn::connect(self.addr).await?;
            self.stream = fresh.stream;
            self.buf.clear();
            self.must_reconnect = false;
            self.connections += 1;
        }
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            let _ = write!(req, "{k}: {v}\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).await?;
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(head) = resp.parse(&self.buf)? {
                let status = resp.code.unwrap_or(0);
                let mut len = None;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    }
                    if h.name.eq_ignore_ascii_case("connection")
                        && h.value.eq_ignore_ascii_case(b"close")
                    {
                        self.must_reconnect = true;
                    }
                    if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        bail!("chunked responses are not supported by the bench's HTTP client");
                    }
                }
                let len = len.unwrap_or(0);
                while self.buf.len() < head + len {
                    self.read_more().await?;
                }
                let body = self.buf[head..head + len].to_vec();
                self.buf.drain(..head + len);
                return Ok((status, body));
            }
            self.read_more().await?;
        }
    }

    async fn read_more(&mut self) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("server closed the HTTP connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Path with query string for a signed Pusher `POST /apps/<id>/<what>` (`events` or `batch_events`,
/// auth version 1.0).
pub(crate) fn pusher_path(
    what: &str,
    app_id: &str,
    key: &str,
    secret: &str,
    body: &str,
    unix_secs: u64,
) -> String {
    let path = format!("/apps/{app_id}/{what}");
    let md5 = hex(&Md5::digest(body.as_bytes()));
    // Parameters in lexicographic order, as the signature requires.
    let query =
        format!("auth_key={key}&auth_timestamp={unix_secs}&auth_version=1.0&body_md5={md5}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("POST\n{path}\n{query}").as_bytes());
    format!(
        "{path}?{query}&auth_signature={}",
        hex(&mac.finalize().into_bytes())
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn pusher_signature_shape() {
        let p = super::pusher_path("events", "1", "k", "s", "{}", 1);
        assert!(p.starts_with("/apps/1/events?auth_key=k&auth_timestamp=1&auth_version=1.0&body_md5=99914b932bd37a50b983c5e7c90ae93b&auth_signature="));
    }
}
