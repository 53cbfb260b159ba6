//! The chat cases of the store suite (see `conformance.rs`, which runs them): membership,
//! read cursors (monotonic, clamped), unread counts computed from tops and cursors, and a
//! user's room list (newest activity first, paged, previews bounded).

use std::time::Duration;

use serde_json::value::RawValue;

use super::chat::{RoomsAfter, MAX_PREVIEW_BYTES};
use super::conformance::msg;
use super::{NewMessage, Store};

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(ToString::to_string).collect()
}

/// Add and remove many at once (twice is a no-op), page members in user order.
pub async fn membership(s: &dyn Store) {
    assert_eq!(
        s.add_members("r", &users(&["carol", "alice", "bob", "alice"]))
            .await
            .unwrap(),
        3
    );
    assert_eq!(s.add_members("r", &users(&["bob"])).await.unwrap(), 0);
    assert!(s.is_member("r", "alice").await.unwrap());
    assert!(!s.is_member("r", "dave").await.unwrap());
    assert!(!s.is_member("other", "alice").await.unwrap());
    assert_eq!(
        s.members("r", None, 2).await.unwrap(),
        users(&["alice", "bob"])
    );
    assert_eq!(
        s.members("r", Some("bob"), 2).await.unwrap(),
        users(&["carol"])
    );
    assert!(s.members("r", Some("carol"), 2).await.unwrap().is_empty());
    assert_eq!(
        s.remove_members("r", &users(&["alice", "zed"]))
            .await
            .unwrap(),
        1
    );
    assert!(!s.is_member("r", "alice").await.unwrap());
    assert_eq!(
        s.members("r", None, 10).await.unwrap(),
        users(&["bob", "carol"])
    );
}

/// A cursor only moves forward and never beyond the top; unread is top - cursor.
pub async fn cursors(s: &dyn Store) {
    // An empty room: any offset clamps to 0, nothing moves.
    let c = s.set_cursor("alice", "c", 5).await.unwrap();
    assert_eq!((c.offset, c.top, c.moved), (0, 0, false));
    for i in 0..3 {
        s.append(msg("c", &i.to_string(), None)).await.unwrap();
    }
    let c = s.set_cursor("alice", "c", 2).await.unwrap();
    assert_eq!((c.offset, c.top, c.moved, c.unread()), (2, 3, true, 1));
    let c = s.set_cursor("alice", "c", 1).await.unwrap();
    assert_eq!((c.offset, c.moved), (2, false), "older offset ignored");
    let c = s.set_cursor("alice", "c", 2).await.unwrap();
    assert_eq!((c.offset, c.moved), (2, false), "same offset moves nothing");
    let c = s.set_cursor("alice", "c", u64::MAX).await.unwrap();
    assert_eq!(
        (c.offset, c.top, c.moved),
        (3, 3, true),
        "clamped to the top"
    );
    s.append(msg("c", "3", None)).await.unwrap();
    let c = s.cursor("alice", "c").await.unwrap();
    assert_eq!((c.offset, c.top, c.unread()), (3, 4, 1));
    let c = s.cursor("bob", "c").await.unwrap();
    assert_eq!((c.offset, c.top, c.unread()), (0, 4, 4));
}

/// Many moves at once (the SQLite store batches them into one transaction): each user's
/// cursor ends at the highest offset asked, every first move of a user reports `moved`, and
/// of one user's concurrent moves at least one moved and the answers never go backwards.
pub async fn cursors_concurrent(s: &dyn Store) {
    for i in 0..100 {
        s.append(msg("cc", &i.to_string(), None)).await.unwrap();
    }
    let users: Vec<String> = (0..64).map(|i| format!("u{i}")).collect();
    let firsts =
        futures_util::future::join_all(users.iter().map(|u| s.set_cursor(u, "cc", 7))).await;
    assert!(firsts
        .iter()
        .all(|c| matches!(c, Ok(c) if c.moved && c.offset == 7)));
    let same =
        futures_util::future::join_all((1..=64u64).rev().map(|o| s.set_cursor("u0", "cc", 10 + o)))
            .await;
    let same: Vec<_> = same.into_iter().map(Result::unwrap).collect();
    assert!(same.iter().any(|c| c.moved));
    assert!(same.iter().all(|c| c.offset >= 11 && c.top == 100));
    assert_eq!(s.cursor("u0", "cc").await.unwrap().offset, 74);
    assert_eq!(s.cursor("u63", "cc").await.unwrap().offset, 7);
}

fn big_msg(room: &str, bytes: usize) -> NewMessage {
    let mut m = msg(room, "", None);
    m.data = RawValue::from_string(format!("\"{}\"", "x".repeat(bytes))).unwrap();
    m
}

