//! The engine's side of membership: the replicated member table (every
//! member's addresses) and the transport's peer list, which follows the
//! configuration and that table.

use dr_codec::message::{ConfState, NodeId};

use super::Engine;
use crate::kv;

impl Engine {
    pub(super) fn reload_members(&mut self) {
        match kv::members(self.raft.storage()) {
            Ok(members) => {
                self.members = members.into_iter().collect();
                self.status.publish_members(&self.members);
            }
            Err(error) => tracing::error!(%error, "cannot read the member table"),
        }
    }

    /// Connects to every member of `conf` whose address is known, and
    /// forgets peers that are no longer members.
    pub(super) fn sync_peers(&mut self, conf: &ConfState) {
        let me = self.raft.id();
        let members: Vec<NodeId> = conf
            .voters
            .iter()
            .chain(&conf.voters_outgoing)
            .chain(&conf.learners)
            .chain(&conf.learners_next)
            .copied()
            .filter(|&id| id != me)
            .collect();
        for &id in &members {
            let recorded = self.members.get(&id).and_then(|m| m.peer.parse().ok());
            let Some(addr) = recorded.or_else(|| self.config.peers.get(&id).copied()) else {
                continue;
            };
            if self.connected_peers.get(&id) != Some(&addr) {
                tracing::info!(peer = id, %addr, "connecting to member");
                self.transport.add_peer(id, addr);
                self.connected_peers.insert(id, addr);
            }
        }
        let gone: Vec<NodeId> = self
            .connected_peers
            .keys()
            .copied()
            .filter(|id| !members.contains(id))
            .collect();
        if members.is_empty() && !conf.voters.contains(&me) && conf.voters.is_empty() {
            // No configuration yet (a joining node): keep the given peers.
            return;
        }
        for id in gone {
            tracing::info!(peer = id, "disconnecting from a removed member");
            self.transport.remove_peer(id);
            self.connected_peers.remove(&id);
        }
    }
}
