//! Snapshots of the replicated state as streams of bounded chunks, so neither the member that
//! sends one nor the member that receives one ever holds more than a chunk of it in memory.
//!
//! - Sending: a [`ChunkReader`] walks a frozen [`EngineView`] of the `Meta` and `Kv` keyspaces and
//!   cuts it into chunks of about [`limits::SNAPSHOT_CHUNK_BYTES`] (raft snapshots and backups).
//! - Receiving: each chunk is [`stage`]d into this member's own engine (a reserved prefix of the
//!   `Raft` keyspace) as it arrives; nothing is replaced until the whole snapshot is there.
//! - Installing: [`install_staged`] replaces `Meta` and `Kv` with the staged records in bounded
//!   batches. An "installing" marker, synced first, makes it crash-safe: a member that restarts with
//!   the marker set finishes the copy ([`finish_interrupted_install`]) before it opens its store.
//!
//! Chunk format: a postcard `Vec<(keyspace, key, value)>`, every record whole.

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{decode, encode};
use crate::limits;
use crate::storage::{Durability, Engine, EngineView, Keyspace, WriteBatch};

/// The keyspaces a snapshot carries, in the order they are sent.
const SNAPSHOT_KEYSPACES: [Keyspace; 2] = [Keyspace::Meta, Keyspace::Kv];

/// Where received records wait in the `Raft` keyspace: prefix, keyspace tag, key.
const STAGING_PREFIX: &[u8] = b"snapshot/";
const STAGING_END: &[u8] = b"snapshot0";
/// Set (synced) while staged records replace the state; its value is the final batch of `Meta`
/// records (applied log id and membership) written when the copy is done.
const INSTALLING_KEY: &[u8] = b"snapshot-installing";

const _: () = assert!(STAGING_PREFIX[STAGING_PREFIX.len() - 1] + 1 == STAGING_END[8]);

/// One record on the wire.
#[derive(Serialize, Deserialize)]
struct Record(u8, ByteBuf, ByteBuf);

fn tag(ks: Keyspace) -> u8 {
    ks as u8
}

fn keyspace_of(tag: u8) -> io::Result<Keyspace> {
    SNAPSHOT_KEYSPACES
        .into_iter()
        .find(|ks| *ks as u8 == tag)
        .ok_or_else(|| invalid(format!("snapshot record for unknown keyspace {tag}")))
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Cuts a frozen view into chunks, one at a time.
pub struct ChunkReader {
    view: Arc<dyn EngineView>,
    /// The keyspace (index into [`SNAPSHOT_KEYSPACES`]) and key to resume from; `None` when done.
    next: Option<(usize, Vec<u8>)>,
}

impl ChunkReader {
    /// A reader from the first record of `view`.
    pub fn new(view: Arc<dyn EngineView>) -> Self {
        Self {
            view,
            next: Some((0, Vec::new())),
        }
    }

    /// The next chunk, `None` once every record was returned.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut records = Vec::new();
        let mut bytes = 0usize;
        while let Some((index, start)) = self.next.take() {
            let ks = SNAPSHOT_KEYSPACES[index];
            let mut resume = None;
            // Read once to be sent: around the block cache.
            self.view.scan_uncached(ks, &start, None, &mut |k, v| {
                if bytes >= limits::SNAPSHOT_CHUNK_BYTES {
                    resume = Some(k.to_vec());
                    return false;
                }
                bytes += k.len() + v.len();
                records.push(Record(tag(ks), ByteBuf::from(k), ByteBuf::from(v)));
                true
            })?;
            self.next = match resume {
                Some(key) => Some((index, key)),
                None if index + 1 < SNAPSHOT_KEYSPACES.len() => Some((index + 1, Vec::new())),
                None => None,
            };
            if bytes >= limits::SNAPSHOT_CHUNK_BYTES {
                break;
            }
        }
        if records.is_empty() {
            return Ok(None);
        }
        encode(&records).map(Some)
    }
}

/// One record of a snapshot: `(keyspace, key, value)`.
pub type SnapshotRecord = (Keyspace, Vec<u8>, Vec<u8>);

/// The records of one chunk.
pub fn decode_chunk(chunk: &[u8]) -> io::Result<Vec<SnapshotRecord>> {
    if chunk.is_empty() {
        return Ok(Vec::new());
    }
    let records: Vec<Record> = decode(chunk)?;
    records
        .into_iter()
        .map(|Record(t, k, v)| Ok((keyspace_of(t)?, k.into_vec(), v.into_vec())))
        .collect()
}

fn staging_key(ks: Keyspace, key: &[u8]) -> Vec<u8> {
    let mut staged = Vec::with_capacity(STAGING_PREFIX.len() + 1 + key.len());
    staged.extend_from_slice(STAGING_PREFIX);
    staged.push(tag(ks));
    staged.extend_from_slice(key);
    staged
}

