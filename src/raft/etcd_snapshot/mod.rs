//! etcd's snapshot files: the bbolt database `etcdctl snapshot save` writes (etcd 3.4 and 3.5),
//! followed by the SHA-256 of it. Both directions:
//! * [`restore`] turns one into MetaStore's own records in an empty engine, so `metastore snapshot
//!   restore` takes an etcd snapshot (as it takes our older backups, [`super::backup`]); the
//!   member started on it founds a new cluster with etcd's keys, history, leases and users. The
//!   file is read by [`bbolt`].
//! * [`writer`] makes one of a frozen view of MetaStore's state: what `Maintenance.Snapshot`
//!   streams, so `etcdctl snapshot save` against MetaStore writes a file etcd restores. The pages
//!   are written by [`bbolt_write`]; its module docs give the mapping, the mirror of the one below.
//!
//! etcd's buckets and what becomes of them:
//! * `key`: `main(8 BE) '_' sub(8 BE) ['t']` → `mvccpb.KeyValue` (a tombstone holds only the key):
//!   the same records our `Kv` keyspace holds, keyed by our 16-byte revision encoding.
//! * `meta`: `finishedCompactRev` / `scheduledCompactRev` (a revision in the 17-byte encoding): our
//!   compaction point; a compaction etcd had scheduled but not finished is finished here, as etcd
//!   does when it opens such a file. The current revision is the newest record's (at least the
//!   compaction point), as etcd computes it.
//! * `lease`: `id(8 BE)` → `leasepb.Lease` (TTL, remaining TTL when checkpointed).
//! * `auth` (`authEnabled`, `authRevision`), `authUsers`, `authRoles`: the auth state, password
//!   hashes kept (both sides store bcrypt hashes).
//! * `members`, `members_removed`, `cluster`, `alarm`: the old cluster's; left out, as etcdutl does.
//!
//! Everything read is checked: the trailer hash, the bbolt structure ([`bbolt`]), and each record
//! (revision keys, protobufs, names); at the end the written state is opened as a member would open
//! it, so a restore that succeeds gives a data dir that starts.

pub mod bbolt;
pub mod bbolt_write;
pub mod writer;

use std::io;

use prost::Message;
use sha2::{Digest, Sha256};

use self::bbolt::{Bolt, BoltError, Bucket, Entry, Source};
use crate::auth::store::{role_record_key, state_record, user_record_key};
use crate::auth::AuthStore;
use crate::lease;
use crate::limits;
use crate::mvcc::{MvccError, MvccStore, Revision, META_COMPACT_REV, META_CURRENT_REV};
use crate::pb::authpb::{Role, User};
use crate::pb::leasepb::Lease;
use crate::pb::mvccpb::KeyValue;
use crate::storage::{Durability, Keyspace, SharedEngine, StorageError, WriteBatch};

/// etcd appends the SHA-256 of the database: the file is whole pages plus these bytes.
const HASH_BYTES: u64 = 32;
/// etcd's test for a trailer: the size is a multiple of 512 plus the hash.
const HASH_ALIGN: u64 = 512;
/// Bytes hashed per read while checking the trailer.
const HASH_READ_BYTES: usize = 64 * 1024;

