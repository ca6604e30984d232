//! The member's side of `KV.RangeStream`: the read gate once, then one short store read per chunk,
//! each counted among the bytes all streams hold (`Node::range_stream_bytes`) until sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prost::Message;

use super::send_budget::Held;
use super::{Node, NodeError};
use crate::apply::RangeStream;
use crate::auth::{AuthError, AuthStore};
use crate::limits;
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};

/// A range stream in progress on this member, between its chunks.
#[derive(Debug)]
pub struct RangeStreamRead {
    cursor: RangeStream,
    /// The auth revision the permissions were checked at (`None`: auth off).
    checked_at: Option<u64>,
    /// Counts this stream among the member's open ones while it lives.
    _open: OpenStream,
}

/// One open range stream in the member's count (`Node::range_streams`), until dropped.
#[derive(Debug)]
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RangeStreamRead {
    /// Whether the final chunk was read.
    pub fn is_done(&self) -> bool {
        self.cursor.is_done()
    }
}

impl Node {
    /// Start streaming the answer to a validated `req`: as [`Node::range_checked`], a
    /// linearizable request passes the read barrier and `permitted` is asked about the auth state
    /// it is served at, once. Returns the stream and its first chunk with what counts its bytes
    /// (an error here, before any chunk, is the call's answer).
    pub async fn range_stream(
        &self,
        req: RangeRequest,
        permitted: impl FnOnce(&AuthStore) -> Result<(), AuthError>,
    ) -> Result<(RangeStreamRead, RangeResponse, Held), NodeError> {
        let checked_at = self.read_gate(req.serializable, permitted).await?;
        self.metrics.mvcc_range.inc();
        let mut read = RangeStreamRead {
            cursor: RangeStream::new(req, self.config.max_request_bytes),
            checked_at,
            _open: OpenStream::new(&self.range_streams),
        };
        let (first, held) = self.range_stream_next(&mut read)?;
        Ok((read, first, held))
    }

    /// The next chunk of `read`, read at its pinned revision under the store's read lock, which
    /// is held for this chunk only, and sized for the streams open now and the bytes their chunks
    /// hold ([`limits::range_stream_chunk_target`]). The chunk's bytes count among those until
    /// the returned [`Held`] is dropped: the caller keeps it until the chunk is on its way.
    /// Fails with `Compacted` once a compaction passed the pinned revision, and, as a range, when
    /// auth changed since the permissions were checked.
    pub fn range_stream_next(
        &self,
        read: &mut RangeStreamRead,
    ) -> Result<(RangeResponse, Held), NodeError> {
        read.cursor
            .set_target_bytes(limits::range_stream_chunk_target(
                self.range_streams.load(Ordering::SeqCst),
                self.range_stream_bytes.held(),
                self.config.max_request_bytes,
            ));
        let chunk = {
            let store = self.state.read();
            read.cursor.next_chunk(&store)?
        };
        self.auth_unchanged(read.checked_at)?;
        let held = self.range_stream_bytes.hold_anyway(chunk.encoded_len());
        Ok((chunk, held))
    }
}
