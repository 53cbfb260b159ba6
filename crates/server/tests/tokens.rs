//! RS256, ES256 and JWKS tokens: keys fixed in tests/keys (generated with openssl), a JWKS
//! served by a real HTTP server the test starts and changes (rotation, outage), the
//! accepted algorithms pinned by configuration (alg confusion refused).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use roomcast::auth::{now_secs, Claims};
use roomcast_testkit::*;
use serde_json::{json, Value};

fn key(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(key(name)).unwrap()
}

fn claims(user: &str) -> Claims {
    Claims {
        sub: user.into(),
        exp: Some(now_secs() + 600),
        ..Claims::default()
    }
}

/// A token for `user` signed with a private key of tests/keys, `kid` in its header.
fn signed(alg: Algorithm, private: &str, kid: Option<&str>, user: &str) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read(private)).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read(private)).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    encode(&header, &claims(user), &key).unwrap()
}

/// Connects with `token`: the user of the connect reply, or the close code.
async fn try_connect(s: &TestServer, token: &str) -> Result<(), Option<u16>> {
    let mut c = Client::open(&s.ws_url()).await;
    c.send(json!({"connect": {"token": token}})).await;
    match c.next().await {
        Event::Frame(r) if r.get("connect").is_some() => Ok(()),
        Event::Frame(r) => panic!("unexpected reply {r}"),
        Event::Closed(code) => Err(code),
    }
}

#[tokio::test]
async fn rs256_and_es256_tokens_with_configured_public_keys_are_accepted() {
    let rsa_inline = String::from_utf8(read("rsa1.pub")).unwrap();
    let s = TestServer::start_with(|c| {
        c.token_rsa_public_key = Some(rsa_inline);
        c.token_ecdsa_public_key = Some(key("ec1.pub")); // a file path
    })
    .await;
    for t in [
        signed(Algorithm::RS256, "rsa1.key", None, "alice"),
        signed(Algorithm::ES256, "ec1.key", None, "bob"),
        token("carol"), // HS256 still accepted by default
    ] {
        assert_eq!(try_connect(&s, &t).await, Ok(()));
    }
    // Another RSA key's signature is refused.
    let other = signed(Algorithm::RS256, "rsa2.key", None, "mallory");
    assert_eq!(try_connect(&s, &other).await, Err(Some(3500)));
}

/// An HS256 token whose HMAC key is the server's RSA public key (PEM bytes), the classic
/// algorithm-confusion forgery.
fn confused(user: &str) -> String {
    let key = EncodingKey::from_secret(&read("rsa1.pub"));
    encode(&Header::new(Algorithm::HS256), &claims(user), &key).unwrap()
}

