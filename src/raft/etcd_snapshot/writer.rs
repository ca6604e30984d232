//! MetaStore's state as etcd's snapshot file: what `Maintenance.Snapshot` streams, so `etcdctl
//! snapshot save` against MetaStore writes a file that etcd's own tools read (`etcdctl snapshot
//! status`, `etcdutl snapshot restore`) and that `metastore snapshot restore` reads back
//! ([`super::restore`], the mirror of this module).
//!
//! The file is a bbolt database ([`super::bbolt_write`]) with etcd's buckets, followed by the
//! SHA-256 of it, as etcd sends it. It is made from a frozen [`EngineView`] in two passes, so
//! memory stays at a few pages whatever the store's size: the first pass lays every page out
//! without keeping it (the meta pages that open the file name the root page and the page count,
//! which only the end tells), the second writes the same pages, about a chunk at a time as the
//! stream is read.
//!
//! etcd's buckets and where their records come from (names sorted bytewise, as bbolt keeps them):
//! * `alarm`: empty. Alarms name the old cluster's members; the reader leaves them out too.
//! * `auth`: `authEnabled` (one byte, 0 or 1) and `authRevision` (8 bytes BE) from `auth/state`.
//! * `authRoles`, `authUsers`: name → `authpb.Role` / `authpb.User` (bcrypt hashes, as etcd's).
//! * `cluster`: `clusterVersion` → [`crate::cluster::SNAPSHOT_FILE_VERSION`] (etcd 3.5's schema,
//!   which etcd 3.5 and later restore), not the cluster's own version or downgrade setting.
//! * `key`: every record of the `Kv` keyspace, the value as stored (`mvccpb.KeyValue`), the key in
//!   etcd's revision encoding `main(8 BE) '_' sub(8 BE) ['t']`.
//! * `lease`: `id(8 BE)` → `leasepb.Lease{ID, TTL, RemainingTTL}`.
//! * `members`, `members_removed`: empty; `etcdutl snapshot restore` empties them anyway and
//!   writes the new cluster's members.
//! * `meta`: `finishedCompactRev` and `scheduledCompactRev` (17-byte revision keys) when the store
//!   was compacted; a compaction still running is scheduled and not finished, and etcd finishes
//!   it when it opens the file, as it would its own. No `consistent_index`, `term` or
//!   `confState`: they are MetaStore's raft positions, meaningless to an etcd cluster, and a
//!   consistent index above the new cluster's log would make etcd skip entries; etcdutl writes
//!   the new cluster's.

use std::io;
use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};

use super::bbolt_write::{meta_pages, BucketRoot, Pages, TreeWriter, NESTED_BUCKET, PLAIN};
use super::etcd_revision_key;
use crate::auth::store::{decode_state_record, ROLE_PREFIX, STATE_KEY, USER_PREFIX};
use crate::lease::{self, LEASE_RECORD_PREFIX};
use crate::limits;
use crate::mvcc::{Revision, META_COMPACT_REV, META_SCHEDULED_COMPACT_REV};
use crate::pb::leasepb::Lease;
use crate::storage::{EngineView, Keyspace};

/// The bytes etcd appends to the database: its SHA-256.
const HASH_BYTES: u64 = 32;

/// One record of a bucket.
type Record = (Vec<u8>, Vec<u8>);

/// Where a bucket's records come from.
#[derive(Clone, Copy)]
enum Records {
    /// The bucket is empty.
    None,
    /// A few records made from single values of the view.
    Made(fn(&dyn EngineView) -> io::Result<Vec<Record>>),
    /// One record per record of `keyspace` under `prefix`, converted by the function (which gets
    /// the key without the prefix).
    Scan(
        Keyspace,
        &'static [u8],
        fn(&[u8], &[u8]) -> io::Result<Record>,
    ),
}

/// etcd's buckets in bbolt's order (bytewise by name).
const BUCKETS: [(&[u8], Records); 10] = [
    (b"alarm", Records::None),
    (b"auth", Records::Made(auth_records)),
    (
        b"authRoles",
        Records::Scan(Keyspace::Meta, ROLE_PREFIX, named),
    ),
    (
        b"authUsers",
        Records::Scan(Keyspace::Meta, USER_PREFIX, named),
    ),
    (b"cluster", Records::Made(cluster_records)),
    (b"key", Records::Scan(Keyspace::Kv, b"", revision_record)),
    (
        b"lease",
        Records::Scan(Keyspace::Meta, LEASE_RECORD_PREFIX, lease_record),
    ),
    (b"members", Records::None),
    (b"members_removed", Records::None),
    (b"meta", Records::Made(meta_records)),
];

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn auth_records(view: &dyn EngineView) -> io::Result<Vec<Record>> {
    let (enabled, revision) = match view.get(Keyspace::Meta, STATE_KEY)? {
        Some(state) => decode_state_record(&state)
            .ok_or_else(|| invalid("auth state of the wrong size".into()))?,
        None => (false, 0),
    };
    Ok(vec![
        (b"authEnabled".to_vec(), vec![u8::from(enabled)]),
        (b"authRevision".to_vec(), revision.to_be_bytes().to_vec()),
    ])
}