/// Throw away whatever an earlier, unfinished transfer staged.
pub fn clear_staging(engine: &dyn Engine) -> io::Result<()> {
    let mut batch = WriteBatch::new();
    batch.delete_range(Keyspace::Raft, STAGING_PREFIX, STAGING_END);
    engine.write(batch, Durability::Buffered)?;
    Ok(())
}

/// Stage the records of one received chunk. Returns how many it held.
pub fn stage(engine: &dyn Engine, chunk: &[u8]) -> io::Result<usize> {
    let records = decode_chunk(chunk)?;
    let mut batch = WriteBatch::new();
    let count = records.len();
    for (ks, k, v) in records {
        batch.put(Keyspace::Raft, staging_key(ks, &k), v);
    }
    engine.write(batch, Durability::Buffered)?;
    Ok(count)
}

/// Replace every `Meta` and `Kv` record with the staged ones, then write `last` (the applied log
/// id and membership the snapshot brings). Crash-safe: see the module docs. Returns how many
/// records were installed.
pub fn install_staged(engine: &dyn Engine, last: Vec<(Vec<u8>, Vec<u8>)>) -> io::Result<usize> {
    let mut marker = WriteBatch::new();
    marker.put(Keyspace::Raft, INSTALLING_KEY, encode(&last)?);
    engine.write(marker, Durability::Sync)?;
    copy_staged(engine, last)
}

/// If a crash interrupted [`install_staged`], finish it; otherwise drop any half-received
/// snapshot. Call before anything reads `Meta` or `Kv`.
pub fn finish_interrupted_install(engine: &dyn Engine) -> io::Result<Option<usize>> {
    match engine.get(Keyspace::Raft, INSTALLING_KEY)? {
        Some(last) => {
            let last: Vec<(Vec<u8>, Vec<u8>)> = decode(&last)?;
            copy_staged(engine, last).map(Some)
        }
        None => {
            clear_staging(engine)?;
            Ok(None)
        }
    }
}

