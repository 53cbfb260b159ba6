//! The human summary of a chaos run: the figures first, then each finding with examples.

use std::fmt::Write;

use crate::checker::Finding;
use crate::run::Output;

pub(crate) fn text(o: &Output, epoch_changes: u32, failed: bool) -> String {
    let r = o.check;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "roomcast chaos run: seed {}, {} s, {} nodes, {} writers, {} members, load average {}",
        o.seed, o.seconds, o.nodes, o.writers, o.members, o.load_average
    );
    let mut kinds: Vec<String> = o.applied.iter().map(|a| format!("{:?}", a.fault)).collect();
    kinds.sort();
    kinds.dedup();
    let _ = writeln!(
        s,
        "faults applied: {} ({})",
        o.applied.len(),
        kinds.join(", ")
    );
    let _ = writeln!(
        s,
        "publishes: {} attempted, {} acknowledged, {} failed ({} of them in history anyway: allowed)",
        r.attempted, r.acked, r.failed, r.failed_but_in_history
    );
    let _ = writeln!(
        s,
        "history: {} publications, head offset {}",
        r.history_len, r.head
    );
    let _ = writeln!(
        s,
        "node starts {:?}, panics in node logs {:?}, epoch changes seen {epoch_changes}",
        o.node_starts, o.node_panics
    );
    line(&mut s, "lost (acked, not in history)", &r.lost);
    line(&mut s, "duplicated in history", &r.duplicated);
    line(
        &mut s,
        "out of (real-time) order in history",
        &r.out_of_order,
    );
    line(&mut s, "gaps in history", &r.gaps);
    line(&mut s, "phantoms in history", &r.phantoms);
    line(
        &mut s,
        "API offsets history disagrees with",
        &r.offset_mismatch,
    );
    let reached = r.members.iter().filter(|m| m.reached_head).count();
    let _ = writeln!(
        s,
        "members at the head: {reached} of {}; slowest {} ms after the last fault was healed",
        r.members.len(),
        r.max_head_after_ms
            .map_or("never".into(), |m| m.to_string())
    );
    for m in &r.members {
        let _ = writeln!(
            s,
            "  {}: {} received, last {}, head {}, {} reconnects, {} unrecovered (paged history), lost {}, dup {}, reorder {}, gaps {}, diverged {}, phantoms {}",
            m.name, m.received, m.last_offset,
            m.head_after_ms.map_or("never".into(), |t| format!("after {t} ms")),
            m.reconnects, m.unrecovered, m.lost.count, m.duplicated.count, m.out_of_order.count,
            m.gaps.count, m.diverged.count, m.phantoms.count
        );
        for f in [
            &m.lost,
            &m.duplicated,
            &m.out_of_order,
            &m.gaps,
            &m.diverged,
            &m.phantoms,
        ] {
            for e in f.examples.iter().take(3) {
                let _ = writeln!(s, "      {e}");
            }
        }
    }
    let _ = writeln!(s, "result: {}", if failed { "FAILED" } else { "ok" });
    s
}

fn line(s: &mut String, what: &str, f: &Finding) {
    let _ = writeln!(s, "{what}: {}", f.count);
    for e in f.examples.iter().take(5) {
        let _ = writeln!(s, "    {e}");
    }
}