fn cluster_records(_: &dyn EngineView) -> io::Result<Vec<Record>> {
    Ok(vec![(
        b"clusterVersion".to_vec(),
        crate::cluster::SNAPSHOT_FILE_VERSION.as_bytes().to_vec(),
    )])
}

fn meta_records(view: &dyn EngineView) -> io::Result<Vec<Record>> {
    let read = |key: &[u8]| -> io::Result<Option<i64>> {
        let Some(v) = view.get(Keyspace::Meta, key)? else {
            return Ok(None);
        };
        <[u8; 8]>::try_from(v.as_slice())
            .map(i64::from_be_bytes)
            .ok()
            .filter(|r| *r >= 0)
            .map(Some)
            .ok_or_else(|| invalid(format!("bad compaction revision {v:?}")))
    };
    let finished = read(META_COMPACT_REV)?;
    // etcd records every compaction as scheduled before it runs, so its scheduled revision is
    // never below the finished one; ours may be absent (a store restored from a file).
    let scheduled = read(META_SCHEDULED_COMPACT_REV)?.max(finished);
    let revision = |rev: i64| etcd_revision_key(Revision::new(rev, 0), false);
    let mut out = Vec::new();
    if let Some(rev) = finished {
        out.push((b"finishedCompactRev".to_vec(), revision(rev)));
    }
    if let Some(rev) = scheduled {
        out.push((b"scheduledCompactRev".to_vec(), revision(rev)));
    }
    Ok(out)
}

/// A user or role: the name is the key, the protobuf the value.
fn named(name: &[u8], value: &[u8]) -> io::Result<Record> {
    Ok((name.to_vec(), value.to_vec()))
}

fn revision_record(key: &[u8], value: &[u8]) -> io::Result<Record> {
    let (rev, tombstone) = Revision::from_record_key(key)
        .ok_or_else(|| invalid(format!("bad revision record key {key:?}")))?;
    Ok((etcd_revision_key(rev, tombstone), value.to_vec()))
}

fn lease_record(id: &[u8], value: &[u8]) -> io::Result<Record> {
    let id = <[u8; 8]>::try_from(id)
        .map(i64::from_be_bytes)
        .map_err(|_| invalid(format!("bad lease record key {id:?}")))?;
    let (ttl, remaining) = lease::decode_record(value)
        .ok_or_else(|| invalid(format!("bad lease record {value:?}")))?;
    let lease = Lease {
        id,
        ttl,
        remaining_ttl: remaining.unwrap_or(0),
    };
    Ok((id.to_be_bytes().to_vec(), lease.encode_to_vec()))
}

/// The first key after every key that starts with `prefix` (`None`: to the end).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Turns the buckets of a view into pages, resumable between pieces.
struct Layout {
    view: Arc<dyn EngineView>,
    pages: Pages,
    /// The bucket being written (index into [`BUCKETS`]) and its tree.
    bucket: usize,
    tree: TreeWriter,
    /// Where the scan of the current bucket goes on (`None`: from its start).
    resume: Option<Vec<u8>>,
    /// The root bucket: one entry per finished bucket.
    root: TreeWriter,
    /// The root bucket's page, once everything is written.
    root_page: Option<u64>,
}

impl Layout {
    fn new(view: Arc<dyn EngineView>, pages: Pages) -> Self {
        Self {
            view,
            pages,
            bucket: 0,
            tree: TreeWriter::new(),
            resume: None,
            root: TreeWriter::of_buckets(),
            root_page: None,
        }
    }

