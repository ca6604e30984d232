//! MetaStore's own backup format (`metastore-backup-v2`): what `Maintenance.Snapshot` streamed
//! (and `etcdctl snapshot save` wrote) before MetaStore wrote etcd's snapshot file
//! ([`super::etcd_snapshot::writer`]). `metastore snapshot restore` still reads it, told from
//! etcd's files by its first bytes, so backups taken by older members keep restoring; the writer
//! stays for tests and for the fuzz seeds of the reader.
//!
//! The framing is etcd's, so etcdctl accepted these files too: a body whose length is a multiple of
//! 512 bytes followed by the SHA-256 of that body. The body is a magic line, then snapshot chunks
//! (see [`super::snapshot`]) each preceded by its length (u32, big-endian), a zero length to end
//! them, and zero padding. etcd's tools cannot read it.
//!
//! Both directions stream: a backup is produced from a frozen view one chunk at a time, and a
//! restore checks the hash in one pass over the file and copies the records in a second.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::snapshot::{decode_chunk, ChunkReader};
use super::state_machine::CLUSTER_BOUND_META;
use crate::limits;
use crate::storage::{Durability, Engine, EngineView, Keyspace, WriteBatch};

/// First bytes of every backup.
pub const MAGIC: &[u8] = b"metastore-backup-v2\n";

/// etcdctl wants the body (before the hash) to be whole 512-byte pages, as a bbolt file is.
const PAGE: usize = 512;
const HASH_BYTES: usize = 32;
const LEN_BYTES: usize = 4;

/// Largest chunk a restore accepts (a chunk holds whole records, so it can pass the chunk size by
/// one record).
const MAX_CHUNK_BYTES: usize = limits::SNAPSHOT_CHUNK_BYTES + 2 * limits::MAX_REQUEST_BYTES_DEFAULT;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Magic,
    Chunks,
    Done,
}

/// Produces a backup of a frozen view piece by piece (each piece at most about a chunk).
pub struct BackupWriter {
    chunks: ChunkReader,
    hasher: Sha256,
    body_bytes: usize,
    stage: Stage,
}

impl BackupWriter {
    /// A backup of `view`.
    pub fn new(view: Arc<dyn EngineView>) -> Self {
        Self {
            chunks: ChunkReader::new(view),
            hasher: Sha256::new(),
            body_bytes: 0,
            stage: Stage::Magic,
        }
    }

