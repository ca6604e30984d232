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

    /// Aim the next chunks at `target_bytes` instead (the member shrinks it while many streams
    /// are open). The next chunk is already cut at twice it; its key limit adapts as after any
    /// chunk.
    pub fn set_target_bytes(&mut self, target_bytes: usize) {
        self.target_bytes = target_bytes.max(1);
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
    use std::sync::Arc;

    use super::*;
    use crate::mvcc::kvs_encoded_len;
    use crate::pb::etcdserverpb::ResponseHeader;
    use crate::storage::{Durability, MemoryEngine, WriteBatch};

    fn put(s: &mut MvccStore, key: &[u8], value: Vec<u8>) {
        let mut txn = s.write_txn();
        txn.put(key, value, 0).expect("put");
        let (batch, _) = txn.finish();
        s.engine().write(batch, Durability::Sync).expect("write");
        s.mark_flushed();
    }

    fn delete(s: &mut MvccStore, key: &[u8]) {
        let mut txn = s.write_txn();
        txn.delete_range(key, &RangeEnd::Single).expect("delete");
        let (batch, _) = txn.finish();
        s.engine().write(batch, Durability::Sync).expect("write");
        s.mark_flushed();
    }

    fn compact(s: &mut MvccStore, rev: i64) {
        let mut batch = WriteBatch::new();
        s.compact(rev, &mut batch).expect("compact");
        s.engine().write(batch, Durability::Sync).expect("write");
    }

    /// A few hundred keys, some rewritten, some deleted, values of varied sizes.
    fn store() -> MvccStore {
        let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).expect("open");
        let mut x = 7u64;
        for i in 0..300u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("k/{:03}", (x >> 33) % 400);
            put(&mut s, key.as_bytes(), vec![b'v'; (i as usize * 37) % 700]);
            if i % 7 == 0 {
                delete(&mut s, format!("k/{:03}", i).as_bytes());
            }
        }
        s
    }

    /// Every chunk of `req`'s stream, read to its end (or its first error).
    fn chunks(
        s: &MvccStore,
        req: &RangeRequest,
        target: usize,
    ) -> Result<Vec<RangeResponse>, ApplyError> {
        let mut stream = RangeStream::new(req.clone(), target);
        let mut out = Vec::new();
        while !stream.is_done() {
            out.push(stream.next_chunk(s)?);
        }
        Ok(out)
    }

    /// The chunks merged as `proto.Merge` would, checking that only the last carries the
    /// header, `more` and `count`.
    fn merged(chunks: &[RangeResponse]) -> RangeResponse {
        let (last, rest) = chunks.split_last().expect("at least one chunk");
        let mut all = RangeResponse::default();
        for c in rest {
            assert!(c.header.is_none() && !c.more && c.count == 0, "{c:?}");
            assert!(!c.kvs.is_empty(), "an intermediate chunk without keys");
            all.kvs.extend(c.kvs.iter().cloned());
        }
        all.kvs.extend(last.kvs.iter().cloned());
        all.header = last.header;
        all.more = last.more;
        all.count = last.count;
        all
    }

    #[test]
    fn the_chunks_add_up_to_the_range() {
        let s = store();
        let head = s.current_revision();
        let mut x = 11u64;
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut multi = 0;
        for _ in 0..400 {
            let from = format!("k/{:03}", next(420));
            let range_end = match next(4) {
                0 => Vec::new(),
                1 => vec![0],
                2 => b"k0".to_vec(),
                _ => format!("k/{:03}", next(420)).into_bytes(),
            };
            let req = RangeRequest {
                key: if next(8) == 0 {
                    b"k/".to_vec()
                } else {
                    from.into_bytes()
                },
                range_end,
                limit: [0, 0, 1, 5, 10, 11, 50, 1000, -3][next(9) as usize],
                revision: [0, 0, head, head - 100, 150][next(5) as usize],
                keys_only: next(4) == 0,
                count_only: next(6) == 0,
                serializable: next(2) == 0,
                ..RangeRequest::default()
            };
            let target = [200, 1000, 4096, 1 << 20][next(4) as usize];
            let want = super::super::range(&s, &req).expect("range");
            let got = chunks(&s, &req, target).expect("stream");
            multi += usize::from(got.len() > 1);
            assert_eq!(merged(&got), want, "{req:?} target {target}");
        }
        assert!(
            multi > 100,
            "only {multi} requests took more than one chunk"
        );
    }

    #[test]
    fn a_chunk_stays_within_twice_the_target_unless_one_record_is_larger() {
        let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).expect("open");
        for i in 0..100 {
            let size = if i % 10 == 0 { 5000 } else { 300 };
            put(&mut s, format!("k{i:02}").as_bytes(), vec![b'x'; size]);
        }
        let req = rr(b"k", b"l");
        let got = chunks(&s, &req, 1000).expect("stream");
        for c in &got {
            let bytes = kvs_encoded_len(&c.kvs);
            assert!(
                bytes <= 2000 || c.kvs.len() == 1,
                "{} keys, {bytes} bytes",
                c.kvs.len()
            );
        }
        assert_eq!(merged(&got).kvs.len(), 100);
    }

    fn rr(key: &[u8], end: &[u8]) -> RangeRequest {
        RangeRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            ..RangeRequest::default()
        }
    }

    #[test]
    fn the_revision_is_pinned_by_the_first_chunk() {
        let mut s = store();
        let head = s.current_revision();
        let want = super::super::range(&s, &rr(b"k/", b"k0")).expect("range");
        let mut stream = RangeStream::new(rr(b"k/", b"k0"), 200);
        let mut got = vec![stream.next_chunk(&s).expect("first")];
        assert_eq!(stream.revision(), head);
        put(&mut s, b"k/000", b"new".to_vec());
        put(&mut s, b"k/999", b"new".to_vec());
        delete(&mut s, want.kvs.last().expect("keys").key.as_slice());
        while !stream.is_done() {
            got.push(stream.next_chunk(&s).expect("chunk"));
        }
        assert!(got.len() > 2);
        let got = merged(&got);
        assert_eq!(got, want);
        assert_eq!(
            got.header,
            Some(ResponseHeader {
                revision: head,
                ..Default::default()
            })
        );
    }

    #[test]
    fn a_compaction_past_the_pinned_revision_ends_the_stream() {
        let mut s = store();
        let mut stream = RangeStream::new(rr(b"k/", b"k0"), 200);
        stream.next_chunk(&s).expect("first");
        // A compaction at the pinned revision itself leaves it readable, as in etcd.
        compact(&mut s, stream.revision());
        stream.next_chunk(&s).expect("at the compaction point");
        put(&mut s, b"k/000", b"new".to_vec());
        let head = s.current_revision();
        compact(&mut s, head);
        assert!(matches!(stream.next_chunk(&s), Err(ApplyError::Compacted)));
    }

    #[test]
    fn count_only_is_one_chunk_with_the_header_and_the_count() {
        let s = store();
        let req = RangeRequest {
            count_only: true,
            limit: 3,
            ..rr(b"k/", b"k0")
        };
        let got = chunks(&s, &req, 100).expect("stream");
        assert_eq!(got.len(), 1);
        assert!(got[0].kvs.is_empty() && !got[0].more && got[0].count > 3);
        assert_eq!(got[0], super::super::range(&s, &req).expect("range"));
    }

    #[test]
    fn an_empty_range_is_one_final_chunk() {
        let s = store();
        let got = chunks(&s, &rr(b"x", b"y"), 100).expect("stream");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].count, 0);
        assert!(got[0].header.is_some());
    }

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
