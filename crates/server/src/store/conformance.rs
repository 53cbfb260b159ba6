//! One behaviour suite for every `Store` implementation, defined once: [`run_all`] runs
//! every case against fresh stores of one backend, and [`store_conformance!`] stamps that
//! out as one `#[test]` per backend.
//!
//! [`store_conformance!`]: crate::store_conformance

use std::future::Future;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::{Committed, NewMessage, Range, Store, StoreError};

/// One `#[test]` running the whole suite against a backend: `setup` runs once (a temp dir,
/// a database server) and is bound to `env` by reference; `fresh` makes case `n`'s fresh,
/// empty store and its committed stream from it.
///
/// ```ignore
/// roomcast::store_conformance!(sqlite, tempfile::tempdir().unwrap(), |dir, n| {
///     SqliteStore::open(&dir.path().join(format!("{n}.db")), ttl).unwrap()
/// });
/// ```
#[macro_export]
macro_rules! store_conformance {
    ($test:ident, $setup:expr, |$env:ident, $n:ident| $fresh:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let $env = $setup;
            let $env = &$env;
            $crate::store::conformance::run_all(|$n: usize| async move { $fresh }).await;
        }
    };
}

/// Runs every case of the suite, each against a fresh store from `fresh(case number)`.
pub async fn run_all<S, F, Fut>(mut fresh: F)
where
    S: Store,
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = (S, Committed)>,
{
    let (s, _c) = fresh(1).await;
    offsets_are_contiguous_per_room(&s).await;
    s.close().await;
    let (s, _c) = fresh(2).await;
    ranges(&s).await;
    s.close().await;
    let (s, mut c) = fresh(3).await;
    idempotent_appends(&s, &mut c).await;
    s.close().await;
    let (s, mut c) = fresh(4).await;
    let s = Arc::new(s);
    concurrent_appends_commit_in_order(s.clone(), &mut c).await;
    s.close().await;
    let (s, _c) = fresh(5).await;
    offsets_beyond_i64_are_beyond_the_top(&s).await;
    s.close().await;
    let (s, _c) = fresh(7).await;
    super::conformance_chat::membership(&s).await;
    super::conformance_chat::cursors(&s).await;
    super::conformance_chat::cursors_concurrent(&s).await;
    super::conformance_chat::room_list(&s).await;
    super::conformance_chat::notify_cursors(&s).await;
    s.close().await;
    let (s, _c) = fresh(8).await;
    super::conformance_retention::trims_by_count(&s).await;
    super::conformance_retention::trims_by_age(&s).await;
    super::conformance_retention::deletes_keep_offsets(&s).await;
    super::conformance_retention::clear_keeps_the_position(&s).await;
    s.close().await;
    let (s, c) = fresh(6).await;
    close_commits_what_was_queued(&s, c).await;
}

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

/// `since` offsets of 2^63 and above (a client's `u64`) are beyond the top, never wrapped
/// around to a negative bound that returns the stream from its start.
pub async fn offsets_beyond_i64_are_beyond_the_top(store: &dyn Store) {
    for i in 1..=3u64 {
        store.append(msg("w", &i.to_string(), None)).await.unwrap();
    }
    for since in [1u64 << 63, (1u64 << 63) + 1, u64::MAX - 1, u64::MAX] {
        let forward = Range {
            since: Some(since),
            limit: 10,
            reverse: false,
        };
        let (after, pos) = store.range("w", forward).await.unwrap();
        assert!(after.is_empty(), "nothing after offset {since}: {after:?}");
        assert_eq!(pos.offset, 3);
        let reverse = Range {
            since: Some(since),
            limit: 10,
            reverse: true,
        };
        let (before, _) = store.range("w", reverse).await.unwrap();
        assert_eq!(
            before.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![3, 2, 1],
            "everything is before offset {since}"
        );
    }
    let huge_limit = Range {
        since: None,
        limit: usize::MAX,
        reverse: false,
    };
    assert_eq!(store.range("w", huge_limit).await.unwrap().0.len(), 3);
}

/// `close` commits every append queued before it (and hands them to the dispatcher in
/// order), then refuses new ones; a second close returns at once.
pub async fn close_commits_what_was_queued(store: &dyn Store, mut committed: Committed) {
    let msgs = (0..300).map(|i| msg("z", &i.to_string(), None)).collect();
    let (results, ()) = tokio::join!(store.append_batch(msgs), async {
        tokio::task::yield_now().await;
        store.close().await;
    });
    let mut acked = Vec::new();
    for r in results {
        match r {
            Ok(a) => acked.push(a.offset),
            Err(StoreError::Closed) => {}
            Err(e) => panic!("append failed otherwise than closed: {e}"),
        }
    }
    assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>());
    let mut handed = Vec::new();
    while let Ok(batch) = committed.try_recv() {
        handed.extend(batch.iter().map(|m| m.offset));
    }
    assert_eq!(
        handed, acked,
        "every acknowledged append reached the dispatcher"
    );
    assert!(matches!(
        store.append(msg("z", "late", None)).await,
        Err(StoreError::Closed)
    ));
    store.close().await;
}
