//! Events from storage for watchers behind the head, read in budgets that never split a revision,
//! and the events of the last apply.

use super::*;

/// How much one [`read_events`] call may gather before it stops, at the next revision boundary
/// (so a revision's events are never split, and at least one revision is always read).
#[derive(Debug, Clone, Copy)]
pub struct EventBudget {
    pub events: usize,
    pub revisions: usize,
    /// Encoded bytes of the events' key-values.
    pub bytes: usize,
}

/// Events read back from storage by [`read_events`].
#[derive(Debug, Default)]
pub struct EventBatch {
    /// In revision order.
    pub events: Vec<Event>,
    /// The last revision read whole (`from - 1` if none was).
    pub covered: i64,
}

/// Drop the deletions at or below `compact_rev` from `batch`. A read from the compaction point
/// itself may still find the tombstones compaction removes there (the background deletion may
/// not have reached them yet); they are compacted history, whether or not they are gone yet.
/// Everything else at the compaction point is each key's value there, which compaction keeps.
pub fn drop_compacted_tombstones(batch: &mut EventBatch, compact_rev: i64) {
    batch.events.retain(|ev| {
        let compacted_delete = ev.r#type == EventType::Delete as i32
            && ev
                .kv
                .as_ref()
                .is_some_and(|kv| kv.mod_revision <= compact_rev);
        !compacted_delete
    });
}

/// Events of revisions `from..=to` read straight from `engine`, without the store (and so without
/// its lock): the watch catch-up reads here while apply goes on. It is the caller's job to know
/// that `to` is written and that nothing in `from..=to` was compacted before or during the read
/// (the records of a revision never change once written; compaction only removes them).
pub fn read_events(
    engine: &dyn crate::storage::Engine,
    from: i64,
    to: i64,
    budget: EventBudget,
) -> Result<EventBatch> {
    let from = from.max(1);
    let mut batch = EventBatch {
        events: Vec::new(),
        covered: from - 1,
    };
    if from > to {
        batch.covered = to.max(from - 1);
        return Ok(batch);
    }
    let start = Revision::new(from, 0).to_bytes();
    let end = Revision::new(to + 1, 0).to_bytes();
    let (mut revisions, mut bytes) = (0usize, 0usize);
    let mut last_rev = from - 1;
    let mut stopped = false;
    let mut failure = None;
    engine.scan(Keyspace::Kv, &start, Some(&end), &mut |k, v| {
        let decoded = Revision::from_record_key(k).zip(KeyValue::decode(v).ok());
        let Some(((rev, tombstone), mut kv)) = decoded else {
            failure = Some(corrupt(format!("undecodable record {k:?}")));
            return false;
        };
        if rev.main > last_rev {
            let full = batch.events.len() >= budget.events
                || revisions >= budget.revisions
                || bytes >= budget.bytes;
            if full && revisions > 0 {
                stopped = true;
                return false; // a new revision starts and the batch is full
            }
            revisions += 1;
            last_rev = rev.main;
        }
        bytes += v.len();
        let kind = if tombstone {
            kv.mod_revision = rev.main;
            EventType::Delete
        } else {
            EventType::Put
        };
        batch.events.push(Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        true
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    // Stopped early: the last revision read was read whole. Otherwise everything up to `to` was.
    batch.covered = if stopped { last_rev } else { to };
    Ok(batch)
}

impl MvccStore {
    /// The changes made since the last call, in revision order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Events of revisions `from..=current` read back from storage, stopping at a revision
    /// boundary once at least `max_events` are gathered. Returns the events and the last revision
    /// fully covered. `from` must not be below the compaction revision.
    pub fn events_since(&self, from: i64, max_events: usize) -> Result<(Vec<Event>, i64)> {
        if from < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let mut batch = read_events(
            self.engine.as_ref(),
            from,
            self.current_rev,
            EventBudget {
                events: max_events,
                revisions: usize::MAX,
                bytes: usize::MAX,
            },
        )?;
        drop_compacted_tombstones(&mut batch, self.compact_rev);
        Ok((batch.events, batch.covered))
    }
}
