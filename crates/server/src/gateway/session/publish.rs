//! Publishes from the client (each checked on its own, the allowed ones of a batch
//! committed together) and the command rate limit every command passes.

use roomcast_proto::command::PublishRequest;
use roomcast_proto::{encode_empty_reply, ErrorCode};
use tokio::time::Instant;

use super::{Now, Services, Session};
use crate::channel::Channel;
use crate::node::internal;

/// A token bucket: `rate` commands a second on average, bursts up to twice that. Time is
/// passed in, so tests drive it.
pub(super) struct RateLimit {
    tokens: f32,
    last: Instant,
}

impl RateLimit {
    pub(super) fn new(rate: u32, now: Instant) -> RateLimit {
        RateLimit {
            tokens: rate as f32 * 2.0,
            last: now,
        }
    }

    pub(super) fn allow(&mut self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let refill = now.saturating_duration_since(self.last).as_secs_f32() * rate as f32;
        self.last = now;
        self.tokens = (self.tokens + refill).min(rate as f32 * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl<S: Services> Session<S> {
    /// Pipelined publishes (consecutive `publish` commands read together): each is checked
    /// and refused on its own, the allowed ones are committed together, in order, and each
    /// gets its reply.
    pub async fn publish_batch(&mut self, commands: Vec<(u32, PublishRequest)>, now: Now) {
        if commands.is_empty() {
            return;
        }
        let mut allowed = Vec::with_capacity(commands.len());
        for (id, req) in commands {
            if self
                .budget
                .allow(self.node.config().commands_per_second, now.at)
            {
                allowed.push((id, req));
            } else {
                self.error(id, ErrorCode::TOO_MANY_REQUESTS);
            }
        }
        self.commit_publishes(allowed).await;
    }

    /// Checks each publish, commits the allowed ones together, replies to each.
    pub(super) async fn commit_publishes(&mut self, commands: Vec<(u32, PublishRequest)>) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let mut ids = Vec::with_capacity(commands.len());
        let mut items = Vec::with_capacity(commands.len());
        for (id, req) in commands {
            match self.may_publish(&identity.user, &req.channel) {
                Ok(()) => {
                    ids.push(id);
                    items.push((req.channel, req.data));
                }
                Err(e) => self.error(id, e),
            }
        }
        let results = self.node.publish_batch(items, &identity).await;
        for (id, r) in ids.into_iter().zip(results) {
            match r {
                Ok(_) => self.reply(encode_empty_reply(id, "publish")),
                Err(e) => self.error(id, internal(e)),
            }
        }
    }

    fn may_publish(&self, user: &str, channel_name: &str) -> Result<(), ErrorCode> {
        let channel = Channel::resolve(self.node.config(), channel_name)?;
        let allowed = if self.subs.contains_key(channel_name) {
            channel.options.allow_publish_for_subscriber || channel.options.allow_publish_for_client
        } else {
            channel.options.allow_publish_for_client
        };
        if allowed && channel.admits(user) {
            Ok(())
        } else {
            Err(ErrorCode::PERMISSION_DENIED)
        }
    }
}