/// Totals over a user's rooms; the room list newest first, paged, with previews.
pub async fn room_list(s: &dyn Store) {
    s.add_members("ra", &users(&["u"])).await.unwrap();
    s.add_members("rb", &users(&["u", "v"])).await.unwrap();
    s.add_members("rc", &users(&["u"])).await.unwrap();
    s.add_members("empty", &users(&["u"])).await.unwrap();
    // Activity order: rb, then ra, then rc (newest); the clock is in milliseconds.
    for (room, n) in [("rb", 2), ("ra", 3), ("rc", 1)] {
        for i in 0..n {
            s.append(msg(room, &format!("{room}{i}"), None))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.append(msg("not-a-member", "x", None)).await.unwrap();
    assert_eq!(s.unread_total("u").await.unwrap(), (6, 4));
    assert_eq!(s.unread_total("v").await.unwrap(), (2, 1));
    assert_eq!(s.unread_total("nobody").await.unwrap(), (0, 0));
    s.set_cursor("u", "ra", 2).await.unwrap();
    assert_eq!(s.unread_total("u").await.unwrap(), (4, 4));

    let all = s.rooms("u", None, 10).await.unwrap();
    let names: Vec<&str> = all.iter().map(|r| r.room.as_str()).collect();
    assert_eq!(names, ["rc", "ra", "rb", "empty"]);
    let a = &all[1];
    assert_eq!((a.top, a.cursor, a.unread()), (3, 2, 1));
    let p = a.preview.as_ref().unwrap();
    assert_eq!(p.offset, 3);
    assert_eq!(p.data.as_ref().unwrap().get(), r#"{"text":"ra2"}"#);
    assert!(all[3].preview.is_none() && all[3].top == 0);

    // Pages: two, then the rest after the last key.
    let first = s.rooms("u", None, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let (ts_ms, room) = first[1].key();
    let after = RoomsAfter {
        ts_ms,
        room: room.to_owned(),
    };
    let rest = s.rooms("u", Some(&after), 10).await.unwrap();
    let names: Vec<&str> = rest.iter().map(|r| r.room.as_str()).collect();
    assert_eq!(names, ["rb", "empty"]);

    // A big newest publication: the preview keeps its offset and time, not its data.
    s.append(big_msg("rb", MAX_PREVIEW_BYTES + 1))
        .await
        .unwrap();
    let top = s.rooms("u", None, 1).await.unwrap();
    assert_eq!(top[0].room, "rb");
    let p = top[0].preview.as_ref().unwrap();
    assert_eq!(p.offset, 3);
    assert!(p.data.is_none());
    assert!(s.rooms("u", None, 0).await.unwrap().is_empty());
}

/// Notifier cursors (`notify.rs`): one live lease per room, taken over only once expired,
/// cursors forward only and only by the holder, the backlog per namespace.
pub async fn notify_cursors(s: &dyn Store) {
    for room in ["nfy:a", "nfy:b", "nfy:c", "plain", "other:x"] {
        s.append(msg(room, "1", None)).await.unwrap();
    }
    s.append(msg("nfy:a", "2", None)).await.unwrap();
    let backlog = |ns: &'static str, after: &'static str| async move {
        s.notify_backlog(ns, after, 10).await.unwrap()
    };
    assert_eq!(
        backlog("nfy", "").await,
        users(&["nfy:a", "nfy:b", "nfy:c"])
    );
    assert_eq!(backlog("nfy", "nfy:a").await, users(&["nfy:b", "nfy:c"]));
    assert_eq!(
        s.notify_backlog("nfy", "", 1).await.unwrap(),
        users(&["nfy:a"])
    );
    assert!(
        backlog("plain", "").await.is_empty(),
        "no namespace of that name"
    );
    assert!(backlog("", "").await.contains(&"plain".to_owned()));
    assert!(!backlog("", "").await.iter().any(|r| r.contains(':')));
    // A first claim starts at 0; another node cannot take a live lease, the holder renews.
    assert_eq!(
        s.notify_claim("nfy:a", "n1", 100, 200).await.unwrap(),
        Some(0)
    );
    assert_eq!(s.notify_claim("nfy:a", "n2", 150, 250).await.unwrap(), None);
    assert_eq!(
        s.notify_claim("nfy:a", "n1", 150, 300).await.unwrap(),
        Some(0)
    );
    assert!(s.notify_advance("nfy:a", "n1", 1, 300).await.unwrap());
    assert!(
        !s.notify_advance("nfy:a", "n2", 2, 300).await.unwrap(),
        "not the holder"
    );
    assert_eq!(
        backlog("nfy", "").await,
        users(&["nfy:a", "nfy:b", "nfy:c"])
    );
    assert!(s.notify_advance("nfy:a", "n1", 2, 300).await.unwrap());
    assert!(
        s.notify_advance("nfy:a", "n1", 1, 300).await.unwrap(),
        "holder, no move"
    );
    assert_eq!(
        backlog("nfy", "").await,
        users(&["nfy:b", "nfy:c"]),
        "a is caught up"
    );
    // Expired: taken over, with the cursor where it was.
    assert_eq!(
        s.notify_claim("nfy:a", "n2", 300, 400).await.unwrap(),
        Some(2)
    );
    assert!(
        !s.notify_advance("nfy:a", "n1", 5, 500).await.unwrap(),
        "lost"
    );
    // Released: free at once.
    s.notify_release("nfy:a", "n2").await.unwrap();
    assert_eq!(
        s.notify_claim("nfy:a", "n3", 301, 400).await.unwrap(),
        Some(2)
    );
    s.notify_release("nfy:a", "n1").await.unwrap();
    assert_eq!(
        s.notify_claim("nfy:a", "n1", 302, 400).await.unwrap(),
        None,
        "not n1's to release"
    );
}
