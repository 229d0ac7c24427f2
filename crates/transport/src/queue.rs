//! The outbound queue of one peer: bounded in messages and bytes, with
//! snapshot chunks kept apart so that heartbeats and votes never wait
//! behind more than one of them.

use std::collections::VecDeque;

use dr_codec::message::{Message, MessageBody};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Bytes a message adds to its queue: payloads plus a fixed estimate of
/// the rest.
pub(crate) fn message_bytes(message: &Message) -> usize {
    const FIXED: usize = 64;
    match &message.body {
        MessageBody::AppendEntries(append) => {
            FIXED
                + append
                    .entries
                    .iter()
                    .map(|e| FIXED + e.payload.len())
                    .sum::<usize>()
        }
        MessageBody::InstallSnapshot(chunk) => FIXED + chunk.data.len(),
        MessageBody::Forward(request) => FIXED + request.payload.len(),
        MessageBody::ForwardResponse(response) => FIXED + response.payload.len(),
        _ => FIXED,
    }
}

fn is_bulk(message: &Message) -> bool {
    matches!(message.body, MessageBody::InstallSnapshot(_))
}

#[derive(Default)]
struct Queues {
    urgent: VecDeque<Message>,
    bulk: VecDeque<Message>,
    bytes: usize,
}

/// One peer's queue. `push` never blocks; the writer task waits on
/// `ready` and takes batches.
pub(crate) struct PeerQueue {
    queues: Mutex<Queues>,
    ready: Notify,
    messages_max: usize,
    bytes_max: usize,
}

impl PeerQueue {
    pub(crate) fn new(messages_max: usize, bytes_max: usize) -> Self {
        Self {
            queues: Mutex::new(Queues::default()),
            ready: Notify::new(),
            messages_max,
            bytes_max,
        }
    }

    /// Queues `message` without waking the writer (whoever queues it
    /// writes it out or calls `wake`); false (and the message dropped)
    /// when the queue is full.
    pub(crate) fn push(&self, message: Message) -> bool {
        let bytes = message_bytes(&message);
        {
            let mut queues = self.queues.lock();
            let count = queues.urgent.len() + queues.bulk.len();
            if count >= self.messages_max || queues.bytes + bytes > self.bytes_max {
                return false;
            }
            queues.bytes += bytes;
            if is_bulk(&message) {
                queues.bulk.push_back(message);
            } else {
                queues.urgent.push_back(message);
            }
        }
        true
    }

    /// Wakes the writer (or, when it is busy, makes its next wait return
    /// at once).
    pub(crate) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Moves the next batch into `batch`: every urgent message (up to
    /// about `bytes_max` bytes), and one snapshot chunk only when no
    /// urgent message waits. Returns false when the queue was empty.
    pub(crate) fn take_batch(&self, batch: &mut Vec<Message>, bytes_max: usize) -> bool {
        let mut queues = self.queues.lock();
        let mut taken = 0;
        while let Some(message) = queues.urgent.front() {
            let bytes = message_bytes(message);
            if !batch.is_empty() && taken + bytes > bytes_max {
                break;
            }
            taken += bytes;
            batch.push(queues.urgent.pop_front().expect("front exists"));
        }
        if batch.is_empty()
            && let Some(chunk) = queues.bulk.pop_front()
        {
            taken += message_bytes(&chunk);
            batch.push(chunk);
        }
        queues.bytes -= taken;
        let more = !queues.urgent.is_empty() || !queues.bulk.is_empty();
        drop(queues);
        if more {
            // Leave a permit so the writer comes back without waiting.
            self.ready.notify_one();
        }
        !batch.is_empty()
    }

    /// Waits until something may be queued.
    pub(crate) async fn wait(&self) {
        self.ready.notified().await;
    }

    /// Messages and bytes queued now.
    pub(crate) fn len(&self) -> (usize, usize) {
        let queues = self.queues.lock();
        (queues.urgent.len() + queues.bulk.len(), queues.bytes)
    }

    /// Drops everything queued; returns how many messages.
    pub(crate) fn clear(&self) -> usize {
        let mut queues = self.queues.lock();
        let count = queues.urgent.len() + queues.bulk.len();
        *queues = Queues::default();
        count
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use dr_codec::message::{Heartbeat, InstallSnapshot, SnapshotMeta};

    use super::*;

    fn heartbeat(n: u64) -> Message {
        Message {
            from: 1,
            to: 2,
            term: n,
            body: MessageBody::Heartbeat(Heartbeat {
                commit: n,
                read_context: 0,
            }),
        }
    }

    fn chunk(len: usize) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::InstallSnapshot(InstallSnapshot {
                meta: SnapshotMeta::default(),
                offset: 0,
                data: Bytes::from(vec![0; len]),
                done: false,
            }),
        }
    }

    #[test]
    fn bounds_hold_and_heartbeats_pass_snapshot_chunks() {
        let queue = PeerQueue::new(4, 1 << 20);
        assert!(queue.push(chunk(1000)));
        assert!(queue.push(chunk(1000)));
        assert!(queue.push(heartbeat(1)));
        assert!(queue.push(heartbeat(2)));
        assert!(!queue.push(heartbeat(3)), "message bound");
        let mut batch = Vec::new();
        assert!(queue.take_batch(&mut batch, 1 << 20));
        assert_eq!(
            batch,
            [heartbeat(1), heartbeat(2)],
            "urgent first, chunks wait"
        );
        batch.clear();
        assert!(queue.take_batch(&mut batch, 1 << 20));
        assert_eq!(batch.len(), 1, "one chunk at a time");
        assert!(queue.push(heartbeat(4)));
        batch.clear();
        queue.take_batch(&mut batch, 1 << 20);
        assert_eq!(
            batch,
            [heartbeat(4)],
            "a new heartbeat goes before the next chunk"
        );
        let small = PeerQueue::new(100, 1500);
        assert!(small.push(chunk(1000)));
        assert!(!small.push(chunk(1000)), "byte bound");
        assert_eq!(small.clear(), 1);
        assert_eq!(small.len(), (0, 0));
    }
}
