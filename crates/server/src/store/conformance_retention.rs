//! The conformance cases of retention, deletion and clearing (see `retention.rs` and
//! `Store::delete`/`Store::clear`), run by `conformance::run_all` on every store.

use std::sync::Arc;
use std::time::Duration;

use super::conformance::msg;
use super::retention::Limits;
use super::{Range, Store};

fn all() -> Range {
    Range {
        since: None,
        limit: 100,
        reverse: false,
    }
}

async fn offsets(store: &dyn Store, room: &str, range: Range) -> Vec<u64> {
    let (msgs, _) = store.range(room, range).await.unwrap();
    msgs.iter().map(|m| m.offset).collect()
}

fn only(room: &'static str, limits: Limits) -> super::retention::Policy {
    Arc::new(move |r: &str| if r == room { limits } else { Limits::default() })
}

/// `history_size`: reads return the newest `size`; the commit deleted the rest (they do
/// not come back when the limit is lifted); offsets go on, never reused.
pub async fn trims_by_count(store: &dyn Store) {
    store.set_retention(only("sized", Limits { size: 3, ttl_ms: 0 }));
    for i in 1..=10 {
        store
            .append(msg("sized", &i.to_string(), None))
            .await
            .unwrap();
        store
            .append(msg("kept", &i.to_string(), None))
            .await
            .unwrap();
    }
    assert_eq!(offsets(store, "sized", all()).await, [8, 9, 10]);
    assert_eq!(
        offsets(store, "kept", all()).await.len(),
        10,
        "other rooms keep all"
    );
    let reverse = Range {
        since: None,
        limit: 100,
        reverse: true,
    };
    assert_eq!(offsets(store, "sized", reverse).await, [10, 9, 8]);
    let since_trimmed = Range {
        since: Some(2),
        limit: 100,
        reverse: false,
    };
    assert_eq!(offsets(store, "sized", since_trimmed).await, [8, 9, 10]);
    assert_eq!(store.position("sized").await.unwrap().offset, 10);
    let r = store.append(msg("sized", "11", None)).await.unwrap();
    assert_eq!(r.offset, 11);
    assert_eq!(offsets(store, "sized", all()).await, [9, 10, 11]);
    // Lifted: only what the commits kept is there.
    store.set_retention(only("none", Limits::default()));
    assert_eq!(offsets(store, "sized", all()).await, [9, 10, 11]);
}

/// `history_ttl`: reads leave out what is older at once; the next commit deletes it; the
/// position stays and offsets are not reused.
pub async fn trims_by_age(store: &dyn Store) {
    store.set_retention(only(
        "aged",
        Limits {
            size: 0,
            ttl_ms: 300,
        },
    ));
    for i in 1..=3 {
        store
            .append(msg("aged", &i.to_string(), None))
            .await
            .unwrap();
    }
    assert_eq!(offsets(store, "aged", all()).await, [1, 2, 3]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(offsets(store, "aged", all()).await.is_empty(), "expired");
    assert_eq!(store.position("aged").await.unwrap().offset, 3);
    let r = store.append(msg("aged", "4", None)).await.unwrap();
    assert_eq!(r.offset, 4, "offsets never reused");
    store.set_retention(only("none", Limits::default()));
    assert_eq!(
        offsets(store, "aged", all()).await,
        [4],
        "the commit deleted the expired rows"
    );
}

/// `delete`: the row stays as a tombstone (payload gone, offsets contiguous); deleting
/// what is not stored answers `None`.
pub async fn deletes_keep_offsets(store: &dyn Store) {
    for i in 1..=3 {
        store
            .append(msg("del", &i.to_string(), None))
            .await
            .unwrap();
    }
    let t = store.delete("del", 2).await.unwrap().expect("stored");
    assert_eq!((t.offset, t.tombstone), (2, Some(2)));
    assert_eq!(t.data.get(), "null");
    assert!(t.info.is_none());
    let (msgs, pos) = store.range("del", all()).await.unwrap();
    assert_eq!(pos.offset, 3);
    let seen: Vec<(u64, Option<u64>)> = msgs.iter().map(|m| (m.offset, m.tombstone)).collect();
    assert_eq!(seen, [(1, None), (2, Some(2)), (3, None)]);
    assert_eq!(msgs[1].publication().tags.unwrap()["deleted"], "2");
    assert!(msgs[2].data.get().contains("\"3\""));
    assert!(
        store.delete("del", 2).await.unwrap().is_some(),
        "idempotent"
    );
    assert!(store.delete("del", 0).await.unwrap().is_none());
    assert!(store.delete("del", 4).await.unwrap().is_none());
    assert!(store.delete("nowhere", 1).await.unwrap().is_none());
    // A trimmed publication is not deleted (nor resurrected as a tombstone).
    store.set_retention(only("del", Limits { size: 1, ttl_ms: 0 }));
    assert!(store.delete("del", 1).await.unwrap().is_none());
    store.set_retention(only("none", Limits::default()));
    assert_eq!(store.append(msg("del", "4", None)).await.unwrap().offset, 4);
}

/// `clear`: every stored publication goes, the position stays.
pub async fn clear_keeps_the_position(store: &dyn Store) {
    for i in 1..=5 {
        store
            .append(msg("clr", &i.to_string(), None))
            .await
            .unwrap();
    }
    assert_eq!(store.clear("clr").await.unwrap(), 5);
    assert!(offsets(store, "clr", all()).await.is_empty());
    assert_eq!(store.position("clr").await.unwrap().offset, 5);
    assert_eq!(store.clear("clr").await.unwrap(), 0);
    assert_eq!(store.append(msg("clr", "6", None)).await.unwrap().offset, 6);
    assert_eq!(offsets(store, "clr", all()).await, [6]);
    assert_eq!(store.clear("empty").await.unwrap(), 0);
}
