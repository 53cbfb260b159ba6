//! The checker: what the run recorded (every publish attempt and its outcome, the room's
//! history read after healing, every member's view) against what store-first promises.
//! Pure: no I/O, so its unit tests feed it synthetic histories with each kind of fault.
//!
//! Failures (any one makes the run fail):
//! - **lost**: an acknowledged publication missing from history, or from a member that
//!   should have seen it (its offset is after the member's start);
//! - **duplicated**: one publication at two offsets of history, or an offset (or a
//!   publication) delivered twice to a member;
//! - **out of order**: a member's offsets going backwards; an acknowledged publication
//!   ordered before one whose acknowledgement preceded its sending (real-time order); a
//!   member's publication at an offset that differs from history's (diverged);
//! - **gaps**: an offset between 1 and the head missing from history, or between a
//!   member's start and the head missing from its view;
//! - **phantoms**: a publication nobody sent, or one that failed and is in a member's view
//!   but not in history.
//!
//! Not failures, but reported: publications whose publish got an error (or no answer) and
//! that are in history anyway (the store committed them; the client could not know).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

/// One publication's identity: the writer that sent it and its sequence number there
/// (carried in the publication's data as `{"w": writer, "s": seq}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub(crate) struct PubId {
    pub writer: u32,
    pub seq: u64,
}

impl std::fmt::Display for PubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w{}#{}", self.writer, self.seq)
    }
}

/// One publish attempt as the writer saw it. Times are microseconds on the run's clock.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Op {
    pub id: PubId,
    /// Acknowledged (a success reply); otherwise it failed or got no answer in time.
    pub acked: bool,
    pub sent_us: u64,
    pub done_us: u64,
    /// The offset the reply named (server API publishes).
    pub offset: Option<u64>,
}

/// What a member received on the room, in arrival order, from after `start`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct View {
    pub name: String,
    /// The offset it subscribed at (it should see every later one).
    pub start: u64,
    /// `(offset, publication)` in arrival order; `None` when the data was not ours.
    pub pubs: Vec<(u64, Option<PubId>)>,
    /// Milliseconds from the end of the last fault to holding the head (`None`: never).
    pub head_after_ms: Option<u64>,
    pub reconnects: u32,
    /// Recoveries the server answered with `recovered: false` (then the member pages
    /// history, as an application does).
    pub unrecovered: u32,
}

/// At most this many examples of each finding are kept; the counts are exact.
const EXAMPLES: usize = 20;

/// A count and a few examples.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Finding {
    pub count: u64,
    pub examples: Vec<String>,
}

