//! openraft glue: the type configuration, the log store and state machine over [`Engine`]
//! (snapshots included), backups (ours, and etcd's snapshot files read by [`etcd_snapshot`]), the
//! peer network, and the commands this member forwarded to the leader ([`forwards`]).
//!
//! | openraft trait | implemented by |
//! |---|---|
//! | `RaftTypeConfig` | [`TypeConfig`] (this file) |
//! | `AsyncRuntime` | [`crate::rt::SeamRuntime`] |
//! | `RaftLogStorage`, `RaftLogReader` | [`log_store::LogStore`] (newest entries from [`log_tail::LogTail`]) |
//! | `RaftStateMachine`, `RaftSnapshotBuilder` | [`state_machine::StateMachine`] |
//! | `RaftNetworkFactory`, `RaftNetworkV2` | [`network::Network`] (gRPC `Peer` service; `net::dial` adds TLS for `https://` peers) |
//!
//! [`Engine`]: crate::storage::Engine

pub mod backup;
pub mod etcd_snapshot;
pub mod forwards;
pub mod log_store;
pub mod log_tail;
pub mod network;
pub mod snapshot;
pub mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::apply::{Applied, ApplyError};
pub use crate::cluster::PeerNode;

/// The payload of a raft log entry: a protobuf-encoded `metastore.Command`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftCommand {
    /// The encoded command (serialized as one byte string, not a sequence of numbers).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl fmt::Debug for RaftCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RaftCommand({} bytes)", self.bytes.len())
    }
}

impl fmt::Display for RaftCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What applying a command produced. It never crosses the network (the proposer applies its own
/// entries), so it is not serialized.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The outcome, taken out by the proposer.
    #[serde(skip)]
    pub outcome: Option<Result<Applied, ApplyError>>,
}

openraft::declare_raft_types!(
    /// MetaStore's raft types.
    pub TypeConfig:
        D = RaftCommand,
        R = CommandResponse,
        NodeId = u64,
        Node = PeerNode,
        AsyncRuntime = crate::rt::SeamRuntime,
);

/// The raft handle.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
/// A log id.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Membership as stored by the state machine.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

/// Encode a value for the engine (compact, deterministic).
pub(crate) fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(std::io::Error::other)
}

/// Decode a value written by [`encode`].
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> std::io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
