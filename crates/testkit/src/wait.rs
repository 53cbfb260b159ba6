//! Waiting for a condition that becomes true eventually (a heartbeat, an expiry), with a
//! deadline so a test fails instead of hanging.

use std::time::Duration;

use tokio::time::{sleep, Instant};

/// Polls `check` every 200 ms until it returns true; panics naming `what` once `within`
/// has passed.
pub async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        sleep(Duration::from_millis(200)).await;
    }
}