/// Why an etcd snapshot cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum EtcdSnapshotError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Bolt(#[from] BoltError),
    /// etcdutl's words for a file without the trailer.
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error(
        "snapshot file integrity check failed: expected sha256 {expected}, got {actual} \
         (the file is damaged or truncated)"
    )]
    HashMismatch { expected: String, actual: String },
    #[error("not an etcd snapshot: {0}")]
    NotEtcd(String),
    #[error("bad record in etcd bucket `{bucket}`: {why}")]
    Record { bucket: &'static str, why: String },
    #[error("the restored data does not load: {0}")]
    Storage(#[from] StorageError),
    #[error("the restored data does not load: {0}")]
    Mvcc(#[from] MvccError),
}

fn bad(bucket: &'static str, why: impl Into<String>) -> EtcdSnapshotError {
    EtcdSnapshotError::Record {
        bucket,
        why: why.into(),
    }
}

/// What a restore brought over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Records of the `key` bucket (every retained revision of every key, tombstones included).
    pub records: usize,
    /// The store revision.
    pub revision: i64,
    /// The compaction point (-1: never compacted).
    pub compact_revision: i64,
    pub leases: usize,
    pub users: usize,
    pub roles: usize,
    pub auth_enabled: bool,
}

/// Whether a file starting with `head` is (by its first page) a bbolt file, so maybe an etcd
/// snapshot.
pub fn looks_like(head: &[u8]) -> bool {
    bbolt::looks_like_bolt(head)
}

/// Check the trailer of the `len` bytes of `src` and return the length of the database before it.
/// Without a trailer (a database copied from a data dir) the file is refused unless
/// `skip_hash_check`, as etcdutl does.
pub fn check_hash<S: Source + ?Sized>(
    src: &S,
    len: u64,
    skip_hash_check: bool,
) -> Result<u64, EtcdSnapshotError> {
    if len % HASH_ALIGN != HASH_BYTES {
        return if skip_hash_check {
            Ok(len)
        } else {
            Err(EtcdSnapshotError::MissingHash)
        };
    }
    let data_len = len - HASH_BYTES;
    if skip_hash_check {
        return Ok(data_len);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_READ_BYTES];
    let mut at = 0u64;
    while at < data_len {
        let n = (data_len - at).min(HASH_READ_BYTES as u64) as usize;
        src.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    let mut expected = [0u8; HASH_BYTES as usize];
    src.read_exact_at(&mut expected, data_len)?;
    let actual = hasher.finalize();
    if actual.as_slice() != expected {
        return Err(EtcdSnapshotError::HashMismatch {
            expected: hex(&expected),
            actual: hex(&actual),
        });
    }
    Ok(data_len)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// etcd's revision key: `main '_' sub`, 17 bytes, plus `t` for a tombstone.
fn revision_of(key: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match key.len() {
        17 => false,
        18 if key[17] == b't' => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::try_from(u64::from_be_bytes(key[..8].try_into().ok()?)).ok()?;
    let sub = i64::try_from(u64::from_be_bytes(key[9..17].try_into().ok()?)).ok()?;
    Some((Revision::new(main, sub), tombstone))
}

/// etcd's key for the record at `rev`: the inverse of [`revision_of`].
pub(crate) fn etcd_revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&(rev.main as u64).to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// Queues writes and hands them to the engine about a snapshot chunk at a time.
struct Writer<'e> {
    engine: &'e SharedEngine,
    batch: WriteBatch,
    bytes: usize,
}

impl Writer<'_> {
    fn put(&mut self, ks: Keyspace, key: Vec<u8>, value: Vec<u8>) -> Result<(), StorageError> {
        self.bytes += key.len() + value.len();
        self.batch.put(ks, key, value);
        if self.bytes >= limits::SNAPSHOT_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        let batch = std::mem::take(&mut self.batch);
        self.bytes = 0;
        self.engine.write(batch, Durability::Buffered)
    }
}

/// What [`each`] calls with a key and its value.
type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), EtcdSnapshotError> + 'a;

/// Every entry of a bucket that is no nested bucket (etcd's buckets hold none).
fn each<S: Source + ?Sized>(
    bolt: &Bolt<'_, S>,
    bucket: &Bucket,
    name: &'static str,
    f: &mut Visit<'_>,
) -> Result<(), EtcdSnapshotError> {
    bolt.walk(bucket, &mut |e: Entry<'_>| {
        if e.is_bucket {
            return Err(bad(name, "unexpected nested bucket"));
        }
        f(e.key, e.value)?;
        Ok(true)
    })
}

/// A compaction revision from the `meta` bucket (etcd writes `revision{main: rev}` encoded).
fn compaction_of(value: &[u8]) -> Result<i64, EtcdSnapshotError> {
    revision_of(value)
        .filter(|(_, tombstone)| !tombstone)
        .map(|(rev, _)| rev.main)
        .ok_or_else(|| bad("meta", "compaction revision is not a 17-byte revision"))
}

