//! Channel names: `room`, `ns:room`, and user-limited `ns:dialog#alice,bob`.
//!
//! The namespace is the part before the first `:`; a `#` starts the list of the only users
//! allowed in the channel, comma separated.

use crate::config::NamespaceOptions;

/// Where channel namespaces are configured (the node's `Config`, or the session's narrower
/// `SessionConfig`).
pub trait Namespaces {
    /// The options of a namespace name ("" for the default one); `None` when not configured.
    fn namespace(&self, name: &str) -> Option<&NamespaceOptions>;
}
use roomcast_proto::ErrorCode;

/// Longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A channel name resolved against the configuration.
pub struct Channel<'a> {
    pub options: &'a NamespaceOptions,
    /// Users allowed in a user-limited channel; `None` when anyone may be.
    allowed_users: Option<&'a str>,
}

impl<'a> Channel<'a> {
    /// Resolves a name: bad request for an empty or over-long name or one with control
    /// characters, unknown channel for a namespace that is not configured.
    pub fn resolve<N: Namespaces + ?Sized>(
        config: &'a N,
        name: &'a str,
    ) -> Result<Channel<'a>, ErrorCode> {
        if name.is_empty() || name.len() > MAX_CHANNEL_LEN || name.chars().any(char::is_control) {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let ns = name.split_once(':').map(|(ns, _)| ns).unwrap_or("");
        let options = config.namespace(ns).ok_or(ErrorCode::UNKNOWN_CHANNEL)?;
        let allowed_users = name.split_once('#').map(|(_, users)| users);
        Ok(Channel {
            options,
            allowed_users,
        })
    }

    /// Whether `user` may be in this channel at all.
    pub fn admits(&self, user: &str) -> bool {
        match self.allowed_users {
            None => true,
            Some(list) => !user.is_empty() && list.split(',').any(|u| u == user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn namespaces_and_user_limited_channels() {
        let mut config = Config::default();
        config
            .namespaces
            .insert("dm".into(), NamespaceOptions::default());
        assert!(Channel::resolve(&config, "lobby").unwrap().admits("anyone"));
        let c = Channel::resolve(&config, "dm:chat#alice,bob").unwrap();
        assert!(c.admits("alice") && c.admits("bob"));
        assert!(!c.admits("carol") && !c.admits("") && !c.admits("ali"));
        assert_eq!(
            Channel::resolve(&config, "nope:x").err(),
            Some(ErrorCode::UNKNOWN_CHANNEL)
        );
        assert_eq!(
            Channel::resolve(&config, "").err(),
            Some(ErrorCode::BAD_REQUEST)
        );
        assert_eq!(
            Channel::resolve(&config, &"x".repeat(300)).err(),
            Some(ErrorCode::BAD_REQUEST)
        );
    }
}
