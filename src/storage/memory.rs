//! The memory engine: one persistent B-tree (`imbl::OrdMap`) per keyspace.
//!
//! With [`MemoryEngine::with_crash_model`] it also plays a disk for the simulator: it remembers which
//! writes were synced, and [`MemoryEngine::crash`] throws away everything that was not, the way a
//! power cut would. The handle outlives a simulated node, so a restarted node finds its "disk".
//!
//! A [`EngineView`] shares the trees as they were: taking one costs a few reference counts, and a
//! write while a view is alive copies only the tree nodes on its path (keys and values are
//! `Bytes`, so copying a node copies no record). With a plain `BTreeMap` shared copy-on-write, the
//! first write after a view copied the whole keyspace: 150 ms for 120 MB of records, paid by a put
//! after every large range or hash.

use std::ops::Bound;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use parking_lot::{RwLock, RwLockReadGuard};

use super::{
    BatchOp, Durability, Engine, EngineView, Keyspace, Order, Result, StorageError, Visitor,
    WriteBatch,
};

type Map = imbl::OrdMap<Bytes, Bytes>;

#[derive(Clone, Default)]
struct Maps {
    spaces: [Map; Keyspace::ALL.len()],
    bytes: [u64; Keyspace::ALL.len()],
}

impl Maps {
    fn apply(&mut self, batch: &WriteBatch) {
        for op in batch.ops() {
            match op {
                BatchOp::Put { ks, key, value } => {
                    let (map, bytes) = (&mut self.spaces[ks.index()], &mut self.bytes[ks.index()]);
                    let (key, value) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
                    *bytes += (key.len() + value.len()) as u64;
                    if let Some(old) = map.insert(key.clone(), value) {
                        *bytes -= (key.len() + old.len()) as u64;
                    }
                }
                BatchOp::Delete { ks, key } => {
                    let (map, bytes) = (&mut self.spaces[ks.index()], &mut self.bytes[ks.index()]);
                    if let Some(old) = map.remove(key.as_slice()) {
                        *bytes -= (key.len() + old.len()) as u64;
                    }
                }
                BatchOp::DeleteRange { ks, start, end } => {
                    if start >= end {
                        continue;
                    }
                    let (map, bytes) = (&mut self.spaces[ks.index()], &mut self.bytes[ks.index()]);
                    let doomed: Vec<Bytes> = map
                        .range::<_, [u8]>((Bound::Included(&start[..]), Bound::Excluded(&end[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in doomed {
                        if let Some(old) = map.remove(&key[..]) {
                            *bytes -= (key.len() + old.len()) as u64;
                        }
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct CrashModel {
    durable: Maps,
    unsynced: Vec<WriteBatch>,
    /// Every fsync fails from now on (the disk is broken until [`MemoryEngine::repair_disk`]).
    syncs_fail: bool,
    /// How many fsyncs failed.
    failed_syncs: u64,
    /// Extra simulated time per fsync.
    sync_delay: std::time::Duration,
}

/// The error a broken simulated disk returns for every fsync.
const INJECTED_SYNC_FAILURE: &str = "simulated disk: fsync failed (injected fault)";

/// An in-memory [`Engine`].
#[derive(Default)]
pub struct MemoryEngine {
    visible: RwLock<Maps>,
    crash_model: Option<Mutex<CrashModel>>,
}

impl MemoryEngine {
    /// A plain memory engine: nothing survives the process.
    pub fn new() -> Self {
        Self::default()
    }

    /// A memory engine that tracks durability, for use as a simulated disk.
    pub fn with_crash_model() -> Self {
        Self {
            visible: RwLock::default(),
            crash_model: Some(Mutex::new(CrashModel::default())),
        }
    }

    /// Simulate power loss: every write not yet synced disappears. Returns how many write batches
    /// were lost (always 0 without a crash model).
    pub fn crash(&self) -> usize {
        let Some(model) = &self.crash_model else {
            return 0;
        };
        let mut model = model.lock().unwrap_or_else(|e| e.into_inner());
        let lost = model.unsynced.len();
        model.unsynced.clear();
        *self.visible.write() = model.durable.clone();
        lost
    }

    /// Break the simulated disk: every fsync from now on fails, and what it should have made
    /// durable is lost on the next crash (as Linux drops dirty pages after a failed fsync, so a
    /// retried fsync "succeeds" without them). No-op without a crash model.
    pub fn fail_syncs(&self) {
        if let Some(model) = &self.crash_model {
            model.lock().unwrap_or_else(|e| e.into_inner()).syncs_fail = true;
        }
    }

    /// Replace the broken disk (after a crash): fsyncs work again, at full speed.
    pub fn repair_disk(&self) {
        if let Some(model) = &self.crash_model {
            let mut model = model.lock().unwrap_or_else(|e| e.into_inner());
            model.syncs_fail = false;
            model.failed_syncs = 0;
            model.sync_delay = std::time::Duration::ZERO;
        }
    }

    /// How many fsyncs (syncs and synced writes) have failed since the disk broke.
    pub fn failed_syncs(&self) -> u64 {
        self.crash_model
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).failed_syncs)
            .unwrap_or(0)
    }

    /// Make every fsync take `delay` more simulated time (a slow disk); zero restores it.
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        if let Some(model) = &self.crash_model {
            model.lock().unwrap_or_else(|e| e.into_inner()).sync_delay = delay;
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Maps> {
        self.visible.read()
    }
}

/// A key range as `OrdMap::range` takes it.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> Option<KeyBounds<'a>> {
    match end {
        Some(end) if end <= start => None,
        Some(end) => Some((Bound::Included(start), Bound::Excluded(end))),
        None => Some((Bound::Included(start), Bound::Unbounded)),
    }
}

fn scan_map(map: &Map, start: &[u8], end: Option<&[u8]>, order: Order, visit: &mut Visitor<'_>) {
    let Some(range) = bounds(start, end) else {
        return;
    };
    let items = map.range::<_, [u8]>(range);
    let items: Box<dyn Iterator<Item = _>> = match order {
        Order::Ascending => Box::new(items),
        Order::Descending => Box::new(items.rev()),
    };
    for (k, v) in items {
        if !visit(k, v) {
            break;
        }
    }
}

/// A view: the keyspace maps as they were when it was taken.
struct MemoryView(Maps);

impl EngineView for MemoryView {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.spaces[ks.index()].get(key).map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        scan_map(
            &self.0.spaces[ks.index()],
            start,
            end,
            Order::Ascending,
            visit,
        );
        Ok(())
    }
}

impl Engine for MemoryEngine {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.read().spaces[ks.index()].get(key).map(|v| v.to_vec()))
    }

    fn scan_ordered(
        &self,
        ks: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        order: Order,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        let maps = self.read();
        scan_map(&maps.spaces[ks.index()], start, end, order, visit);
        // A scan may be one of many in a row (a hash or a list read in pieces): a writer that
        // waited for it gets the lock now, before the scanning thread can take it again. With a
        // plain unlock the woken writer lost that race nearly every time, and a put waited for a
        // whole `HashKV` of 120 MB (p50 156 ms, release build).
        RwLockReadGuard::unlock_fair(maps);
        Ok(())
    }

    fn view(&self) -> Result<Arc<dyn EngineView>> {
        Ok(Arc::new(MemoryView(self.read().clone())))
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        // Lock order: crash model, then visible state (the same order as `crash`).
        let mut model = self
            .crash_model
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(m) = model
            .as_mut()
            .filter(|m| m.syncs_fail && durability == Durability::Sync)
        {
            m.failed_syncs += 1;
            return Err(StorageError::Engine(INJECTED_SYNC_FAILURE.into()));
        }
        self.visible.write().apply(&batch);
        if let Some(model) = model.as_mut() {
            model.unsynced.push(batch);
            if durability == Durability::Sync {
                let CrashModel {
                    durable, unsynced, ..
                } = &mut **model;
                for b in unsynced.drain(..) {
                    durable.apply(&b);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if let Some(model) = &self.crash_model {
            let mut model = model.lock().unwrap_or_else(|e| e.into_inner());
            if model.syncs_fail {
                model.failed_syncs += 1;
                return Err(StorageError::Engine(INJECTED_SYNC_FAILURE.into()));
            }
            let CrashModel {
                durable, unsynced, ..
            } = &mut *model;
            for b in unsynced.drain(..) {
                durable.apply(&b);
            }
        }
        Ok(())
    }

    fn simulated_sync_delay(&self) -> std::time::Duration {
        self.crash_model
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).sync_delay)
            .unwrap_or_default()
    }

    fn keyspace_bytes(&self, ks: Keyspace) -> u64 {
        self.read().bytes[ks.index()]
    }

    fn defragment(&self) -> Result<()> {
        // Deleted records are freed as they go: nothing to reclaim.
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        super::super::conformance::run_all(&|| Box::new(MemoryEngine::new()));
    }

    #[test]
    fn crash_drops_only_unsynced_writes() {
        let e = MemoryEngine::with_crash_model();
        let mut b = WriteBatch::new();
        b.put(Keyspace::Kv, "a", "1");
        e.write(b, Durability::Sync).unwrap();
        let mut b = WriteBatch::new();
        b.put(Keyspace::Kv, "b", "2");
        e.write(b, Durability::Buffered).unwrap();
        assert_eq!(e.get(Keyspace::Kv, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(e.crash(), 1);
        assert_eq!(e.get(Keyspace::Kv, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(Keyspace::Kv, b"b").unwrap(), None);
        // A buffered write followed by a sync survives.
        let mut b = WriteBatch::new();
        b.put(Keyspace::Kv, "c", "3");
        e.write(b, Durability::Buffered).unwrap();
        e.sync().unwrap();
        e.crash();
        assert_eq!(e.get(Keyspace::Kv, b"c").unwrap(), Some(b"3".to_vec()));
    }

    #[test]
    fn a_failed_fsync_is_never_retried_into_success() {
        let e = MemoryEngine::with_crash_model();
        let mut b = WriteBatch::new();
        b.put(Keyspace::Kv, "a", "1");
        e.write(b, Durability::Buffered).unwrap();
        e.fail_syncs();
        assert!(e.sync().is_err());
        assert!(e.sync().is_err(), "a broken disk stays broken");
        let mut b = WriteBatch::new();
        b.put(Keyspace::Kv, "b", "2");
        assert!(e.write(b, Durability::Sync).is_err());
        assert_eq!(
            e.get(Keyspace::Kv, b"b").unwrap(),
            None,
            "a failed write is not applied"
        );
        // What the failed fsyncs should have made durable is gone after power loss.
        e.crash();
        e.repair_disk();
        assert_eq!(e.get(Keyspace::Kv, b"a").unwrap(), None);
        e.sync().unwrap();
    }
}
