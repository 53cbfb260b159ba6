//! The checker on synthetic histories: a clean run passes, and each kind of fault is
//! caught and named.

use super::*;

fn id(writer: u32, seq: u64) -> PubId {
    PubId { writer, seq }
}

/// `n` publications by two alternating writers, each acked before the next is sent,
/// offsets 1..=n in history, one member that saw them all.
type Run = (Vec<Op>, Vec<(u64, Option<PubId>)>, Vec<View>);

fn clean(n: u64) -> Run {
    let mut ops = Vec::new();
    let mut history = Vec::new();
    for o in 1..=n {
        let pid = id((o % 2) as u32, o);
        ops.push(Op {
            id: pid,
            acked: true,
            sent_us: o * 10,
            done_us: o * 10 + 5,
            offset: (o % 2 == 0).then_some(o),
        });
        history.push((o, Some(pid)));
    }
    let view = View {
        name: "m".into(),
        start: 0,
        pubs: history.clone(),
        head_after_ms: Some(12),
        ..View::default()
    };
    (ops, history, vec![view])
}

#[test]
fn a_clean_run_passes() {
    let (ops, history, views) = clean(50);
    let r = check(&ops, &history, &views);
    assert!(!r.failed(), "{r:#?}");
    assert_eq!((r.acked, r.head, r.history_len), (50, 50, 50));
    assert_eq!(r.max_head_after_ms, Some(12));
    assert!(r.members[0].reached_head);
}

#[test]
fn an_acked_publication_missing_from_history_is_lost() {
    let (ops, mut history, mut views) = clean(10);
    history.pop(); // offset 10 (the head) gone from the store
    views[0].pubs.pop();
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    assert_eq!(r.lost.count, 1, "{r:#?}");
    assert!(r.lost.examples[0].contains("w0#10"));
}

#[test]
fn a_publication_a_member_never_got_is_lost_and_a_gap() {
    let (ops, history, mut views) = clean(10);
    views[0].pubs.remove(4); // offset 5
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    let m = &r.members[0];
    assert_eq!((m.lost.count, m.gaps.count), (1, 1), "{m:#?}");
    assert!(m.gaps.examples[0].contains("offset 5"));
    assert_eq!(r.lost.count, 0, "history still has it");
}

#[test]
fn a_member_short_of_the_head_has_not_reached_it() {
    let (ops, history, mut views) = clean(10);
    views[0].pubs.truncate(7);
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    assert!(!r.members[0].reached_head);
    assert_eq!(r.members[0].gaps.count, 3);
}

#[test]
fn duplicates_in_history_and_in_a_view_are_caught() {
    let (ops, mut history, mut views) = clean(10);
    history.push((11, Some(id(0, 4)))); // stored twice
    views[0].pubs.push((11, Some(id(0, 4))));
    views[0].pubs.push((11, Some(id(0, 4)))); // and delivered twice
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    assert_eq!(r.duplicated.count, 1, "{r:#?}");
    let m = &r.members[0];
    assert!(m.duplicated.count >= 2, "{m:#?}");
}

#[test]
fn a_member_receiving_out_of_order_is_caught() {
    let (ops, history, mut views) = clean(10);
    views[0].pubs.swap(2, 3);
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    assert_eq!(r.members[0].out_of_order.count, 1, "{:#?}", r.members[0]);
}

#[test]
fn history_against_real_time_order_is_caught() {
    let (ops, mut history, mut views) = clean(10);
    // w1#3 was acked before w0#4 was sent, yet history orders w0#4 first.
    history.swap(2, 3);
    history[2].0 = 3;
    history[3].0 = 4;
    views[0].pubs = history.clone();
    let mut ops = ops;
    for o in &mut ops {
        o.offset = None;
    }
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    assert_eq!(r.out_of_order.count, 1, "{r:#?}");
}

#[test]
fn an_api_offset_history_disagrees_with_is_caught() {
    let (mut ops, history, views) = clean(10);
    ops[1].offset = Some(7); // the reply said 7, history has it at 2
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    assert_eq!(r.offset_mismatch.count, 1);
}

#[test]
fn gaps_in_history_are_caught() {
    let (ops, mut history, mut views) = clean(10);
    history.retain(|h| h.0 != 6);
    views[0].pubs.retain(|h| h.0 != 6);
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    assert_eq!(r.gaps.count, 1);
    assert_eq!(r.lost.count, 1, "the publication at 6 was acked");
}

#[test]
fn a_failed_publish_in_history_is_allowed_and_reported() {
    let (mut ops, history, views) = clean(10);
    ops[3].acked = false;
    ops[3].offset = None;
    let r = check(&ops, &history, &views);
    assert!(!r.failed(), "{r:#?}");
    assert_eq!(r.failed_but_in_history, 1);
    assert_eq!(r.failed, 1);
}

#[test]
fn a_failed_publish_read_but_not_in_history_is_a_phantom() {
    let (mut ops, history, mut views) = clean(10);
    ops.push(Op {
        id: id(5, 1),
        acked: false,
        sent_us: 1,
        done_us: 2,
        offset: None,
    });
    views[0].pubs.push((11, Some(id(5, 1))));
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    let m = &r.members[0];
    assert_eq!(m.phantoms.count, 1, "{m:#?}");
    assert!(m.phantoms.examples[0].contains("failed publish"));
}

#[test]
fn a_publication_nobody_sent_is_a_phantom() {
    let (ops, mut history, mut views) = clean(10);
    history.push((11, Some(id(9, 9))));
    views[0].pubs.push((11, Some(id(9, 9))));
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    assert_eq!(r.phantoms.count, 1);
}

#[test]
fn a_member_whose_offset_holds_another_publication_diverged() {
    let (ops, history, mut views) = clean(10);
    views[0].pubs[4].1 = Some(id(1, 7));
    let r = check(&ops, &history, &views);
    assert!(r.failed());
    assert!(r.members[0].diverged.count >= 1);
}

#[test]
fn a_member_that_joined_late_owes_only_what_came_after() {
    let (ops, history, mut views) = clean(10);
    views[0].start = 6;
    views[0].pubs.retain(|p| p.0 > 6);
    let r = check(&ops, &history, &views);
    assert!(!r.failed(), "{r:#?}");
}
