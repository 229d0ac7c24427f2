//! The first 32 bytes each side of a peer connection sends: who it is,
//! which cluster it belongs to, and which formats it speaks. A connection
//! whose hello does not match is closed before any message is read.
//!
//! ```text
//! 0  magic "DRTP"            4 bytes
//! 4  protocol version        u16 LE
//! 6  codec format version    u16 LE (dr-codec's FORMAT_VERSION)
//! 8  cluster id              u64 LE
//! 16 node id                 u64 LE
//! 24 reserved, zero          u32
//! 28 crc32c of bytes 0..28   u32 LE
//! ```

use std::fmt;

use dr_codec::message::NodeId;

/// Bytes of a hello.
pub const HELLO_LEN: usize = 32;
/// The first bytes of every peer connection.
pub const MAGIC: [u8; 4] = *b"DRTP";
/// The version of this handshake and connection protocol.
pub const PROTOCOL_VERSION: u16 = 1;

/// What one side says about itself when a connection opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The cluster the node belongs to.
    pub cluster_id: u64,
    /// The node.
    pub node_id: NodeId,
}

/// Why a connection was refused during its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The bytes are not a dr hello (another protocol, garbage).
    BadMagic([u8; 4]),
    /// The hello's checksum does not match: damaged bytes.
    Checksum,
    /// A reserved field is not zero.
    Reserved,
    /// The peer speaks another protocol version.
    ProtocolVersion(u16),
    /// The peer writes another dr-codec format version.
    CodecVersion(u16),
    /// The peer belongs to another cluster.
    ClusterMismatch {
        /// This node's cluster.
        ours: u64,
        /// The peer's.
        theirs: u64,
    },
    /// The peer is not a member this node knows.
    UnknownPeer(NodeId),
    /// The node dialled answered as another node.
    WrongPeer {
        /// The node dialled.
        expected: NodeId,
        /// The node that answered.
        found: NodeId,
    },
    /// The peer dialled although this node is the one that dials it (the
    /// lower id dials): a misconfigured or confused peer.
    WrongDirection(NodeId),
    /// The TLS handshake failed (no certificate, or one the cluster CA
    /// did not sign, or a peer that does not speak TLS).
    Tls(String),
    /// The peer sent nothing in time.
    Timeout,
    /// The connection failed or closed during the handshake.
    Io(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(magic) => write!(f, "not a dr peer (first bytes {magic:02x?})"),
            Self::Checksum => f.write_str("the hello fails its checksum"),
            Self::Reserved => f.write_str("the hello's reserved field is not zero"),
            Self::ProtocolVersion(found) => write!(
                f,
                "the peer speaks protocol version {found}, this node {PROTOCOL_VERSION}"
            ),
            Self::CodecVersion(found) => write!(
                f,
                "the peer writes codec format {found}, this node {}",
                dr_codec::frame::FORMAT_VERSION
            ),
            Self::ClusterMismatch { ours, theirs } => write!(
                f,
                "the peer belongs to cluster {theirs:#x}, this node to {ours:#x}"
            ),
            Self::UnknownPeer(id) => write!(f, "node {id} is not a known peer"),
            Self::WrongPeer { expected, found } => {
                write!(f, "dialled node {expected} but node {found} answered")
            }
            Self::WrongDirection(id) => write!(
                f,
                "node {id} dialled, but between us the lower id dials and it is the higher"
            ),
            Self::Tls(error) => write!(f, "TLS handshake failed: {error}"),
            Self::Timeout => f.write_str("no hello in time"),
            Self::Io(error) => write!(f, "connection failed during the handshake: {error}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

impl Hello {
    /// The 32 bytes sent on the wire.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut bytes = [0u8; HELLO_LEN];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes[6..8].copy_from_slice(&dr_codec::frame::FORMAT_VERSION.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.cluster_id.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.node_id.to_le_bytes());
        let crc = dr_simd::crc32c(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Reads a hello from the wire, checking every field this node can
    /// check on its own (the caller checks cluster and identity).
    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Self, HandshakeError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(HandshakeError::BadMagic(magic));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if dr_simd::crc32c(&bytes[..28]) != word(28) {
            return Err(HandshakeError::Checksum);
        }
        let half = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        if half(4) != PROTOCOL_VERSION {
            return Err(HandshakeError::ProtocolVersion(half(4)));
        }
        if half(6) != dr_codec::frame::FORMAT_VERSION {
            return Err(HandshakeError::CodecVersion(half(6)));
        }
        if word(24) != 0 {
            return Err(HandshakeError::Reserved);
        }
        let long = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Ok(Self {
            cluster_id: long(8),
            node_id: long(16),
        })
    }

    /// Checks the peer's hello against this node's: same cluster.
    pub fn check_cluster(&self, ours: u64) -> Result<(), HandshakeError> {
        if self.cluster_id != ours {
            return Err(HandshakeError::ClusterMismatch {
                ours,
                theirs: self.cluster_id,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip_and_every_damage_is_caught() {
        let hello = Hello {
            cluster_id: 0xC1u64 << 32 | 7,
            node_id: 3,
        };
        let bytes = hello.encode();
        assert_eq!(Hello::decode(&bytes), Ok(hello));
        for position in 0..HELLO_LEN {
            for bit in 0..8 {
                let mut damaged = bytes;
                damaged[position] ^= 1 << bit;
                assert!(Hello::decode(&damaged).is_err(), "flip at {position}.{bit}");
            }
        }
        assert!(matches!(
            Hello::decode(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n12345"),
            Err(HandshakeError::BadMagic(_))
        ));
        assert!(hello.check_cluster(1).is_err());
        assert!(hello.check_cluster(hello.cluster_id).is_ok());
    }
}
