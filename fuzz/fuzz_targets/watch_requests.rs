//! Watch requests from raw bytes against the real watch hub, with writes before and after the
//! watcher is created. The first frame is a `WatchRequest`; each later frame is a write
//! (tag 0 put, 1 delete-range, 2 compaction, over a small key space so they overlap the
//! watched range), a catch-up round (3) or a drain of the stream (4). The stream's buffer is
//! small, so watchers fall behind and catch up from storage.
//!
//! Properties: what the watcher receives is exactly the committed events in its range and
//! filters from its start revision, in revision order, with no gap and no duplicate; or, if its
//! start was compacted away, a compaction notice after a prefix of them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metastore::api::watch::watch_spec;
use metastore::mvcc::RangeEnd;
use metastore::pb::etcdserverpb::watch_request::RequestUnion;
use metastore::pb::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, WatchRequest,
};
use metastore::pb::metastore::{command::Op, Command};
use metastore::pb::mvccpb::event::EventType;
use metastore::pb::mvccpb::Event;
use metastore::watch::{HubMessage, StreamReceiver, WatchHub, WatchSpec, WatcherKey};
use metastore_fuzz::{Frames, Store};
use prost::Message;

/// Stream buffer: small, so the hub's fall-behind path runs.
const BUFFER: usize = 2;

fn key(b: u8) -> Vec<u8> {
    vec![b'a' + b % 6]
}

/// The oracle: does `spec` want `ev`? Written here, not taken from the hub.
fn wanted(spec: &WatchSpec, ev: &Event) -> bool {
    let Some(kv) = &ev.kv else { return false };
    let in_range = match &spec.end {
        RangeEnd::Single => kv.key == spec.key,
        RangeEnd::Unbounded => kv.key >= spec.key,
        RangeEnd::Before(end) => kv.key >= spec.key && &kv.key < end,
    };
    let is_put = ev.r#type == EventType::Put as i32;
    let filtered = if is_put { spec.no_put } else { spec.no_delete };
    in_range && !filtered
}

fn id(ev: &Event) -> (i32, Vec<u8>, i64) {
    let kv = ev.kv.clone().unwrap_or_default();
    (ev.r#type, kv.key, kv.mod_revision)
}

struct Received {
    events: Vec<Event>,
    compacted: Option<i64>,
}

fn drain(rx: &mut StreamReceiver, got: &mut Received) {
    while let Ok(msg) = rx.try_recv() {
        match msg {
            HubMessage::Events { events, .. } => {
                assert!(
                    got.compacted.is_none(),
                    "events after the compaction notice"
                );
                got.events.extend(events);
            }
            HubMessage::Compacted {
                compact_revision, ..
            } => got.compacted = Some(compact_revision),
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Apply `op`; the state machine hands each applied revision to synced watchers at once.
/// Returns the revision of a successful compaction.
fn write(store: &mut Store, hub: &WatchHub, op: Op) -> Option<i64> {
    let compaction = match &op {
        Op::Compaction(c) => Some(c.revision),
        _ => None,
    };
    let from = store.history.len();
    let applied = store.apply(Command {
        op: Some(op),
        ..Default::default()
    });
    hub.notify(&store.history[from..]);
    applied.ok().and(compaction)
}

fn op_of(tag: u8, bytes: &[u8], head: i64) -> Option<Op> {
    let b = |i: usize| bytes.get(i).copied().unwrap_or(0);
    match tag {
        0 => Some(Op::Put(PutRequest {
            key: key(b(0)),
            value: vec![b(1)],
            ..Default::default()
        })),
        1 => Some(Op::DeleteRange(DeleteRangeRequest {
            key: key(b(0)),
            range_end: if b(1) % 2 == 0 { Vec::new() } else { key(b(2)) },
            ..Default::default()
        })),
        2 => Some(Op::Compaction(CompactionRequest {
            revision: (b(0) as i64) % (head + 1),
            physical: false,
        })),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut frames = Frames::new(data);
    let Some((_, first)) = frames.next() else {
        return;
    };
    let Ok(req) = WatchRequest::decode(first) else {
        return;
    };
    let Some(RequestUnion::CreateRequest(create)) = req.request_union else {
        return;
    };
    let mut frames = frames.take(64);

    let mut store = Store::new();
    let hub = WatchHub::new();
    let mut compactions = Vec::new();
    // Writes before the watcher: its start revision may reach back into them.
    for (tag, bytes) in frames.by_ref().take(8) {
        let head = store.mvcc.current_revision();
        if let Some(op) = op_of(tag % 4, bytes, head) {
            compactions.extend(write(&mut store, &hub, op));
        }
    }
    let Ok(spec) = watch_spec(&create) else {
        return;
    };
    let head = store.mvcc.current_revision();
    let start = if create.start_revision <= 0 {
        head + 1
    } else {
        create.start_revision
    };
    let (tx, mut rx) = hub.stream_channel_with_capacity(BUFFER);
    let watcher = WatcherKey {
        stream: hub.new_stream(),
        watch_id: 1,
    };
    assert!(hub.add(watcher, spec.clone(), start, head, tx).is_ok());

    let mut got = Received {
        events: Vec::new(),
        compacted: None,
    };
    for (tag, bytes) in frames {
        let head = store.mvcc.current_revision();
        match tag % 5 {
            3 => {
                hub.catch_up(|| &store.mvcc);
            }
            4 => drain(&mut rx, &mut got),
            t => {
                if let Some(op) = op_of(t, bytes, head) {
                    compactions.extend(write(&mut store, &hub, op));
                }
            }
        }
    }
    // Quiesce: drain and catch up until the watcher is at the head or cancelled.
    for _ in 0..10_000 {
        drain(&mut rx, &mut got);
        let more = hub.catch_up(|| &store.mvcc);
        drain(&mut rx, &mut got);
        if !more && (hub.stream_synced(watcher.stream) || !hub.contains(watcher)) {
            break;
        }
    }
    drain(&mut rx, &mut got);

    // A delete at exactly a compaction revision is compacted away with its key (as in etcd): a
    // watcher that had not read it yet cannot get it. Such events are left out on both sides.
    let lost_to_compaction =
        |ev: &(i32, Vec<u8>, i64)| ev.0 == EventType::Delete as i32 && compactions.contains(&ev.2);
    let expected: Vec<_> = store
        .history
        .iter()
        .filter(|ev| ev.kv.as_ref().is_some_and(|kv| kv.mod_revision >= start))
        .filter(|ev| wanted(&spec, ev))
        .map(id)
        .filter(|ev| !lost_to_compaction(ev))
        .collect();
    let received: Vec<_> = got
        .events
        .iter()
        .map(id)
        .filter(|ev| !lost_to_compaction(ev))
        .collect();
    match got.compacted {
        None => assert_eq!(received, expected, "watcher from {start} on {spec:?}"),
        Some(compacted) => {
            // Cancelled only when the next revision it needed is below the compaction (etcd).
            let next = got
                .events
                .last()
                .and_then(|ev| ev.kv.as_ref())
                .map_or(start, |kv| kv.mod_revision + 1);
            assert!(
                next < compacted,
                "cancelled at {compacted}, next needed {next}"
            );
            assert!(
                expected.starts_with(&received),
                "before the compaction notice: {received:?} is not a prefix of {expected:?}"
            );
        }
    }
});
