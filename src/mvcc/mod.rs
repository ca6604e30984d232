//! Multi-version concurrency control: every write makes a new store revision; old revisions stay
//! readable until compacted.
//!
//! * [`revision`]: the `(main, sub)` revision and its sortable encoding.
//! * [`hash`]: hashes of stored records (`HashKV`, `Hash`); `HashKV` reads in pieces, never
//!   holding the store's lock for its length.
//! * [`key_index`]: the in-memory index from key to its generations of revisions.
//! * [`store`]: [`MvccStore`], the index plus records in the engine's `Kv` keyspace; reads at any
//!   retained revision, write transactions, compaction (the point moved by apply, the superseded
//!   history dropped later in bounded steps), restart recovery.

mod hash;
pub mod key_index;
pub mod revision;
mod store;

pub use hash::RecordHasher;
pub use key_index::{KeyAt, RangeEnd};
pub use revision::Revision;
pub use store::{
    drop_compacted_tombstones, kvs_encoded_len, read_events, CompactStep, EventBatch, EventBudget,
    MvccFingerprint, MvccStore, RangeChunk, RangeRead, RangeResult, WriteTxn, FIRST_REVISION,
    META_COMPACT_REV, META_CURRENT_REV, META_SCHEDULED_COMPACT_REV,
};

use crate::storage::StorageError;

/// Errors of the MVCC layer.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// The requested revision was removed by compaction.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the store.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// The store's own invariants do not hold (a corrupt index or revision counter): the member
    /// must stop. No request can cause it.
    #[error("mvcc invariant broken: {0}")]
    Invariant(String),
    /// The engine failed; the member must stop.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Result of MVCC operations.
pub type Result<T> = std::result::Result<T, MvccError>;
