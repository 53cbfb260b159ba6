//! Who of a room's members is offline: a scan over the room's members (the store, in user
//! order, a page at a time) asking the user directory (`personal::Directory`, the source
//! `roomcast.status` and the `user_status` API read) which of them hold no connection on
//! any node. Evaluated when the batch is built, after the publication is stored (see the
//! README's race note in "Offline notifications").

use std::sync::Arc;

use crate::personal::{Directory, DirectoryError};
use crate::store::{Store, StoreError};

/// Members read (and looked up in the directory) per step.
pub(super) const MEMBERS_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub(super) enum ScanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// A scan of one room's offline members, `MEMBERS_PAGE` members per step.
pub(super) struct OfflineScan<'a> {
    store: &'a Arc<dyn Store>,
    directory: &'a Arc<dyn Directory>,
    room: &'a str,
    /// Never notified of its own publication.
    sender: Option<&'a str>,
    /// The last member read; `None` before the first page.
    after: Option<String>,
    done: bool,
}

impl<'a> OfflineScan<'a> {
    pub(super) fn new(
        store: &'a Arc<dyn Store>,
        directory: &'a Arc<dyn Directory>,
        room: &'a str,
        sender: Option<&'a str>,
    ) -> Self {
        OfflineScan {
            store,
            directory,
            room,
            sender,
            after: None,
            done: false,
        }
    }

    /// The offline members of the next page (possibly none); `None` once every member
    /// was read.
    pub(super) async fn next_page(&mut self) -> Result<Option<Vec<String>>, ScanError> {
        if self.done {
            return Ok(None);
        }
        let mut members = self
            .store
            .members(self.room, self.after.as_deref(), MEMBERS_PAGE)
            .await?;
        if members.len() < MEMBERS_PAGE {
            self.done = true;
        }
        if members.is_empty() {
            return Ok(None);
        }
        self.after = members.last().cloned();
        if let Some(s) = self.sender {
            members.retain(|m| m != s);
        }
        let entries = self.directory.lookup(&members).await?;
        Ok(Some(
            members
                .into_iter()
                .zip(entries)
                .filter(|(_, e)| e.nodes.is_empty())
                .map(|(m, _)| m)
                .collect(),
        ))
    }
}