impl Finding {
    fn add(&mut self, what: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(what());
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct MemberReport {
    pub name: String,
    pub received: usize,
    pub last_offset: u64,
    pub reached_head: bool,
    pub head_after_ms: Option<u64>,
    pub reconnects: u32,
    pub unrecovered: u32,
    pub lost: Finding,
    pub duplicated: Finding,
    pub out_of_order: Finding,
    pub gaps: Finding,
    pub diverged: Finding,
    pub phantoms: Finding,
}

impl MemberReport {
    fn failed(&self) -> bool {
        !self.reached_head
            || [
                &self.lost,
                &self.duplicated,
                &self.out_of_order,
                &self.gaps,
                &self.diverged,
                &self.phantoms,
            ]
            .iter()
            .any(|f| f.count > 0)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    pub attempted: usize,
    pub acked: usize,
    pub failed: usize,
    pub history_len: usize,
    pub head: u64,
    /// Failed publishes that are in history anyway: allowed (the store committed them).
    pub failed_but_in_history: u64,
    pub lost: Finding,
    pub duplicated: Finding,
    pub out_of_order: Finding,
    pub gaps: Finding,
    pub phantoms: Finding,
    /// An API reply's offset differs from where history has the publication.
    pub offset_mismatch: Finding,
    pub members: Vec<MemberReport>,
    /// The slowest member's time to the head after the last fault.
    pub max_head_after_ms: Option<u64>,
}

impl Report {
    /// Whether any failure was found (what makes the run exit non-zero).
    pub(crate) fn failed(&self) -> bool {
        [
            &self.lost,
            &self.duplicated,
            &self.out_of_order,
            &self.gaps,
            &self.phantoms,
            &self.offset_mismatch,
        ]
        .iter()
        .any(|f| f.count > 0)
            || self.members.iter().any(MemberReport::failed)
    }
}

/// Checks the ops, the history (`(offset, publication)` as read, `None` when the data was
/// not ours) and the members' views against each other.
pub(crate) fn check(ops: &[Op], history: &[(u64, Option<PubId>)], views: &[View]) -> Report {
    let mut r = Report {
        attempted: ops.len(),
        acked: ops.iter().filter(|o| o.acked).count(),
        history_len: history.len(),
        ..Report::default()
    };
    r.failed = r.attempted - r.acked;
    let sent: HashMap<PubId, &Op> = ops.iter().map(|o| (o.id, o)).collect();

    // History: offsets 1..=head each once, each publication once, all of them sent.
    let mut at: HashMap<u64, Option<PubId>> = HashMap::new();
    let mut where_: HashMap<PubId, u64> = HashMap::new();
    for &(offset, id) in history {
        if at.insert(offset, id).is_some() {
            r.duplicated
                .add(|| format!("history has offset {offset} twice"));
        }
        match id {
            None => r
                .phantoms
                .add(|| format!("history offset {offset}: not our data")),
            Some(id) => {
                if let Some(first) = where_.insert(id, offset) {
                    r.duplicated
                        .add(|| format!("{id} in history at offsets {first} and {offset}"));
                }
                match sent.get(&id) {
                    None => r
                        .phantoms
                        .add(|| format!("{id} at {offset} was never sent")),
                    Some(op) if !op.acked => r.failed_but_in_history += 1,
                    Some(op) => {
                        if op.offset.is_some_and(|o| o != offset) {
                            r.offset_mismatch.add(|| {
                                format!("{id} acked at {:?}, history has it at {offset}", op.offset)
                            });
                        }
                    }
                }
            }
        }
    }
    r.head = history.iter().map(|h| h.0).max().unwrap_or(0);
    for offset in 1..=r.head {
        if !at.contains_key(&offset) {
            r.gaps.add(|| format!("history misses offset {offset}"));
        }
    }
    for op in ops.iter().filter(|o| o.acked) {
        if !where_.contains_key(&op.id) {
            r.lost.add(|| format!("{} acked, not in history", op.id));
        }
    }
    real_time_order(ops, &where_, &mut r.out_of_order);

    for v in views {
        r.members.push(check_view(v, &at, &sent, r.head));
    }
    r.max_head_after_ms = r.members.iter().filter_map(|m| m.head_after_ms).max();
    r
}

/// An acknowledged publication must be ordered after every publication acknowledged
/// before it was sent (one writer's acked publications in send order is the special
/// case). Sweep by send time, keeping the highest offset acked before.
fn real_time_order(ops: &[Op], where_: &HashMap<PubId, u64>, out: &mut Finding) {
    let mut acked: Vec<(&Op, u64)> = ops
        .iter()
        .filter(|o| o.acked)
        .filter_map(|o| where_.get(&o.id).map(|&at| (o, at)))
        .collect();
    let mut by_done = acked.clone();
    by_done.sort_by_key(|(o, _)| o.done_us);
    acked.sort_by_key(|(o, _)| o.sent_us);
    let mut i = 0;
    let mut max_before: Option<(u64, PubId)> = None;
    for (op, offset) in acked {
        while i < by_done.len() && by_done[i].0.done_us < op.sent_us {
            let (o, at) = by_done[i];
            if max_before.is_none_or(|(m, _)| at > m) {
                max_before = Some((at, o.id));
            }
            i += 1;
        }
        if let Some((m, before)) = max_before {
            if offset <= m {
                out.add(|| {
                    format!(
                        "{} sent after {before} was acked, yet at offset {offset} <= {m}",
                        op.id
                    )
                });
            }
        }
    }
}

fn check_view(
    v: &View,
    history: &HashMap<u64, Option<PubId>>,
    sent: &HashMap<PubId, &Op>,
    head: u64,
) -> MemberReport {
    let mut m = MemberReport {
        name: v.name.clone(),
        received: v.pubs.len(),
        last_offset: v.pubs.last().map_or(v.start, |p| p.0),
        head_after_ms: v.head_after_ms,
        reconnects: v.reconnects,
        unrecovered: v.unrecovered,
        ..MemberReport::default()
    };
    let mut offsets = HashSet::new();
    let mut ids = HashSet::new();
    let mut prev = v.start;
    for &(offset, id) in &v.pubs {
        if !offsets.insert(offset) {
            m.duplicated
                .add(|| format!("offset {offset} delivered again"));
        } else {
            if offset <= prev {
                m.out_of_order
                    .add(|| format!("offset {offset} after {prev}"));
            }
            if let Some(id) = id.filter(|id| !ids.insert(*id)) {
                m.duplicated
                    .add(|| format!("{id} delivered at a second offset {offset}"));
            }
        }
        prev = prev.max(offset);
        match history.get(&offset) {
            Some(h) if *h == id => {}
            Some(h) => m
                .diverged
                .add(|| format!("offset {offset}: member has {id:?}, history has {h:?}")),
            None => match id.map(|id| sent.get(&id).map(|o| o.acked)) {
                Some(Some(false)) => m
                    .phantoms
                    .add(|| format!("failed publish read at {offset}, not in history")),
                _ => m
                    .phantoms
                    .add(|| format!("offset {offset} ({id:?}) is not in history")),
            },
        }
    }
    m.reached_head = offsets.contains(&head) || head <= v.start;
    for offset in v.start + 1..=head {
        if !offsets.contains(&offset) {
            m.gaps.add(|| format!("misses offset {offset}"));
            if let Some(Some(id)) = history.get(&offset) {
                if sent.get(id).is_some_and(|o| o.acked) {
                    m.lost
                        .add(|| format!("{id} (offset {offset}) acked, never received"));
                }
            }
        }
    }
    m
}

#[cfg(test)]
mod tests;
