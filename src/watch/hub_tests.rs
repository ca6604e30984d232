//! Unit tests of the hub: fan-out, falling behind and catching up, budgets, eviction.

use std::sync::Arc;

use super::*;
use crate::mvcc::WriteTxn;
use crate::storage::{Durability, MemoryEngine};

fn commit(s: &mut MvccStore, hub: &WatchHub, f: impl FnOnce(&mut WriteTxn<'_>)) {
    let mut txn = s.write_txn();
    f(&mut txn);
    let (batch, _) = txn.finish();
    s.engine().write(batch, Durability::Sync).unwrap();
    s.mark_flushed();
    hub.notify(&s.take_events());
}

fn spec(key: &str, end: RangeEnd) -> WatchSpec {
    WatchSpec::all_changes(key.into(), end)
}

fn revs(msg: &HubMessage) -> Vec<i64> {
    match msg {
        HubMessage::Events { events, .. } => events.iter().map(revision_of).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn synced_watchers_get_matching_events_and_slow_ones_catch_up() {
    let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
    let hub = WatchHub::new();
    let (fast_tx, mut fast) = hub.stream_channel_with_capacity(16);
    let (slow_tx, mut slow) = hub.stream_channel_with_capacity(1);
    let k = |id| WatcherKey {
        stream: 1,
        watch_id: id,
    };
    assert_eq!(
        hub.add(k(1), spec("a", RangeEnd::Unbounded), 2, 1, fast_tx.clone()),
        Ok(())
    );
    assert_eq!(
        hub.add(k(1), spec("a", RangeEnd::Single), 2, 1, fast_tx),
        Err(AddError::IdTaken),
        "duplicate id"
    );
    assert_eq!(
        hub.add(k(2), spec("b", RangeEnd::Single), 2, 1, slow_tx),
        Ok(())
    );
    for i in 0..3u8 {
        commit(&mut s, &hub, |t| {
            t.put(b"a", vec![i], 0).unwrap();
            t.put(b"b", vec![i], 0).unwrap();
        });
    }
    for want in [2, 3, 4] {
        assert_eq!(
            revs(&fast.try_recv().unwrap()),
            vec![want, want],
            "both keys of one revision together"
        );
    }
    // The slow watcher's channel held one message; it fell behind instead of blocking.
    assert_eq!(revs(&slow.try_recv().unwrap()), vec![2]);
    assert!(slow.try_recv().is_err());
    assert!(!hub.catch_up(|| &s), "one round reaches the head");
    assert_eq!(
        revs(&slow.try_recv().unwrap()),
        vec![3, 4],
        "caught up from storage, in order, no gap"
    );
    commit(&mut s, &hub, |t| {
        t.put(b"b", vec![9], 0).unwrap();
    });
    assert_eq!(
        revs(&slow.try_recv().unwrap()),
        vec![5],
        "synced again: live events, no duplicate"
    );
    assert_eq!(hub.watcher_count(), 2);
    assert_eq!(hub.remove_stream(1), 2);
    assert_eq!(hub.watcher_count(), 0);
}

#[test]
fn after_a_store_is_replaced_watchers_catch_up_from_it() {
    let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
    let hub = WatchHub::new();
    let (tx, mut rx) = hub.stream_channel_with_capacity(16);
    let key = WatcherKey {
        stream: 3,
        watch_id: 0,
    };
    assert!(hub.add(key, spec("k", RangeEnd::Single), 2, 1, tx).is_ok());
    for i in 0..3u8 {
        commit(&mut s, &hub, |t| {
            t.put(b"k", vec![i], 0).unwrap();
        });
    }
    for want in [2, 3, 4] {
        assert_eq!(revs(&rx.try_recv().unwrap()), vec![want]);
    }
    // Another store that went further (as an installed snapshot does): its revisions 5..=7
    // never passed through this hub.
    let mut installed = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
    let elsewhere = WatchHub::new();
    for i in 0..6u8 {
        commit(&mut installed, &elsewhere, |t| {
            t.put(b"k", vec![i], 0).unwrap();
        });
    }
    hub.all_behind();
    assert!(!hub.catch_up(|| &installed));
    assert_eq!(
        revs(&rx.try_recv().unwrap()),
        vec![5, 6, 7],
        "the skipped revisions, in order, none twice"
    );
}

#[test]
fn a_tight_budget_cuts_catch_up_yet_every_revision_arrives_once_in_order() {
    const BUDGET: usize = 256 * 1024;
    let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
    let hub = WatchHub::with_limits(BUDGET, 100);
    // 40 revisions of 10 KiB, one of 1 MiB (more than the whole budget), 10 more of 10 KiB.
    for i in 0..51usize {
        let bytes = if i == 40 { 1024 * 1024 } else { 10 * 1024 };
        commit(&mut s, &hub, |t| {
            t.put(b"k", vec![b'x'; bytes], 0).unwrap();
        });
    }
    let head = s.current_revision();
    // A stream that never reads takes what it may of the budget.
    let (hog_tx, hog) = hub.stream_channel();
    let key = |stream| WatcherKey {
        stream,
        watch_id: 0,
    };
    hub.add(key(1), spec("k", RangeEnd::Single), 1, head, hog_tx)
        .unwrap();
    let (tx, mut rx) = hub.stream_channel();
    hub.add(key(2), spec("k", RangeEnd::Single), 1, head, tx)
        .unwrap();
    let mut got = Vec::new();
    let mut round = |got: &mut Vec<i64>| {
        hub.catch_up(|| &s);
        assert!(
            hub.buffered_bytes()
                <= BUDGET + 2 * 1024 * 1024 + 2 * limits::WATCH_STREAM_SMALL_MESSAGE_BYTES,
            "{} bytes buffered",
            hub.buffered_bytes()
        );
        while let Ok(msg) = rx.try_recv() {
            got.extend(revs(&msg));
        }
    };
    for _ in 0..100 {
        round(&mut got);
    }
    // The hog took more than the budget in one message (a stream's first may); the reader
    // got the small revisions in batches cut to what an idle stream may still take, and
    // waits for room for the 1 MiB one.
    let big = 42;
    assert_eq!(got, (2..big).collect::<Vec<i64>>(), "in order, none twice");
    // The hog goes: its bytes come back, and the rest arrives.
    assert_eq!(hub.remove_stream(1), 1);
    drop(hog);
    for _ in 0..100 {
        round(&mut got);
    }
    assert_eq!(
        got,
        (2..=head).collect::<Vec<i64>>(),
        "every revision once, in order"
    );
}

#[test]
fn catch_up_messages_are_cut_at_revision_boundaries() {
    let ev = |rev: i64, bytes: usize| Event {
        kv: Some(crate::pb::mvccpb::KeyValue {
            key: b"k".to_vec(),
            value: vec![b'x'; bytes],
            mod_revision: rev,
            ..Default::default()
        }),
        ..Default::default()
    };
    let events = [ev(3, 100), ev(3, 100), ev(4, 100), ev(6, 1000)];
    let refs: Vec<&Event> = events.iter().collect();
    let all: usize =
        HubMessage::FIXED_BYTES + events.iter().map(|e| e.encoded_len()).sum::<usize>();
    assert_eq!(fit_revisions(&refs, all), 4, "everything fits");
    assert_eq!(fit_revisions(&refs, all - 1), 3, "revision 6 waits");
    let two = first_revision_bytes(&refs);
    assert_eq!(fit_revisions(&refs, two), 2, "revision 3 goes whole");
    assert_eq!(fit_revisions(&refs, two - 1), 0, "never half a revision");
    assert_eq!(fit_revisions(&[], 0), 0);
}

#[test]
fn compacted_start_is_cancelled_and_filters_apply() {
    let mut s = MvccStore::open(Arc::new(MemoryEngine::new())).unwrap();
    let hub = WatchHub::new();
    for i in 0..4u8 {
        commit(&mut s, &hub, |t| {
            t.put(b"k", vec![i], 0).unwrap();
        });
    }
    commit(&mut s, &hub, |t| {
        drop(t.delete_range(b"k", &RangeEnd::Single).unwrap())
    });
    let mut batch = crate::storage::WriteBatch::new();
    s.compact(4, &mut batch).unwrap();
    s.engine().write(batch, Durability::Sync).unwrap();
    let (tx, mut rx) = hub.stream_channel_with_capacity(8);
    assert!(hub
        .add(
            WatcherKey {
                stream: 7,
                watch_id: 0
            },
            spec("k", RangeEnd::Single),
            2,
            6,
            tx.clone()
        )
        .is_ok());
    let no_put = WatchSpec {
        no_put: true,
        ..spec("k", RangeEnd::Single)
    };
    assert!(hub
        .add(
            WatcherKey {
                stream: 7,
                watch_id: 1
            },
            no_put,
            4,
            6,
            tx
        )
        .is_ok());
    hub.catch_up(|| &s);
    let mut got = [rx.try_recv().unwrap(), rx.try_recv().unwrap()];
    got.sort_by_key(|m| match m {
        HubMessage::Events { watch_id, .. } | HubMessage::Compacted { watch_id, .. } => *watch_id,
        _ => -1,
    });
    assert_eq!(
        got[0],
        HubMessage::Compacted {
            watch_id: 0,
            compact_revision: 4,
            revision: 6
        }
    );
    assert_eq!(revs(&got[1]), vec![6], "NOPUT leaves only the delete");
    assert_eq!(hub.watcher_count(), 1, "the compacted watcher is gone");
}
