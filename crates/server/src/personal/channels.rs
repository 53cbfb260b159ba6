//! How personal channels are named: `#<user>` in the default namespace, `ns:#<user>` in
//! `user_personal_channel_namespace`. A name is personal only if it is exactly that
//! shape for one user (no `,`: a user list of several users is a dialog, not a personal
//! channel), so `ns:dialog#alice` or `#alice,bob` are ordinary rooms.

use crate::channel::MAX_CHANNEL_LEN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalChannels {
    /// `"#"` or `"ns:#"`.
    prefix: String,
}

impl PersonalChannels {
    pub fn new(namespace: &str) -> PersonalChannels {
        let prefix = if namespace.is_empty() {
            "#".to_owned()
        } else {
            format!("{namespace}:#")
        };
        PersonalChannels { prefix }
    }

    /// The personal channel of `user`; `None` for a user that cannot have one (anonymous,
    /// a `,` in the id, or a name over the channel length limit).
    pub fn channel(&self, user: &str) -> Option<String> {
        let ok = !user.is_empty()
            && !user.contains(',')
            && self.prefix.len() + user.len() <= MAX_CHANNEL_LEN;
        ok.then(|| format!("{}{user}", self.prefix))
    }

    /// The user whose personal channel `room` is, if it is one.
    pub fn user_of<'a>(&self, room: &'a str) -> Option<&'a str> {
        room.strip_prefix(self.prefix.as_str())
            .filter(|u| !u.is_empty() && !u.contains(','))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_dialogs_are_not_personal() {
        let p = PersonalChannels::new("");
        assert_eq!(p.channel("alice").as_deref(), Some("#alice"));
        assert_eq!(p.user_of("#alice"), Some("alice"));
        assert_eq!(p.user_of("#alice,bob"), None);
        assert_eq!(p.user_of("dialog#alice"), None);
        assert_eq!(p.user_of("#"), None);
        assert_eq!(p.channel(""), None);
        assert_eq!(p.channel("a,b"), None);
        assert_eq!(p.channel(&"x".repeat(255)), None);
        let p = PersonalChannels::new("me");
        assert_eq!(p.channel("bob").as_deref(), Some("me:#bob"));
        assert_eq!(p.user_of("me:#bob"), Some("bob"));
        assert_eq!(p.user_of("#bob"), None);
    }
}
