//! Helpers the transport's integration tests share.

#![allow(unreachable_pub, dead_code)]

use dr_codec::message::{Heartbeat, Message, MessageBody, NodeId};

/// A heartbeat from `from` to `to` whose term and commit are `sequence`,
/// so receivers can check order.
pub fn heartbeat(from: NodeId, to: NodeId, sequence: u64) -> Message {
    Message {
        from,
        to,
        term: sequence,
        body: MessageBody::Heartbeat(Heartbeat {
            commit: sequence,
            read_context: 0,
        }),
    }
}