fn copy_staged(engine: &dyn Engine, last: Vec<(Vec<u8>, Vec<u8>)>) -> io::Result<usize> {
    // Empty both keyspaces: one range delete from the first key through the last one.
    let mut clear = WriteBatch::new();
    for ks in SNAPSHOT_KEYSPACES {
        let mut last_key = None;
        engine.scan_rev(ks, &[], None, &mut |k, _| {
            last_key = Some(k.to_vec());
            false
        })?;
        if let Some(mut end) = last_key {
            end.push(0);
            clear.delete_range(ks, Vec::new(), end);
        }
    }
    engine.write(clear, Durability::Buffered)?;

    // Copy in batches of about a chunk, resuming after the last staged key copied.
    let mut start = STAGING_PREFIX.to_vec();
    let mut copied = 0usize;
    loop {
        let mut batch = WriteBatch::new();
        let mut bytes = 0usize;
        let mut resume = None;
        let mut failure = None;
        engine.scan(Keyspace::Raft, &start, Some(STAGING_END), &mut |k, v| {
            if bytes >= limits::SNAPSHOT_CHUNK_BYTES {
                resume = Some(k.to_vec());
                return false;
            }
            let rest = &k[STAGING_PREFIX.len()..];
            match rest.split_first().map(|(t, key)| (keyspace_of(*t), key)) {
                Some((Ok(ks), key)) => {
                    batch.put(ks, key, v);
                    bytes += k.len() + v.len();
                    copied += 1;
                    true
                }
                Some((Err(e), _)) => {
                    failure = Some(e);
                    false
                }
                None => {
                    failure = Some(invalid("staged snapshot record without a keyspace"));
                    false
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        engine.write(batch, Durability::Buffered)?;
        match resume {
            Some(key) => start = key,
            None => break,
        }
    }

    let mut done = WriteBatch::new();
    for (k, v) in last {
        done.put(Keyspace::Meta, k, v);
    }
    done.delete_range(Keyspace::Raft, STAGING_PREFIX, STAGING_END);
    done.delete(Keyspace::Raft, INSTALLING_KEY);
    engine.write(done, Durability::Sync)?;
    Ok(copied)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::MemoryEngine;

    fn put(engine: &dyn Engine, ks: Keyspace, k: &[u8], v: &[u8]) {
        let mut b = WriteBatch::new();
        b.put(ks, k, v);
        engine.write(b, Durability::Sync).unwrap();
    }

    /// Every record of `ks`, in key order.
    pub(crate) fn dump(engine: &dyn Engine, ks: Keyspace) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        engine
            .scan(ks, &[], None, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        out
    }

    /// A source with enough data for several chunks.
    fn source() -> MemoryEngine {
        let engine = MemoryEngine::new();
        put(&engine, Keyspace::Meta, b"m1", b"meta");
        for i in 0..3000u32 {
            put(&engine, Keyspace::Kv, &i.to_be_bytes(), &[i as u8; 1000]);
        }
        engine
    }

    fn transfer(from: &dyn Engine, to: &dyn Engine) -> usize {
        let mut reader = ChunkReader::new(from.view().unwrap());
        let mut chunks = 0;
        while let Some(chunk) = reader.next_chunk().unwrap() {
            assert!(
                chunk.len() <= limits::SNAPSHOT_CHUNK_BYTES + 64 * 1024,
                "a chunk of {} bytes",
                chunk.len()
            );
            stage(to, &chunk).unwrap();
            chunks += 1;
        }
        chunks
    }

    #[test]
    fn a_snapshot_moves_in_bounded_chunks_and_replaces_the_state() {
        let from = source();
        let to = MemoryEngine::new();
        put(&to, Keyspace::Kv, b"stale", b"gone after install");
        put(&to, Keyspace::Meta, b"zz-old", b"gone too");
        put(&to, Keyspace::Raft, b"vote", b"kept");
        let chunks = transfer(&from, &to);
        assert!(chunks >= 3, "3 MB in {chunks} chunks");
        // Nothing replaced before the install.
        assert_eq!(
            to.get(Keyspace::Kv, b"stale").unwrap().as_deref(),
            Some(&b"gone after install"[..])
        );
        let last = vec![(b"sm/applied".to_vec(), b"7".to_vec())];
        assert_eq!(install_staged(&to, last).unwrap(), 3001);
        assert_eq!(dump(&to, Keyspace::Kv), dump(&from, Keyspace::Kv));
        let mut meta = dump(&from, Keyspace::Meta);
        meta.push((b"sm/applied".to_vec(), b"7".to_vec()));
        assert_eq!(dump(&to, Keyspace::Meta), meta);
        // Only raft's own records are left in its keyspace.
        assert_eq!(
            dump(&to, Keyspace::Raft),
            vec![(b"vote".to_vec(), b"kept".to_vec())]
        );
    }

    #[test]
    fn an_install_cut_by_a_crash_is_finished_on_restart() {
        let from = source();
        let to = MemoryEngine::with_crash_model();
        put(&to, Keyspace::Kv, b"stale", b"x");
        transfer(&from, &to);
        // The marker is synced (and with it everything staged before it); then the power goes.
        let mut marker = WriteBatch::new();
        let last = vec![(b"sm/applied".to_vec(), b"9".to_vec())];
        marker.put(Keyspace::Raft, INSTALLING_KEY, encode(&last).unwrap());
        to.write(marker, Durability::Sync).unwrap();
        let mut partial = WriteBatch::new();
        partial.delete(Keyspace::Kv, "stale");
        to.write(partial, Durability::Buffered).unwrap();
        to.crash();
        assert_eq!(finish_interrupted_install(&to).unwrap(), Some(3001));
        assert_eq!(dump(&to, Keyspace::Kv), dump(&from, Keyspace::Kv));
        assert_eq!(
            to.get(Keyspace::Meta, b"sm/applied").unwrap().as_deref(),
            Some(&b"9"[..])
        );
        assert_eq!(to.get(Keyspace::Raft, INSTALLING_KEY).unwrap(), None);
        // Nothing more to do on the next start.
        assert_eq!(finish_interrupted_install(&to).unwrap(), None);
    }

    #[test]
    fn a_half_received_snapshot_is_dropped_on_restart() {
        let from = source();
        let to = MemoryEngine::new();
        put(&to, Keyspace::Kv, b"mine", b"kept");
        let mut reader = ChunkReader::new(from.view().unwrap());
        stage(&to, &reader.next_chunk().unwrap().unwrap()).unwrap();
        assert_eq!(finish_interrupted_install(&to).unwrap(), None);
        assert!(dump(&to, Keyspace::Raft).is_empty());
        assert_eq!(
            dump(&to, Keyspace::Kv),
            vec![(b"mine".to_vec(), b"kept".to_vec())]
        );
    }

    #[test]
    fn chunks_with_foreign_keyspaces_or_garbage_are_refused() {
        let raft_record = encode(&vec![Record(
            tag(Keyspace::Raft),
            ByteBuf::from(b"vote".to_vec()),
            ByteBuf::from(b"x".to_vec()),
        )])
        .unwrap();
        assert!(decode_chunk(&raft_record).is_err());
        assert!(decode_chunk(b"\xff\xff\xff").is_err());
        let engine = MemoryEngine::new();
        assert!(stage(&engine, &raft_record).is_err());
        assert!(dump(&engine, Keyspace::Raft).is_empty());
    }
}
