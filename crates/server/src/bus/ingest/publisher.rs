//! The publisher: queued envelopes to the broker in batches, and hints for what could not
//! be sent (see `ingest/mod.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::{Queued, COMMAND_TIMEOUT, PIPELINE};
use crate::bus::broker::{Broker, Channel, Outgoing};
use crate::bus::envelope::Envelope;

/// Rooms remembered as owing a hint at most.
const MAX_OWED: usize = 100_000;

/// Sends queued items as batches; hints about what could not be sent. Runs until `stop`
/// (the drain cancels it only after its flush marker went through).
pub(super) async fn run(
    broker: Arc<dyn Broker>,
    mut rx: mpsc::Receiver<Queued>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(PIPELINE);
    // Rooms whose publications did not reach the broker, with the newest such offset.
    let mut owed: HashMap<Arc<str>, u64> = HashMap::new();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            item = rx.recv() => match item { Some(i) => i, None => return },
        };
        batch.push(first);
        while batch.len() < PIPELINE {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let hints: Vec<(Arc<str>, u64)> = owed.iter().map(|(r, o)| (r.clone(), *o)).collect();
        let mut outs: Vec<Outgoing> = batch.iter().map(|q| q.out.clone()).collect();
        outs.extend(hints.iter().map(|(room, top)| {
            Outgoing {
                channel: Channel::Room(room.clone()),
                payload: Envelope::Hint {
                    n: String::new(),
                    r: room.to_string(),
                    o: *top,
                }
                .encode(),
            }
        }));
        match timeout(COMMAND_TIMEOUT, broker.publish(&outs)).await {
            Ok(Ok(())) => {
                if let Some(m) = crate::metrics::get() {
                    m.bus_published.inc_by(outs.len() as u64);
                }
                for (room, top) in hints {
                    if owed.get(&room) == Some(&top) {
                        owed.remove(&room);
                    }
                }
            }
            failed => {
                match failed {
                    Ok(Err(e)) => {
                        tracing::warn!(broker = broker.name(), error = %e, "bus publish failed");
                    }
                    _ => tracing::warn!(broker = broker.name(), "bus publish timed out"),
                }
                for item in &batch {
                    if let Some((room, offset)) = &item.offset {
                        if owed.len() < MAX_OWED || owed.contains_key(room) {
                            let top = owed.entry(room.clone()).or_default();
                            *top = (*top).max(*offset);
                        }
                    }
                }
            }
        }
        for item in batch.drain(..) {
            if let Some(done) = item.flushed {
                let _ = done.send(());
            }
        }
    }
}
