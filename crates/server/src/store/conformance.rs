//! One behaviour suite for every `Store` implementation: each backend's tests call these
//! functions with a fresh store and its committed-messages receiver.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Committed, NewMessage, Range, Store};

pub fn msg(room: &str, text: &str, key: Option<&str>) -> NewMessage {
    NewMessage {
        room: room.into(),
        data: RawValue::from_string(format!("{{\"text\":\"{text}\"}}")).unwrap(),
        user: "alice".into(),
        client: "c1".into(),
        info: None,
        idempotency_key: key.map(str::to_owned),
    }
}

/// Offsets start at 1 per room, are contiguous, and the epoch is stable.
pub async fn offsets_are_contiguous_per_room(store: &dyn Store) {
    let empty = store.position("a").await.unwrap();
    assert_eq!(empty.offset, 0);
    for i in 1..=5u64 {
        let r = store.append(msg("a", &i.to_string(), None)).await.unwrap();
        assert_eq!(r.offset, i);
        assert_eq!(r.epoch, empty.epoch);
    }
    assert_eq!(store.append(msg("b", "x", None)).await.unwrap().offset, 1);
    assert_eq!(store.position("a").await.unwrap().offset, 5);
}

/// Forward, since, reverse and limits.
pub async fn ranges(store: &dyn Store) {
    for i in 1..=10u64 {
        store.append(msg("r", &i.to_string(), None)).await.unwrap();
    }
    let (all, pos) = store
        .range(
            "r",
            Range {
                since: None,
                limit: 100,
                reverse: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(pos.offset, 10);
    assert_eq!(all[2].data.get(), "{\"text\":\"3\"}");
    assert_eq!(all[0].user, "alice");
    let (after, _) = store
        .range(
            "r",
            Range {
                since: Some(7),
                limit: 100,
                reverse: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    let (first2, _) = store
        .range(
            "r",
            Range {
                since: Some(0),
                limit: 2,
                reverse: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        first2.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let (newest, _) = store
        .range(
            "r",
            Range {
                since: None,
                limit: 3,
                reverse: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![10, 9, 8]
    );
    let (before, _) = store
        .range(
            "r",
            Range {
                since: Some(4),
                limit: 10,
                reverse: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        before.iter().map(|m| m.offset).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    let (none, pos) = store
        .range(
            "empty",
            Range {
                since: None,
                limit: 10,
                reverse: false,
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(pos.offset, 0);
}

/// A retried append with the same key is stored once and returns the first offset.
pub async fn idempotent_appends(store: &dyn Store, committed: &mut Committed) {
    let a = store.append(msg("i", "one", Some("k1"))).await.unwrap();
    let b = store.append(msg("i", "one", Some("k1"))).await.unwrap();
    assert_eq!((a.offset, a.duplicate), (1, false));
    assert_eq!((b.offset, b.duplicate), (1, true));
    assert_eq!(
        store
            .append(msg("i", "two", Some("k2")))
            .await
            .unwrap()
            .offset,
        2
    );
    // The same key in another room is another message.
    assert_eq!(
        store
            .append(msg("j", "one", Some("k1")))
            .await
            .unwrap()
            .offset,
        1
    );
    let mut seen = Vec::new();
    while let Ok(batch) = committed.try_recv() {
        seen.extend(batch.iter().map(|m| (m.room.to_string(), m.offset)));
    }
    assert_eq!(
        seen,
        vec![("i".into(), 1), ("i".into(), 2), ("j".into(), 1)]
    );
}

/// Many concurrent appends: every offset once, committed in order.
pub async fn concurrent_appends_commit_in_order(store: Arc<dyn Store>, committed: &mut Committed) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..50 {
                offsets.push(
                    store
                        .append(msg("c", &format!("{t}-{i}"), None))
                        .await
                        .unwrap()
                        .offset,
                );
            }
            offsets
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=400).collect::<Vec<_>>());
    let mut order = Vec::new();
    while let Ok(batch) = committed.try_recv() {
        order.extend(batch.iter().map(|m| m.offset));
    }
    assert_eq!(
        order,
        (1..=400).collect::<Vec<_>>(),
        "committed stream is in offset order"
    );
}
