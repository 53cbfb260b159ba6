//! The directory of a single node (no Redis): in memory, so last-seen times do not survive
//! a restart of the node.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{now_ms, Directory, DirectoryError, UserEntry};

/// Offline users whose last-seen time is kept at most; beyond, the oldest tenth is
/// forgotten (they read as never seen).
pub const MAX_REMEMBERED: usize = 1_000_000;

pub struct LocalDirectory {
    node: String,
    /// Connected users' client ids.
    online: Mutex<HashMap<String, HashSet<String>>>,
    /// Last-seen unix ms of users who were connected (bounded by `MAX_REMEMBERED`).
    seen: Mutex<HashMap<String, i64>>,
}

impl LocalDirectory {
    pub fn new(node: &str) -> LocalDirectory {
        LocalDirectory {
            node: node.to_owned(),
            online: Mutex::default(),
            seen: Mutex::default(),
        }
    }

    fn saw(&self, user: &str) {
        let mut seen = self.seen.lock().expect("seen lock");
        if seen.len() >= MAX_REMEMBERED && !seen.contains_key(user) {
            let mut times: Vec<i64> = seen.values().copied().collect();
            let cut = times.len() / 10;
            let (_, &mut oldest_kept, _) = times.select_nth_unstable(cut);
            seen.retain(|_, t| *t >= oldest_kept);
        }
        seen.insert(user.to_owned(), now_ms());
    }
}

#[async_trait]
impl Directory for LocalDirectory {
    async fn add(&self, user: &str, client: &str) {
        self.online
            .lock()
            .expect("online lock")
            .entry(user.to_owned())
            .or_default()
            .insert(client.to_owned());
        self.saw(user);
    }

    async fn remove(&self, user: &str, client: &str) {
        {
            let mut online = self.online.lock().expect("online lock");
            if let Some(clients) = online.get_mut(user) {
                clients.remove(client);
                if clients.is_empty() {
                    online.remove(user);
                }
            }
        }
        self.saw(user);
    }

    async fn lookup(&self, users: &[String]) -> Result<Vec<UserEntry>, DirectoryError> {
        let online = self.online.lock().expect("online lock");
        let seen = self.seen.lock().expect("seen lock");
        Ok(users
            .iter()
            .map(|u| UserEntry {
                nodes: if online.contains_key(u) {
                    vec![self.node.clone()]
                } else {
                    Vec::new()
                },
                last_seen_ms: seen.get(u).copied(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn online_until_the_last_connection_leaves_then_last_seen() {
        let d = LocalDirectory::new("n1");
        d.add("alice", "c1").await;
        d.add("alice", "c2").await;
        let users = ["alice".to_owned(), "bob".to_owned()];
        let e = d.lookup(&users).await.unwrap();
        assert_eq!(e[0].nodes, vec!["n1".to_owned()]);
        assert_eq!(e[1], UserEntry::default());
        d.remove("alice", "c1").await;
        assert_eq!(d.lookup(&users).await.unwrap()[0].nodes.len(), 1);
        let before = now_ms();
        d.remove("alice", "c2").await;
        let e = d.lookup(&users).await.unwrap();
        assert!(e[0].nodes.is_empty());
        assert!(e[0].last_seen_ms.unwrap() >= before);
    }
}
