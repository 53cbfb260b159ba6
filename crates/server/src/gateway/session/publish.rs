//! Publishes from the client (each checked on its own, the allowed ones of a batch
//! committed together, each room within its publish rate) and the command rate limit every
//! command passes.

use roomcast_proto::command::PublishRequest;
use roomcast_proto::ErrorCode;

use super::{Now, Services, Session};
use crate::channel::Channel;
use crate::node::internal;

pub(super) use crate::rate::TokenBucket as RateLimit;

impl<S: Services> Session<S> {
    /// Pipelined publishes (consecutive `publish` commands read together): each is checked
    /// and refused on its own, the allowed ones are committed together, in order, and each
    /// gets its reply.
    pub async fn publish_batch(&mut self, commands: Vec<(u32, PublishRequest)>, now: Now) {
        if commands.is_empty() {
            return;
        }
        self.take_refreshed();
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
        self.commit_publishes(allowed, now).await;
    }

    /// Checks each publish, commits the allowed ones together, replies to each.
    pub(super) async fn commit_publishes(
        &mut self,
        commands: Vec<(u32, PublishRequest)>,
        now: Now,
    ) {
        let Some(identity) = self.identity.clone() else {
            return;
        };
        let mut ids = Vec::with_capacity(commands.len());
        let mut items = Vec::with_capacity(commands.len());
        for (id, req) in commands {
            let data_ok = |()| {
                roomcast_proto::data::check(&req.data, self.node.config().max_data_depth)
                    .map_err(|_| ErrorCode::BAD_REQUEST)
            };
            let mut allowed = self
                .may_publish(&identity.user, &req.channel, now)
                .and_then(data_ok);
            let members_only = Channel::resolve(self.node.config(), &req.channel)
                .is_ok_and(|c| c.options.members_only);
            if allowed.is_ok() && members_only {
                allowed = self.node.check_member(&req.channel, &identity.user).await;
            }
            match allowed {
                Ok(()) => {
                    ids.push(id);
                    items.push((req.channel, req.data));
                }
                Err(e) => self.error(id, e),
            }
        }
        // Nothing reaches the store that the publish proxy did not accept.
        let (ids, items) = self.proxy_publishes(ids, items, &identity).await;
        if items.is_empty() {
            return;
        }
        let results = self.node.publish_batch(items, &identity).await;
        for (id, r) in ids.into_iter().zip(results) {
            match r {
                Ok(_) => self.reply(self.format().empty_reply(id, "publish")),
                Err(e) => self.error(id, internal(e)),
            }
        }
    }

    fn may_publish(&self, user: &str, channel_name: &str, now: Now) -> Result<(), ErrorCode> {
        let channel = Channel::resolve(self.node.config(), channel_name)?;
        let allowed = if self.subs.contains_key(channel_name) {
            channel.options.allow_publish_for_subscriber || channel.options.allow_publish_for_client
        } else {
            channel.options.allow_publish_for_client
        };
        if !allowed || !channel.admits(user) {
            return Err(ErrorCode::PERMISSION_DENIED);
        }
        let rate = channel.options.publish_rate_per_room;
        if !self.node.allow_room_publish(channel_name, rate, now.at) {
            return Err(ErrorCode::TOO_MANY_REQUESTS);
        }
        Ok(())
    }
}