/// Restore the etcd snapshot in `src` (`len` bytes) into `engine`, which must be empty. On error
/// the engine may hold part of it: the caller throws it away.
pub fn restore<S: Source + ?Sized>(
    engine: &SharedEngine,
    src: &S,
    len: u64,
    skip_hash_check: bool,
) -> Result<Restored, EtcdSnapshotError> {
    let data_len = check_hash(src, len, skip_hash_check)?;
    let bolt = Bolt::open(src, data_len)?;
    let root = bolt.root();
    let key_bucket = bolt
        .bucket(&root, b"key")?
        .ok_or_else(|| EtcdSnapshotError::NotEtcd("the database has no `key` bucket".into()))?;
    let mut out = Restored {
        revision: crate::mvcc::FIRST_REVISION,
        compact_revision: -1,
        ..Restored::default()
    };
    let mut w = Writer {
        engine,
        batch: WriteBatch::new(),
        bytes: 0,
    };

    // Each revision holds one change: a put and a tombstone at one revision (bbolt sorts them next
    // to each other) would give a key two histories.
    let mut last = None;
    each(&bolt, &key_bucket, "key", &mut |k, v| {
        let (rev, tombstone) =
            revision_of(k).ok_or_else(|| bad("key", format!("bad revision key {k:?}")))?;
        if last.is_some_and(|l| rev <= l) {
            return Err(bad(
                "key",
                format!("revision {rev:?} repeated or out of order"),
            ));
        }
        last = Some(rev);
        let kv = KeyValue::decode(v).map_err(|e| bad("key", format!("at {rev:?}: {e}")))?;
        if kv.key.is_empty() {
            return Err(bad("key", format!("record at {rev:?} has no key")));
        }
        if !tombstone
            && (kv.mod_revision != rev.main
                || kv.create_revision < 1
                || kv.create_revision > kv.mod_revision
                || kv.version < 1)
        {
            return Err(bad("key", format!("inconsistent record at {rev:?}")));
        }
        out.revision = out.revision.max(rev.main);
        out.records += 1;
        w.put(Keyspace::Kv, rev.record_key(tombstone), v.to_vec())?;
        Ok(())
    })?;

    let mut scheduled = None;
    if let Some(meta) = bolt.bucket(&root, b"meta")? {
        each(&bolt, &meta, "meta", &mut |k, v| {
            match k {
                b"finishedCompactRev" => out.compact_revision = compaction_of(v)?,
                b"scheduledCompactRev" => scheduled = Some(compaction_of(v)?),
                _ => {} // consistent_index, term, confState: the old cluster's raft state
            }
            Ok(())
        })?;
    }
    // As etcd opens its backend: the revision never trails the compaction point.
    out.revision = out.revision.max(out.compact_revision);

    if let Some(leases) = bolt.bucket(&root, b"lease")? {
        each(&bolt, &leases, "lease", &mut |k, v| {
            let id = <[u8; 8]>::try_from(k)
                .map(i64::from_be_bytes)
                .map_err(|_| bad("lease", format!("bad lease key {k:?}")))?;
            let l = Lease::decode(v).map_err(|e| bad("lease", format!("lease {id:x}: {e}")))?;
            if l.id != id || id == 0 || l.ttl <= 0 || l.remaining_ttl < 0 {
                return Err(bad("lease", format!("inconsistent lease {id:x}")));
            }
            let remaining = (l.remaining_ttl > 0).then_some(l.remaining_ttl);
            w.put(
                Keyspace::Meta,
                lease::record_key(id),
                lease::encode_record(l.ttl, remaining),
            )?;
            out.leases += 1;
            Ok(())
        })?;
    }

    if let Some(auth) = bolt.bucket(&root, b"auth")? {
        let mut revision = 0u64;
        each(&bolt, &auth, "auth", &mut |k, v| {
            match k {
                b"authEnabled" => out.auth_enabled = v == [1],
                b"authRevision" => {
                    revision = <[u8; 8]>::try_from(v)
                        .map(u64::from_be_bytes)
                        .map_err(|_| bad("auth", "authRevision is not 8 bytes"))?;
                }
                _ => {}
            }
            Ok(())
        })?;
        let (key, value) = state_record(out.auth_enabled, revision);
        w.put(Keyspace::Meta, key, value)?;
    }
    if let Some(users) = bolt.bucket(&root, b"authUsers")? {
        each(&bolt, &users, "authUsers", &mut |k, v| {
            let user = User::decode(v).map_err(|e| bad("authUsers", e.to_string()))?;
            let name = std::str::from_utf8(k)
                .ok()
                .filter(|n| !n.is_empty() && n.as_bytes() == user.name)
                .ok_or_else(|| bad("authUsers", format!("bad user name {k:?}")))?;
            w.put(Keyspace::Meta, user_record_key(name), v.to_vec())?;
            out.users += 1;
            Ok(())
        })?;
    }
    if let Some(roles) = bolt.bucket(&root, b"authRoles")? {
        each(&bolt, &roles, "authRoles", &mut |k, v| {
            let role = Role::decode(v).map_err(|e| bad("authRoles", e.to_string()))?;
            let name = std::str::from_utf8(k)
                .ok()
                .filter(|n| !n.is_empty() && n.as_bytes() == role.name)
                .ok_or_else(|| bad("authRoles", format!("bad role name {k:?}")))?;
            w.put(Keyspace::Meta, role_record_key(name), v.to_vec())?;
            out.roles += 1;
            Ok(())
        })?;
    }

    w.put(
        Keyspace::Meta,
        META_CURRENT_REV.to_vec(),
        out.revision.to_be_bytes().to_vec(),
    )?;
    if out.compact_revision >= 0 {
        w.put(
            Keyspace::Meta,
            META_COMPACT_REV.to_vec(),
            out.compact_revision.to_be_bytes().to_vec(),
        )?;
    }
    w.flush()?;

    // Open what was written as a starting member would (rebuilding the key index and lease
    // attachments checks the records against each other), and finish a compaction etcd had
    // scheduled but not finished.
    let mut store = MvccStore::open(engine.clone())?;
    if let Some(rev) = scheduled.filter(|r| *r > out.compact_revision && *r <= out.revision) {
        let mut batch = WriteBatch::new();
        store.compact(rev, &mut batch)?;
        engine.write(batch, Durability::Buffered)?;
        out.compact_revision = rev;
    }
    AuthStore::load(engine.as_ref())?;
    engine.sync()?;
    Ok(out)
}

#[cfg(test)]
mod tests;
