//! HTTP requests this node makes to other services: the JWKS it fetches token keys from and
//! the application backend its proxies ask (connect, publish). One pooled client; every
//! request has a deadline covering connect, headers and body, and a response body cap, so
//! a slow or hostile peer costs at most `timeout` and `max_bytes`.
//!
//! Plain `http://` only: the backend and key server are expected on the same private
//! network (or behind a local TLS-terminating sidecar); an `https://` URL is refused when
//! the configuration is loaded rather than sent in clear.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("invalid URL {0:?} (only http:// URLs are supported)")]
    Url(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
    #[error("HTTP status {0}")]
    Status(StatusCode),
}

/// A response with a 2xx status and its whole body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

/// The node's outbound HTTP client (cheap to clone: the pool is shared).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

/// Checks a URL this node will send requests to.
pub fn parse_url(url: &str) -> Result<Uri, OutboundError> {
    let uri: Uri = url.parse().map_err(|_| OutboundError::Url(url.into()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(OutboundError::Url(url.into()));
    }
    Ok(uri)
}

impl HttpClient {
    pub fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // The connect phase is also under each request's deadline; this only stops a
        // connection attempt from outliving it in the pool's background.
        connector.set_connect_timeout(Some(Duration::from_secs(30)));
        let inner = Client::builder(TokioExecutor::new())
            // Idle connections are kept a while (one per concurrent request at most).
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        HttpClient { inner }
    }

    /// Sends `req`; the answer must arrive, body included, within `timeout`, be at most
    /// `max_bytes` long and have a 2xx status.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response, OutboundError> {
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| OutboundError::Transport(error_chain(&e)))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(OutboundError::Status(status));
            }
            let body = Limited::new(resp.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        OutboundError::TooLarge(max_bytes)
                    } else {
                        OutboundError::Transport(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Response { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| OutboundError::Timeout(timeout))?
    }

    /// GETs `uri`.
    pub async fn get(
        &self,
        uri: &Uri,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response, OutboundError> {
        let req = Request::get(uri.clone())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| OutboundError::Transport(e.to_string()))?;
        self.send(req, timeout, max_bytes).await
    }

    /// POSTs a JSON body to `uri` with extra `headers`.
    pub async fn post_json(
        &self,
        uri: &Uri,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: Vec<u8>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response, OutboundError> {
        let mut req = Request::post(uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| OutboundError::Transport(e.to_string()))?;
        for (name, value) in headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        self.send(req, timeout, max_bytes).await
    }
}

/// An error and its causes on one line (hyper's outer errors say little alone).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(parse_url("http://127.0.0.1:9/keys").is_ok());
        for bad in [
            "https://example.com/x",
            "ftp://h/x",
            "/relative",
            "",
            "http://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
