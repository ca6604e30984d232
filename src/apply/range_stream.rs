//! `KV.RangeStream` (etcd 3.7): a range answered in chunks, all read at one revision.
//!
//! What the stream means, as etcd 3.7 serves it: the chunks' `kvs` are disjoint slices of the
//! answer `Range` gives for the same request, in order; `header`, `more` and `count` are set only
//! on the final chunk (a count-only request gets one chunk with the header and the count). The
//! revision is pinned by the first chunk (a request for revision 0 reads, to its end, the head
//! revision as it was then; the header carries that head revision), so writes after it are not
//! seen, and a compaction past it ends the stream with `ErrCompacted`. Chunks start at
//! [`RANGE_STREAM_FIRST_CHUNK_KEYS`] keys, and each next one doubles or halves its key limit when
//! the last chunk's encoded size was below half or above twice the target (etcd's rule; the target
//! is `--max-request-bytes`). Unlike etcd, a chunk is also cut before its records pass twice the
//! target (and the next limit halved, as after a chunk over it), so neither a run of large values
//! nor a limit grown over small ones makes a chunk, or what the server holds of a stream, larger
//! than that (one record larger than that goes alone).
//!
//! The request is already validated (`api::validate::range_stream`): default key order, no
//! revision filters. Each chunk is one short read of the store; nothing is held between chunks but
//! this cursor.

use super::{header, ApplyError};
use crate::limits::{RANGE_STREAM_CHUNK_BYTES_FACTOR, RANGE_STREAM_FIRST_CHUNK_KEYS};
use crate::mvcc::{MvccStore, RangeEnd};
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse};

/// Where a stream is: the request with its key moved past what was sent and its revision pinned.
#[derive(Debug, Clone)]
pub struct RangeStream {
    req: RangeRequest,
    end: RangeEnd,
    /// Keys the client may still be sent (`None`: no limit).
    remaining: Option<u64>,
    /// Key limit of the next chunk.
    chunk_keys: usize,
    target_bytes: usize,
    /// The store's head revision when the first chunk was read (0 before).
    header_rev: i64,
    sent: i64,
    done: bool,
}

impl RangeStream {
    /// A stream of `req`'s answer in chunks of about `target_bytes` (`--max-request-bytes`).
    pub fn new(req: RangeRequest, target_bytes: usize) -> Self {
        let remaining = u64::try_from(req.limit).ok().filter(|&l| l > 0);
        let end = RangeEnd::from_etcd(&req.range_end);
        let chunk_keys = remaining.map_or(RANGE_STREAM_FIRST_CHUNK_KEYS, |r| {
            RANGE_STREAM_FIRST_CHUNK_KEYS.min(usize::try_from(r).unwrap_or(usize::MAX))
        });
        Self {
            req,
            end,
            remaining,
            chunk_keys,
            target_bytes: target_bytes.max(1),
            header_rev: 0,
            sent: 0,
            done: false,
        }
    }

    /// Whether the final chunk was read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The revision the stream reads at (0 before its first chunk, if the request named none).
    pub fn revision(&self) -> i64 {
        self.req.revision
    }

    /// Read the next chunk from `store`. After the final one, [`RangeStream::is_done`] holds.
    pub fn next_chunk(&mut self, store: &MvccStore) -> Result<RangeResponse, ApplyError> {
        debug_assert!(!self.done, "a chunk asked of a finished stream");
        if self.req.count_only {
            let result = store.range(&self.req.key, &self.end, self.req.revision, 0, true)?;
            self.done = true;
            return Ok(RangeResponse {
                header: header(result.rev),
                count: result.count as i64,
                ..RangeResponse::default()
            });
        }
        let bytes_max = self
            .target_bytes
            .saturating_mul(RANGE_STREAM_CHUNK_BYTES_FACTOR);
        let chunk = store.range_chunk(
            &self.req.key,
            &self.end,
            self.req.revision,
            self.chunk_keys,
            bytes_max,
            self.req.keys_only,
        )?;
        if self.header_rev == 0 {
            self.header_rev = chunk.rev;
            // Pinned: later chunks read what the first one saw. (etcd pins only revision 0 and
            // reads a negative one, which Range serves as the head, at the moving head.)
            if self.req.revision <= 0 {
                self.req.revision = chunk.rev;
            }
        }
        let n = chunk.kvs.len();
        self.sent += n as i64;
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(n as u64);
        }
        let mut out = RangeResponse {
            kvs: chunk.kvs,
            ..RangeResponse::default()
        };
        let next_key = match out.kvs.last() {
            Some(kv) if chunk.more => {
                let mut next = kv.key.clone();
                next.push(0);
                Some(next)
            }
            _ => None,
        };
        let next_key = match next_key {
            Some(next) if self.remaining != Some(0) => next,
            rest => {
                // The final chunk: as Range, `more` says the limit left keys out and `count`
                // covers the whole range at the pinned revision.
                self.done = true;
                out.header = header(self.header_rev);
                out.more = rest.is_some();
                out.count = self.sent;
                if let Some(next) = rest {
                    let tail = store.range(&next, &self.end, self.req.revision, 0, true)?;
                    out.count += tail.count as i64;
                }
                return Ok(out);
            }
        };
        self.req.key = next_key;
        // A chunk cut short by its byte bound was over twice the target with its next record.
        let bytes = if n < self.chunk_keys {
            usize::MAX
        } else {
            chunk.bytes
        };
        self.chunk_keys = adjust_chunk_keys(self.chunk_keys, bytes, self.target_bytes);
        if let Some(r) = self.remaining {
            self.chunk_keys = self
                .chunk_keys
                .min(usize::try_from(r).unwrap_or(usize::MAX));
        }
        Ok(out)
    }
}

/// etcd's `adjustChunkLimit`: the next chunk's key limit, doubled after a chunk under half the
/// target size, halved after one over twice the target, otherwise kept; never 0.
fn adjust_chunk_keys(keys: usize, bytes: usize, target_bytes: usize) -> usize {
    let keys = if bytes < target_bytes / 2 {
        keys.saturating_mul(2)
    } else if bytes > target_bytes.saturating_mul(2) {
        keys / 2
    } else {
        keys
    };
    keys.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_double_below_half_and_halve_above_twice_the_target() {
        assert_eq!(adjust_chunk_keys(10, 100, 1000), 20);
        assert_eq!(adjust_chunk_keys(10, 500, 1000), 10);
        assert_eq!(adjust_chunk_keys(10, 2000, 1000), 10);
        assert_eq!(adjust_chunk_keys(10, 2001, 1000), 5);
        assert_eq!(adjust_chunk_keys(1, 5000, 1000), 1);
        assert_eq!(adjust_chunk_keys(usize::MAX, 0, 1000), usize::MAX);
    }
}