#[tokio::test]
async fn algorithms_are_pinned_and_alg_confusion_is_refused() {
    let pinned = TestServer::start_with(|c| {
        c.token_rsa_public_key = Some(key("rsa1.pub"));
        c.token_algorithms = vec!["RS256".into()];
    })
    .await;
    assert_eq!(
        try_connect(&pinned, &confused("mallory")).await,
        Err(Some(3500))
    );
    // HS256 is not accepted at all, even properly signed.
    assert_eq!(try_connect(&pinned, &token("alice")).await, Err(Some(3500)));
    let rs = signed(Algorithm::RS256, "rsa1.key", None, "alice");
    assert_eq!(try_connect(&pinned, &rs).await, Ok(()));
    // With HS256 accepted too, the forgery is checked against the HMAC secret: refused.
    let both = TestServer::start_with(|c| c.token_rsa_public_key = Some(key("rsa1.pub"))).await;
    assert_eq!(
        try_connect(&both, &confused("mallory")).await,
        Err(Some(3500))
    );
    // An ES256 header on an RSA signature: no ES256 key, refused.
    let es = signed(Algorithm::RS256, "rsa1.key", None, "x").replacen(
        &b64(r#"{"typ":"JWT","alg":"RS256"}"#),
        &b64(r#"{"typ":"JWT","alg":"ES256"}"#),
        1,
    );
    assert_eq!(try_connect(&both, &es).await, Err(Some(3500)));
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn a_token_algorithm_without_a_key_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.token_algorithms = vec!["ES256".into()];
    assert!(roomcast::Server::start(c).await.is_err());
    let mut c = config(dir.path());
    c.token_algorithms = vec!["HS512".into()];
    assert!(roomcast::Server::start(c).await.is_err());
    let mut c = config(dir.path());
    c.token_rsa_public_key =
        Some("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----".into());
    assert!(roomcast::Server::start(c).await.is_err());
}

/// What the test's key server answers.
#[derive(Clone)]
enum Answer {
    Keys(Vec<&'static str>),
    Status(u16),
    Garbage,
    Slow,
    /// The keys, padded past `token_jwks_max_bytes`.
    Huge(Vec<&'static str>),
}

/// A JWKS server on a loopback port: serves the keys of tests/keys/jwks.json the test
/// names, or fails as told; counts requests.
struct KeyServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyServer {
    async fn start(answer: Answer) -> KeyServer {
        use axum::response::IntoResponse;
        let all: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (a, h, all) = (a.clone(), h.clone(), all.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let answer = a.lock().unwrap().clone();
                    match answer {
                        Answer::Keys(kids) => {
                            let keys: Vec<Value> = kids.iter().map(|k| all[k].clone()).collect();
                            axum::Json(json!({ "keys": keys })).into_response()
                        }
                        Answer::Status(s) => {
                            axum::http::StatusCode::from_u16(s).unwrap().into_response()
                        }
                        Answer::Garbage => "{\"keys\": [".into_response(),
                        Answer::Huge(kids) => {
                            let keys: Vec<Value> = kids.iter().map(|k| all[k].clone()).collect();
                            let pad = " ".repeat(64 << 10);
                            format!("{{\"keys\": {}{pad}}}", json!(keys)).into_response()
                        }
                        Answer::Slow => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            "{}".into_response()
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        KeyServer {
            addr,
            answer,
            hits,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn jwks_rotation_accepts_the_new_kid_and_refuses_the_removed_key() {
    let keys = KeyServer::start(Answer::Keys(vec!["rsa1", "ec1"])).await;
    let url = keys.url();
    let s = TestServer::start_with(|c| {
        c.token_jwks_url = Some(url);
        c.token_jwks_min_refresh_secs = 0;
    })
    .await;
    let rsa1 = signed(Algorithm::RS256, "rsa1.key", Some("rsa1"), "alice");
    let rsa2 = signed(Algorithm::RS256, "rsa2.key", Some("rsa2"), "alice");
    let ec1 = signed(Algorithm::ES256, "ec1.key", Some("ec1"), "bob");
    assert_eq!(try_connect(&s, &rsa1).await, Ok(()));
    assert_eq!(try_connect(&s, &ec1).await, Ok(()));
    // rsa2 is not published yet: refused (after a refresh that did not find it).
    assert_eq!(try_connect(&s, &rsa2).await, Err(Some(3500)));
    // A token naming kid rsa1 but signed by rsa2: refused.
    let forged = signed(Algorithm::RS256, "rsa2.key", Some("rsa1"), "mallory");
    assert_eq!(try_connect(&s, &forged).await, Err(Some(3500)));
    // An ES256 header naming the RSA key: the key verifies RS256 only.
    let wrong_alg = signed(Algorithm::ES256, "ec1.key", Some("rsa1"), "mallory");
    assert_eq!(try_connect(&s, &wrong_alg).await, Err(Some(3500)));

    // The issuer rotates: rsa2 in, rsa1 out. The unknown kid makes the node fetch again.
    keys.set(Answer::Keys(vec!["rsa2"]));
    assert_eq!(try_connect(&s, &rsa2).await, Ok(()));
    assert_eq!(try_connect(&s, &rsa1).await, Err(Some(3500)));
}

#[tokio::test]
async fn unknown_kid_refreshes_are_rate_limited() {
    let keys = KeyServer::start(Answer::Keys(vec!["rsa1"])).await;
    let url = keys.url();
    let s = TestServer::start_with(|c| {
        c.token_jwks_url = Some(url);
        c.token_jwks_min_refresh_secs = 3600;
    })
    .await;
    assert_eq!(keys.hits(), 1, "fetched once at start");
    for i in 0..5 {
        let t = signed(
            Algorithm::RS256,
            "rsa1.key",
            Some(&format!("made-up-{i}")),
            "m",
        );
        assert_eq!(try_connect(&s, &t).await, Err(Some(3500)));
    }
    assert_eq!(
        keys.hits(),
        1,
        "no fetch within the minimum refresh interval"
    );
}

#[tokio::test]
async fn a_failing_jwks_keeps_the_last_good_keys() {
    let keys = KeyServer::start(Answer::Keys(vec!["rsa1"])).await;
    let url = keys.url();
    let s = TestServer::start_with(|c| {
        c.token_jwks_url = Some(url);
        c.token_jwks_refresh_secs = 1;
        c.token_jwks_timeout_ms = 300;
        c.token_jwks_min_refresh_secs = 0;
        c.token_jwks_max_bytes = 16 << 10;
    })
    .await;
    let rsa1 = signed(Algorithm::RS256, "rsa1.key", Some("rsa1"), "alice");
    assert_eq!(try_connect(&s, &rsa1).await, Ok(()));
    // Over the size limit, even with the new key in it: not taken.
    keys.set(Answer::Huge(vec!["rsa2"]));
    let rsa2 = signed(Algorithm::RS256, "rsa2.key", Some("rsa2"), "alice");
    assert_eq!(try_connect(&s, &rsa2).await, Err(Some(3500)));
    assert_eq!(try_connect(&s, &rsa1).await, Ok(()));
    for answer in [
        Answer::Status(500),
        Answer::Garbage,
        Answer::Keys(vec![]),
        Answer::Slow,
    ] {
        let before = keys.hits();
        keys.set(answer);
        // The periodic refresh runs (and fails) at least once more.
        eventually(WAIT, "a JWKS refresh", async || keys.hits() > before).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(try_connect(&s, &rsa1).await, Ok(()));
    }
    // The key server gone entirely (connection refused): still the last good keys.
    drop(keys);
    assert_eq!(try_connect(&s, &rsa2).await, Err(Some(3500)));
    assert_eq!(try_connect(&s, &rsa1).await, Ok(()));
}

#[tokio::test]
async fn a_slow_jwks_at_start_does_not_hold_the_node() {
    let keys = KeyServer::start(Answer::Slow).await;
    let url = keys.url();
    let started = std::time::Instant::now();
    let s = TestServer::start_with(|c| {
        c.token_jwks_url = Some(url);
        c.token_jwks_timeout_ms = 200;
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    // HS256 tokens work meanwhile; JWKS tokens are refused until a refresh succeeds.
    assert_eq!(try_connect(&s, &token("alice")).await, Ok(()));
}