    /// The next piece of the file; `None` after the last.
    pub fn next_piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        let piece = match self.stage {
            Stage::Done => return Ok(None),
            Stage::Magic => {
                self.stage = Stage::Chunks;
                MAGIC.to_vec()
            }
            Stage::Chunks => match self.chunks.next_chunk()? {
                Some(chunk) => {
                    let mut piece = Vec::with_capacity(LEN_BYTES + chunk.len());
                    piece.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
                    piece.extend_from_slice(&chunk);
                    piece
                }
                None => {
                    self.stage = Stage::Done;
                    let mut end = vec![0u8; LEN_BYTES];
                    let body = self.body_bytes + end.len();
                    end.resize(end.len() + body.div_ceil(PAGE) * PAGE - body, 0);
                    self.hasher.update(&end);
                    let hash = std::mem::take(&mut self.hasher).finalize();
                    end.extend_from_slice(&hash);
                    return Ok(Some(end));
                }
            },
        };
        self.hasher.update(&piece);
        self.body_bytes += piece.len();
        Ok(Some(piece))
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Check a backup (hash first, then framing) and write its data into `engine` (which must be
/// empty), leaving out what belongs to the old cluster (applied index, membership, member
/// attributes, alarms): the member started on it founds a new cluster with the same keys,
/// history and leases. Returns the number of `Kv` records restored.
pub fn restore<R: Read + Seek>(engine: &dyn Engine, mut file: R) -> io::Result<usize> {
    let len = file.seek(SeekFrom::End(0))? as usize;
    if len < MAGIC.len() + LEN_BYTES + HASH_BYTES || (len - HASH_BYTES) % PAGE != 0 {
        return Err(invalid("not a MetaStore backup (bad size)"));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut magic = vec![0u8; MAGIC.len()];
    file.read_exact(&mut magic)?;
    if magic != MAGIC {
        return Err(invalid("not a MetaStore backup (bad header)"));
    }

    // Pass 1: the hash over the whole body.
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut body = (&mut file).take((len - HASH_BYTES) as u64);
    io::copy(&mut body, &mut hasher)?;
    let mut hash = [0u8; HASH_BYTES];
    file.read_exact(&mut hash)?;
    if hasher.finalize().as_slice() != hash {
        return Err(invalid(
            "backup checksum mismatch: the file is damaged or truncated",
        ));
    }

    // Pass 2: the records, one chunk at a time.
    file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
    let mut file = io::BufReader::new(file);
    let mut records = 0;
    loop {
        let mut chunk_len = [0u8; LEN_BYTES];
        file.read_exact(&mut chunk_len)
            .map_err(|_| invalid("backup ends before its last chunk"))?;
        let chunk_len = u32::from_be_bytes(chunk_len) as usize;
        if chunk_len == 0 {
            break;
        }
        if chunk_len > MAX_CHUNK_BYTES {
            return Err(invalid("backup chunk larger than any MetaStore writes"));
        }
        let mut chunk = vec![0u8; chunk_len];
        file.read_exact(&mut chunk)
            .map_err(|_| invalid("backup ends inside a chunk"))?;
        let mut batch = WriteBatch::new();
        for (ks, k, v) in decode_chunk(&chunk)? {
            if ks == Keyspace::Meta && CLUSTER_BOUND_META.iter().any(|p| k.starts_with(p)) {
                continue;
            }
            if ks == Keyspace::Kv {
                records += 1;
            }
            batch.put(ks, k, v);
        }
        engine.write(batch, Durability::Buffered)?;
    }
    engine.sync()?;
    Ok(records)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mvcc::{CompactStep, MvccStore};
    use crate::raft::snapshot::tests::dump;
    use crate::storage::{MemoryEngine, SharedEngine};

    fn backup_of(engine: &dyn Engine) -> Vec<u8> {
        let mut writer = BackupWriter::new(engine.view().unwrap());
        let mut out = Vec::new();
        while let Some(piece) = writer.next_piece().unwrap() {
            assert!(piece.len() <= MAX_CHUNK_BYTES + LEN_BYTES);
            out.extend_from_slice(&piece);
        }
        out
    }

    fn source() -> MemoryEngine {
        let engine = MemoryEngine::new();
        let mut b = WriteBatch::new();
        b.put(Keyspace::Meta, "sm/applied", "cluster-bound");
        b.put(Keyspace::Meta, "lease/1", "kept");
        for i in 0..2500u32 {
            b.put(Keyspace::Kv, i.to_be_bytes(), [1u8; 1000]);
        }
        engine.write(b, Durability::Sync).unwrap();
        engine
    }

    #[test]
    fn a_backup_round_trips_without_the_cluster_bound_records() {
        let from = source();
        let backup = backup_of(&from);
        assert_eq!((backup.len() - HASH_BYTES) % PAGE, 0);
        let to = MemoryEngine::new();
        assert_eq!(restore(&to, io::Cursor::new(&backup)).unwrap(), 2500);
        assert_eq!(
            to.get(Keyspace::Meta, b"lease/1").unwrap().as_deref(),
            Some(&b"kept"[..])
        );
        assert_eq!(to.get(Keyspace::Meta, b"sm/applied").unwrap(), None);
        assert_eq!(
            to.get(Keyspace::Kv, &7u32.to_be_bytes()).unwrap(),
            Some(vec![1u8; 1000])
        );
    }

    /// A store of 200 revisions over ten keys, compacted 5 revisions below its head, whose
    /// compaction has done its key index (three steps of four keys) and its first records but
    /// is not finished; with the compaction revision.
    pub(crate) fn half_compacted_store() -> (SharedEngine, MvccStore, i64) {
        let engine: SharedEngine = Arc::new(MemoryEngine::new());
        let mut s = MvccStore::open(engine.clone()).unwrap();
        for i in 0..200u32 {
            let mut txn = s.write_txn();
            let key = format!("k{}", i % 10);
            txn.put(key.as_bytes(), i.to_be_bytes().to_vec(), 0)
                .unwrap();
            engine.write(txn.finish().0, Durability::Sync).unwrap();
            s.mark_flushed();
        }
        let at = s.current_revision() - 5;
        let mut batch = WriteBatch::new();
        s.compact(at, &mut batch).unwrap();
        engine.write(batch, Durability::Sync).unwrap();
        for _ in 0..5 {
            assert_ne!(s.compact_step(4).unwrap(), CompactStep::Idle);
        }
        (engine, s, at)
    }

    #[test]
    fn a_backup_taken_mid_compaction_restores_a_store_that_finishes_it() {
        let dump = |engine: &SharedEngine| dump(engine.as_ref(), Keyspace::Kv);
        let (engine, mut s, at) = half_compacted_store();
        let backup = backup_of(engine.as_ref());
        s.finish_compaction().unwrap();

        let to: SharedEngine = Arc::new(MemoryEngine::new());
        restore(to.as_ref(), io::Cursor::new(&backup)).unwrap();
        let mut restored = MvccStore::open(to.clone()).unwrap();
        assert_eq!(restored.compact_revision(), at);
        assert!(
            restored.compaction_pending(),
            "the backup caught it half-way"
        );
        for rev in at + 1..=s.current_revision() {
            assert_eq!(restored.hash_kv(rev).unwrap(), s.hash_kv(rev).unwrap());
        }
        restored.finish_compaction().unwrap();
        assert_eq!(dump(&to), dump(&engine));
    }

    #[test]
    fn damaged_backups_are_refused() {
        let engine = MemoryEngine::new();
        assert!(restore(&engine, io::Cursor::new(b"nonsense")).is_err());
        let mut fake = MAGIC.to_vec();
        fake.resize(PAGE + HASH_BYTES, 0);
        let err = restore(&engine, io::Cursor::new(&fake)).expect_err("bad checksum");
        assert!(err.to_string().contains("checksum"), "{err}");
        let mut flipped = backup_of(&source());
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        let err = restore(&engine, io::Cursor::new(&flipped)).expect_err("bad checksum");
        assert!(err.to_string().contains("checksum"), "{err}");
        let mut keys = 0;
        engine
            .scan(Keyspace::Kv, &[], None, &mut |_, _| {
                keys += 1;
                true
            })
            .unwrap();
        assert_eq!(keys, 0, "a refused backup writes nothing");
    }
}
