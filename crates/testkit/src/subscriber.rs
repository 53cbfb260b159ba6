//! A subscriber as an SDK behaves: it records every offset it receives on one channel
//! and, when its connection closes, reconnects and recovers from its last offset, so a
//! test can assert that it saw every publication exactly once, in order.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::{Client, Event};

/// A subscriber that keeps every offset it receives and, when its connection closes,
/// reconnects (to `url`) and recovers from its last offset, as an SDK does.
pub struct Subscriber {
    pub client: Client,
    pub url: String,
    pub channel: String,
    pub epoch: String,
    pub offsets: Vec<u64>,
    pub reconnects: u32,
}

impl Subscriber {
    pub async fn start(url: &str, user: &str, channel: &str) -> Subscriber {
        let mut client = Client::connect(url, user).await;
        let s = client.subscribe(channel).await;
        Subscriber {
            client,
            url: url.to_owned(),
            channel: channel.to_owned(),
            epoch: s["epoch"].as_str().unwrap_or_default().to_owned(),
            offsets: Vec::new(),
            reconnects: 0,
        }
    }

    pub fn last(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// Reconnects to `url` and resubscribes with recovery.
    pub async fn recover(&mut self, url: &str) {
        self.url = url.to_owned();
        self.reconnects += 1;
        let mut client = Client::connect(url, "recovering").await;
        let r = client
            .call(
                json!({"subscribe": {"channel": self.channel, "recover": true,
                "offset": self.last(), "epoch": self.epoch}}),
            )
            .await;
        let s = &r["subscribe"];
        assert_eq!(s["recovered"], json!(true), "recovery failed: {r}");
        for p in s["publications"].as_array().cloned().unwrap_or_default() {
            self.offsets.push(p["offset"].as_u64().unwrap());
        }
        self.client = client;
    }

    /// Reads until it has `total` publications, recovering after closes; bounded in time.
    pub async fn collect(&mut self, total: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.last() < total {
            assert!(
                Instant::now() < deadline,
                "{} has {} of {total} publications after {within:?}",
                self.url,
                self.offsets.len()
            );
            match self.client.next().await {
                Event::Frame(v) => {
                    if v["push"]["channel"] == json!(self.channel) {
                        if let Some(o) = v["push"]["pub"]["offset"].as_u64() {
                            self.offsets.push(o);
                        }
                    }
                }
                Event::Closed(code) => {
                    assert!(
                        self.reconnects < 10,
                        "too many reconnects (last close {code:?})"
                    );
                    // Said, so a test that asserts no reconnect shows why there was one.
                    eprintln!("subscriber at {} closed ({code:?}); recovering", self.url);
                    let url = self.url.clone();
                    self.recover(&url).await;
                }
            }
        }
    }

    pub fn assert_complete(&self, total: u64) {
        assert_eq!(
            self.offsets,
            (1..=total).collect::<Vec<_>>(),
            "subscriber at {} must see every offset once, in order",
            self.url
        );
    }
}
