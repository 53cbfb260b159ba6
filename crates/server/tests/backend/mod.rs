//! The test's application backend, shared by the proxy tests: a real HTTP server (axum on
//! a loopback port) that answers each request as the test decides and records them all.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// What the backend does with one request: (HTTP status, body, delay before answering).
type Decide = dyn Fn(&str, &axum::http::HeaderMap, &Value) -> (u16, String, Duration) + Send + Sync;

/// A request the backend got: path, `Cookie` header, JSON body.
pub(crate) type Seen = (String, Option<String>, Value);

/// The test's application backend; records every request (path, cookie, body).
pub(crate) struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub(crate) async fn start(
        decide: impl Fn(&str, &axum::http::HeaderMap, &Value) -> (u16, String, Duration)
            + Send
            + Sync
            + 'static,
    ) -> Backend {
        use axum::response::IntoResponse;
        let decide: Arc<Decide> = Arc::new(decide);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
                let (decide, seen) = (decide.clone(), s.clone());
                async move {
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let cookie = headers
                        .get("cookie")
                        .map(|v| v.to_str().unwrap().to_owned());
                    seen.lock()
                        .unwrap()
                        .push((uri.path().to_owned(), cookie, body.clone()));
                    let (status, answer, delay) = decide(uri.path(), &headers, &body);
                    tokio::time::sleep(delay).await;
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("content-type", "application/json")],
                        answer,
                    )
                        .into_response()
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Backend { addr, seen, task }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub(crate) fn ok(v: Value) -> (u16, String, Duration) {
    (200, v.to_string(), Duration::ZERO)
}
