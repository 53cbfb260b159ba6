//! The node's own web pages, embedded in the binary (no build step, no files to deploy):
//!
//! - `GET /` the chat page (`assets/chat.html` + `chat.js`, with `dom.js` and `page.css`
//!   shared with the admin page): a small client that speaks the
//!   JSON protocol over `/connection/websocket` directly (centrifuge-js stays the SDK the
//!   interop suite tests against);
//! - `GET /admin` the admin page (`assets/admin.html` + `admin.js`): it calls the server
//!   HTTP API with the key the operator types in (kept in the tab's `sessionStorage`), so
//!   the page itself holds no secret and needs none to be served;
//! - `POST /page/login` `{"user": "alice"}` -> `{"token": "..."}`: in insecure mode only,
//!   a connection token for the name picked on the chat page (`login.rs`).
//!
//! All of it is off with `web_pages = false` (the routes are then not mounted: 404).
//! Assets are `&'static` bytes served with their type, `no-cache` (a new binary's pages
//! are seen at once) and `nosniff`; the pages load nothing from other origins.

mod login;

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::node::Node;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The embedded files: the path each is served at, its content type, its bytes.
const ASSETS: [(&str, &str, &str); 7] = [
    ("/", HTML, include_str!("../../../assets/chat.html")),
    ("/chat.js", JS, include_str!("../../../assets/chat.js")),
    ("/admin", HTML, include_str!("../../../assets/admin.html")),
    ("/admin.js", JS, include_str!("../../../assets/admin.js")),
    ("/dom.js", JS, include_str!("../../../assets/dom.js")),
    (
        "/page.css",
        "text/css; charset=utf-8",
        include_str!("../../../assets/page.css"),
    ),
    (
        "/favicon.ico",
        "image/svg+xml",
        include_str!("../../../assets/favicon.svg"),
    ),
];

/// What the pages ask of every browser: scripts and styles from this origin only, and
/// connections to this origin (the WebSocket and the API).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self' ws: wss:; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The pages' routes, to merge into the node's router (only with `web_pages` on).
pub(super) fn routes(node: Arc<Node>) -> Router {
    let mut r = Router::new();
    for (path, content_type, body) in ASSETS {
        r = r.route(path, get(move || async move { serve(content_type, body) }));
    }
    r.route("/page/login", post(login::login)).with_state(node)
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}