    /// Write pages until at least `budget` bytes are waiting in `pages` or everything is
    /// written; returns whether everything is.
    fn run(&mut self, budget: usize) -> io::Result<bool> {
        while let Some((name, records)) = BUCKETS.get(self.bucket).copied() {
            match records {
                Records::None => {}
                Records::Made(make) => {
                    for (k, v) in make(self.view.as_ref())? {
                        self.tree.add(&mut self.pages, PLAIN, &k, &v)?;
                    }
                }
                Records::Scan(ks, prefix, convert) => {
                    if !self.scan(ks, prefix, convert, budget)? {
                        return Ok(false);
                    }
                }
            }
            let tree = std::mem::take(&mut self.tree);
            let value = tree.finish(&mut self.pages).entry_value();
            self.root
                .add(&mut self.pages, NESTED_BUCKET, name, &value)?;
            self.bucket += 1;
        }
        if self.root_page.is_none() {
            let root = std::mem::replace(&mut self.root, TreeWriter::of_buckets());
            match root.finish(&mut self.pages) {
                BucketRoot::Page(id) => self.root_page = Some(id),
                BucketRoot::Inline(_) => unreachable!("the root bucket is never inline"),
            }
        }
        Ok(true)
    }

    /// Scan the current bucket's records from where the last scan stopped; returns whether the
    /// bucket is done (otherwise the budget was reached).
    fn scan(
        &mut self,
        ks: Keyspace,
        prefix: &[u8],
        convert: fn(&[u8], &[u8]) -> io::Result<Record>,
        budget: usize,
    ) -> io::Result<bool> {
        let start = self.resume.take().unwrap_or_else(|| prefix.to_vec());
        let end = prefix_end(prefix);
        let Self {
            view, pages, tree, ..
        } = self;
        let mut stopped_at = None;
        let mut failure = None;
        // Read once to be sent: around the block cache.
        view.scan_uncached(ks, &start, end.as_deref(), &mut |k, v| {
            if pages.pending_bytes() >= budget {
                stopped_at = Some(k.to_vec());
                return false;
            }
            let added = convert(&k[prefix.len()..], v)
                .and_then(|(key, value)| tree.add(pages, PLAIN, &key, &value));
            match added {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        self.resume = stopped_at;
        Ok(self.resume.is_none())
    }
}

/// What the first pass found: where the root bucket is and how many pages there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    root: u64,
    pages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Pages,
    Trailer,
    Done,
}

/// Produces etcd's snapshot file of a frozen view piece by piece, each about
/// [`limits::SNAPSHOT_CHUNK_BYTES`] (a piece ends after a whole page, so a value larger than a
/// chunk makes a piece as large as its pages).
pub struct SnapshotWriter {
    plan: Plan,
    layout: Layout,
    hasher: Sha256,
    stage: Stage,
}

impl SnapshotWriter {
    /// Lay the file of `view` out (one pass over it, keeping nothing but the open pages) and get
    /// ready to write it.
    pub fn new(view: Arc<dyn EngineView>) -> io::Result<Self> {
        let page_size = limits::ETCD_SNAPSHOT_PAGE_BYTES;
        let mut counting = Layout::new(view.clone(), Pages::counting(page_size));
        counting.run(usize::MAX)?;
        let plan = Plan {
            root: counting.root_page.expect("a finished layout has a root"),
            pages: counting.pages.next_id(),
        };
        let mut layout = Layout::new(view, Pages::writing(page_size));
        layout
            .pages
            .put_meta(&meta_pages(page_size, plan.root, plan.pages));
        Ok(Self {
            plan,
            layout,
            hasher: Sha256::new(),
            stage: Stage::Pages,
        })
    }

    /// The size of the whole file in bytes: its pages and the hash.
    pub fn total_bytes(&self) -> u64 {
        self.plan.pages * limits::ETCD_SNAPSHOT_PAGE_BYTES as u64 + HASH_BYTES
    }

    /// The next piece of the file; `None` after the last.
    pub fn next_piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.stage {
            Stage::Done => Ok(None),
            Stage::Trailer => {
                self.stage = Stage::Done;
                let hash = std::mem::take(&mut self.hasher).finalize();
                Ok(Some(hash.to_vec()))
            }
            Stage::Pages => {
                if self.layout.run(limits::SNAPSHOT_CHUNK_BYTES)? {
                    let written = Plan {
                        root: self.layout.root_page.unwrap_or(0),
                        pages: self.layout.pages.next_id(),
                    };
                    if written != self.plan {
                        // A frozen view cannot change; if it did, the meta pages already sent
                        // describe another file, and etcd would refuse it: say so now.
                        return Err(invalid(format!(
                            "the snapshot's layout changed while it was written: planned \
                             {:?}, wrote {written:?}",
                            self.plan
                        )));
                    }
                    self.stage = Stage::Trailer;
                }
                let piece = self.layout.pages.take();
                self.hasher.update(&piece);
                Ok(Some(piece))
            }
        }
    }
}
