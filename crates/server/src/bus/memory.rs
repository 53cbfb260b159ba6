//! An in-process broker: nodes in one process (tests, the conformance suite's reference)
//! share one `MemoryBroker`. It keeps the broker seam's promises exactly and no more: in
//! order per channel, at most once, and a subscription that overflows its queue (a slow
//! consumer) or is severed ends instead of silently missing messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::broker::{Broker, Channel, Outgoing, Subscription};
use super::BusError;

/// Messages a subscription buffers at most before it is ended as a slow consumer.
const QUEUE: usize = 65_536;

#[derive(Default)]
struct State {
    next_id: u64,
    /// Live subscriptions: their channels and their queue.
    subs: HashMap<u64, (HashSet<Channel>, mpsc::Sender<Vec<u8>>)>,
}

/// A broker inside this process; clones share it.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
}

impl MemoryBroker {
    pub fn new() -> MemoryBroker {
        MemoryBroker::default()
    }

    /// Ends every subscription, as a lost connection would (their owners resubscribe).
    pub fn sever(&self) {
        self.state.lock().expect("broker lock").subs.clear();
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, batch: &[Outgoing]) -> Result<(), BusError> {
        let mut state = self.state.lock().expect("broker lock");
        let mut overflowed = Vec::new();
        for o in batch {
            for (id, (channels, tx)) in &state.subs {
                if channels.contains(&o.channel) && tx.try_send(o.payload.clone()).is_err() {
                    overflowed.push(*id);
                }
            }
        }
        for id in overflowed {
            // Dropping its sender ends the subscription once its queue is read.
            state.subs.remove(&id);
        }
        Ok(())
    }

    async fn subscription(&self) -> Result<Box<dyn Subscription>, BusError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut state = self.state.lock().expect("broker lock");
        state.next_id += 1;
        let id = state.next_id;
        state.subs.insert(id, (HashSet::new(), tx));
        Ok(Box::new(MemorySubscription {
            id,
            state: self.state.clone(),
            rx,
        }))
    }
}

struct MemorySubscription {
    id: u64,
    state: Arc<Mutex<State>>,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl MemorySubscription {
    fn with_channels(&self, f: impl FnOnce(&mut HashSet<Channel>)) -> Result<(), BusError> {
        match self
            .state
            .lock()
            .expect("broker lock")
            .subs
            .get_mut(&self.id)
        {
            Some((channels, _)) => {
                f(channels);
                Ok(())
            }
            None => Err(BusError::Backend("subscription ended".into())),
        }
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn subscribe(&mut self, channels: &[Channel]) -> Result<(), BusError> {
        self.with_channels(|c| c.extend(channels.iter().cloned()))
    }

    async fn unsubscribe(&mut self, channels: &[Channel]) -> Result<(), BusError> {
        self.with_channels(|c| {
            for ch in channels {
                c.remove(ch);
            }
        })
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            state.subs.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    crate::broker_conformance!(memory_broker_conformance, async {
        (
            std::sync::Arc::new(super::MemoryBroker::new())
                as std::sync::Arc<dyn crate::bus::broker::Broker>,
            (),
        )
    });
}
