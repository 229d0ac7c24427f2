//! [`MemoryNetwork`]: the same [`Transport`] over in-process channels,
//! for tests that need real async code without sockets.

use std::collections::HashMap;
use std::sync::Arc;

use dr_codec::message::{Message, NodeId};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::Transport;
use crate::stats::{Counters, TransportStats, add};

/// A set of in-memory endpoints that can reach each other.
#[derive(Clone, Debug, Default)]
pub struct MemoryNetwork {
    endpoints: Arc<Mutex<HashMap<NodeId, mpsc::Sender<Message>>>>,
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds node `id` (replacing an endpoint it had: a restart), with an
    /// inbound queue of `capacity` messages; messages to it beyond that
    /// are dropped, as a TCP peer's full queue would drop them.
    pub fn endpoint(
        &self,
        id: NodeId,
        capacity: usize,
    ) -> (MemoryTransport, mpsc::Receiver<Message>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        self.endpoints.lock().insert(id, sender);
        let transport = MemoryTransport {
            id,
            network: self.clone(),
            counters: Arc::new(Counters::default()),
        };
        (transport, receiver)
    }

    /// Removes node `id`: messages to it are dropped from now on.
    pub fn disconnect(&self, id: NodeId) {
        self.endpoints.lock().remove(&id);
    }
}

/// One node's endpoint on a [`MemoryNetwork`].
#[derive(Clone, Debug)]
pub struct MemoryTransport {
    id: NodeId,
    network: MemoryNetwork,
    counters: Arc<Counters>,
}

impl Transport for MemoryTransport {
    fn send(&self, message: Message) -> bool {
        let counters = &self.counters;
        if message.from != self.id {
            add(&counters.messages_dropped, 1);
            return false;
        }
        let target = self.network.endpoints.lock().get(&message.to).cloned();
        let delivered = target.is_some_and(|sender| sender.try_send(message).is_ok());
        if delivered {
            add(&counters.messages_queued, 1);
            add(&counters.messages_sent, 1);
        } else {
            add(&counters.messages_dropped, 1);
        }
        delivered
    }

    fn stats(&self) -> TransportStats {
        self.counters.snapshot()
    }
}
