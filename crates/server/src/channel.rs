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

/// Longest pattern the `channels` API call accepts.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Whether `name` matches `pattern`, where `*` matches any run of characters (none
/// included) and every other character matches itself.
///
/// Greedy two-pointer matching: on a mismatch after a `*`, the star takes one more
/// character and matching resumes after it. Only the last star is ever revisited (an
/// earlier one can only take what a later one would), so the work is at most
/// `pattern.len() * name.len()` steps, however many stars; the recursive version it
/// replaces backtracked exponentially (5 stars against a 250-character name took minutes).
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Position of the last star seen, and where in the name it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // The last star takes one more character.
            star = Some((sp, sn + 1));
            pi = sp + 1;
            ni = sn + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

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
        let ns = name.split_once(':').map_or("", |(ns, _)| ns);
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
    use proptest::prelude::*;

    /// The obvious exponential definition, as the reference on small inputs.
    fn naive(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| naive(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && naive(rest, &n[1..]),
        }
    }

    #[test]
    fn glob_patterns() {
        assert!(glob("chat:*", "chat:1"));
        assert!(glob("*", "x"));
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbc"));
        assert!(!glob("a*c", "abb"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exac"));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(glob("ü*ß", "üxyß"));
        // The freeze of issue 10: many stars against a long name that does not match.
        let name = "a".repeat(250);
        assert!(!glob("*a*a*a*a*a*a*a*b", &name));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn glob_agrees_with_the_naive_reference(p in "[ab*]{0,8}", n in "[ab]{0,10}") {
            let (pc, nc): (Vec<char>, Vec<char>) = (p.chars().collect(), n.chars().collect());
            prop_assert_eq!(glob(&p, &n), naive(&pc, &nc));
        }

        #[test]
        fn resolve_never_panics(name in any::<String>(), ns in "[a-z:#,]{0,6}") {
            let mut config = Config::default();
            config.namespaces.insert("dm".into(), NamespaceOptions::default());
            let name = format!("{ns}{name}");
            if let Ok(c) = Channel::resolve(&config, &name) {
                let _ = c.admits("alice");
                prop_assert!(name.len() <= MAX_CHANNEL_LEN);
            }
        }
    }

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
