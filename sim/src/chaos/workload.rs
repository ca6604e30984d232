//! The chaos run's clients, each on the simulated client machine: KV clients (put, linearizable
//! get, delete, compare-and-swap txn), a prefix-range reader, watchers that resume across
//! members, lease clients (grant, attach, keep alive, revoke or let expire) and a compactor. Every
//! answer (and every call whose outcome is unknown) goes into the [`Recorder`] for the checkers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use metastore::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use metastore::pb::etcdserverpb::kv_client::KvClient;
use metastore::pb::etcdserverpb::lease_client::LeaseClient;
use metastore::pb::etcdserverpb::request_op::Request as TxnOp;
use metastore::pb::etcdserverpb::response_op::Response as ResponseOp;
use metastore::pb::etcdserverpb::watch_client::WatchClient;
use metastore::pb::etcdserverpb::watch_request::RequestUnion;
use metastore::pb::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use metastore::pb::mvccpb::event::EventType;
use tonic::transport::Channel;

use crate::leases::Observation;
use crate::linearizability::{Event, Op};
use crate::revisions::Seen;
use crate::trace::Trace;
use crate::watches::{Change, Committed, Segment};

/// The KV clients' keys: `k0` .. `k{KEYS-1}`, all inside the watched range `k`..`l`.
pub const KEYS: u64 = 6;

/// How long a client waits for one answer before it counts the call as unknown.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a client waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything the clients saw; simulated microseconds since the run began.
#[derive(Default)]
pub struct Records {
    pub kv: Vec<Event>,
    pub revisions: Vec<Seen>,
    /// Events vouched for by acknowledged writes and range reads (the watch checker's reference).
    pub committed: Vec<Committed>,
    pub segments: Vec<Segment>,
    pub leases: Vec<Observation>,
    pub calls_ok: u64,
    pub calls_unknown: u64,
    /// Transactions that must have been refused whole but were answered as applied.
    pub wrongly_accepted: Vec<String>,
}

/// A shared, clock-stamped record of the run.
#[derive(Clone)]
pub struct Recorder {
    start: madsim::time::Instant,
    pub records: Arc<Mutex<Records>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            start: madsim::time::Instant::now(),
            records: Arc::default(),
        }
    }

    /// Simulated microseconds since the run began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Records) -> T) -> T {
        f(&mut self.records.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A call on `key` invoked at `invoke` that completed now with `op`'s answer; `change` is the
    /// event it committed, if it changed the key.
    pub fn completed(&self, key: &str, op: Op, invoke: u64, change: Option<(i64, Change)>) {
        let complete = self.now();
        self.with(|r| {
            r.kv.push(Event {
                key: key.to_string(),
                op,
                invoke,
                complete: Some(complete),
            });
            if let Some((revision, change)) = change {
                r.committed.push(Committed {
                    revision,
                    key: key.to_string(),
                    change,
                });
            }
        });
    }

    /// A call on `key` invoked at `invoke` whose outcome its client never learned.
    pub fn unknown(&self, key: &str, op: Op, invoke: u64) {
        self.with(|r| {
            r.kv.push(Event {
                key: key.to_string(),
                op,
                invoke,
                complete: None,
            });
            r.calls_unknown += 1;
        });
    }

    fn seen(&self, client: &str, what: &str, revision: i64) {
        self.with(|r| {
            r.revisions.push(Seen {
                client: client.to_string(),
                what: what.to_string(),
                revision,
            });
            r.calls_ok += 1;
        });
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// A random number from the simulation's seeded generator.
pub fn random(below: u64) -> u64 {
    madsim::rand::random::<u64>() % below.max(1)
}

/// A random member's URL.
fn pick(urls: &[String]) -> &str {
    &urls[random(urls.len() as u64) as usize]
}

async fn kv_at(url: &str) -> Option<KvClient<Channel>> {
    madsim::time::timeout(CONNECT_TIMEOUT, KvClient::connect(url.to_string()))
        .await
        .ok()?
        .ok()
}

async fn lease_at(url: &str) -> Option<LeaseClient<Channel>> {
    madsim::time::timeout(CONNECT_TIMEOUT, LeaseClient::connect(url.to_string()))
        .await
        .ok()?
        .ok()
}

/// `get` as the only operation of a read-only txn; its range's answer, with the txn's header.
async fn read_only_txn(c: &mut KvClient<Channel>, get: RangeRequest) -> Option<RangeResponse> {
    let txn = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(TxnOp::RequestRange(get)),
        }],
        failure: vec![],
    };
    let resp = madsim::time::timeout(CALL_TIMEOUT, c.txn(txn))
        .await
        .ok()?
        .ok()?
        .into_inner();
    let header = resp.header;
    match resp.responses.into_iter().next()?.response? {
        ResponseOp::ResponseRange(range) => Some(RangeResponse { header, ..range }),
        _ => None,
    }
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Put, get, delete and compare-and-swap on the shared keys through random members until `stop`.
pub async fn kv_client(
    id: usize,
    urls: Vec<String>,
    rec: Recorder,
    stop: Arc<AtomicBool>,
    trace: Trace,
) {
    let me = format!("kv{id}");
    let mut last_read: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let url = pick(&urls).to_string();
        let Some(mut c) = kv_at(&url).await else {
            madsim::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let key = format!("k{}", random(KEYS));
        n += 1;
        let value = format!("{me}-{n}");
        let invoke = rec.now();
        match random(12) {
            0..=3 => {
                let put = PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    ..Default::default()
                };
                match madsim::time::timeout(CALL_TIMEOUT, c.put(put)).await {
                    Ok(Ok(resp)) => {
                        let header = resp.into_inner().header.unwrap_or_default();
                        let rev = header.revision;
                        rec.seen(&me, "put", rev);
                        trace.record(format!(
                            "{me}: put {key}={value} at {rev} via {url} (term {})",
                            header.raft_term
                        ));
                        let op = Op::Write {
                            value: value.clone(),
                            ok: true,
                        };
                        rec.completed(&key, op, invoke, Some((rev, Change::Put(value))));
                    }
                    _ => rec.unknown(&key, Op::Write { value, ok: false }, invoke),
                }
            }
            4..=6 => {
                let get = RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                };
                // Every other get is a read-only txn, which members serve as a read too (no
                // randomness drawn: the seeds' schedules stay as they were).
                let got = if n % 2 == 0 {
                    read_only_txn(&mut c, get).await
                } else {
                    madsim::time::timeout(CALL_TIMEOUT, c.range(get))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(tonic::Response::into_inner)
                };
                if let Some(resp) = got {
                    let value = resp.kvs.first().map(|kv| utf8(&kv.value));
                    rec.seen(&me, "get", resp.header.map_or(0, |h| h.revision));
                    last_read.insert(key.clone(), value.clone());
                    let op = Op::Read {
                        result: Some(value),
                    };
                    rec.completed(&key, op, invoke, None);
                }
            }
            7 => {
                let del = DeleteRangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                };
                match madsim::time::timeout(CALL_TIMEOUT, c.delete_range(del)).await {
                    Ok(Ok(resp)) => {
                        let resp = resp.into_inner();
                        let rev = resp.header.map_or(0, |h| h.revision);
                        rec.seen(&me, "delete", rev);
                        trace.record(format!(
                            "{me}: delete {key} ({}) at {rev} via {url}",
                            resp.deleted
                        ));
                        let change = (resp.deleted > 0).then_some((rev, Change::Delete));
                        rec.completed(&key, Op::Delete { ok: true }, invoke, change);
                    }
                    _ => rec.unknown(&key, Op::Delete { ok: false }, invoke),
                }
            }
            10 | 11 => {
                // A txn that must be refused whole: its put (perhaps inside a nested txn) runs
                // before a range at a revision no member has. Nothing of it may ever be seen: its
                // value is recorded nowhere, so a read or event carrying it breaks the checks.
                let put = RequestOp {
                    request: Some(TxnOp::RequestPut(PutRequest {
                        key: key.clone().into_bytes(),
                        value: value.clone().into_bytes(),
                        ..Default::default()
                    })),
                };
                let future = RequestOp {
                    request: Some(TxnOp::RequestRange(RangeRequest {
                        key: key.clone().into_bytes(),
                        revision: i64::MAX / 2,
                        ..Default::default()
                    })),
                };
                let success = match random(3) {
                    0 => vec![put, future],
                    1 => vec![nested(vec![put]), future],
                    _ => vec![nested(vec![put, future])],
                };
                let txn = TxnRequest {
                    compare: vec![],
                    success,
                    failure: vec![],
                };
                match madsim::time::timeout(CALL_TIMEOUT, c.txn(txn)).await {
                    Ok(Ok(resp)) => rec.with(|r| {
                        r.wrongly_accepted
                            .push(format!("{me}: {key}={value} via {url}: {resp:?}"))
                    }),
                    Ok(Err(status)) => trace.record(format!(
                        "{me}: doomed txn on {key} refused via {url}: {:?}",
                        status.code()
                    )),
                    Err(_) => {}
                }
            }
            _ => {
                // Swap from the value this client last read (perhaps stale: then it must fail).
                let expect = last_read.get(&key).cloned().flatten();
                let compare = match &expect {
                    Some(v) => Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Value as i32,
                        key: key.clone().into_bytes(),
                        target_union: Some(TargetUnion::Value(v.clone().into_bytes())),
                        ..Default::default()
                    },
                    None => Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Create as i32,
                        key: key.clone().into_bytes(),
                        target_union: Some(TargetUnion::CreateRevision(0)),
                        ..Default::default()
                    },
                };
                let put = RequestOp {
                    request: Some(TxnOp::RequestPut(PutRequest {
                        key: key.clone().into_bytes(),
                        value: value.clone().into_bytes(),
                        ..Default::default()
                    })),
                };
                let txn = TxnRequest {
                    compare: vec![compare],
                    // Half of the swaps put through a nested txn (no compare: it always runs).
                    success: vec![if random(2) == 0 {
                        put
                    } else {
                        nested(vec![put])
                    }],
                    // A failed swap reads what is there, in the same txn: the checker then knows
                    // why it failed instead of searching for a write that could explain it.
                    failure: vec![RequestOp {
                        request: Some(TxnOp::RequestRange(RangeRequest {
                            key: key.clone().into_bytes(),
                            ..Default::default()
                        })),
                    }],
                };
                match madsim::time::timeout(CALL_TIMEOUT, c.txn(txn)).await {
                    Ok(Ok(resp)) => {
                        let resp = resp.into_inner();
                        let rev = resp.header.map_or(0, |h| h.revision);
                        rec.seen(&me, "txn", rev);
                        let found = (!resp.succeeded).then(|| {
                            resp.responses.first().and_then(|r| match &r.response {
                                Some(ResponseOp::ResponseRange(range)) => {
                                    range.kvs.first().map(|kv| utf8(&kv.value))
                                }
                                _ => None,
                            })
                        });
                        if let Some(seen) = &found {
                            last_read.insert(key.clone(), seen.clone());
                        }
                        trace.record(format!(
                            "{me}: swap {key} {expect:?} -> {value}: {} at {rev} via {url}",
                            resp.succeeded
                        ));
                        let change = resp.succeeded.then(|| (rev, Change::Put(value.clone())));
                        let op = Op::Cas {
                            expect,
                            value,
                            succeeded: Some(resp.succeeded),
                            found,
                        };
                        rec.completed(&key, op, invoke, change);
                    }
                    _ => {
                        let op = Op::Cas {
                            expect,
                            value,
                            succeeded: None,
                            found: None,
                        };
                        rec.unknown(&key, op, invoke);
                    }
                }
            }
        }
        madsim::time::sleep(Duration::from_millis(10 + random(40))).await;
    }
}

/// `ops` as one operation: a nested transaction without compares.
fn nested(ops: Vec<RequestOp>) -> RequestOp {
    RequestOp {
        request: Some(TxnOp::RequestTxn(TxnRequest {
            compare: vec![],
            success: ops,
            failure: vec![],
        })),
    }
}

/// Linearizable reads of the whole `k` prefix until `stop`: each answer must be a consistent
/// snapshot (sorted, unique keys, nothing newer than its header revision), is a read of every key
/// for the linearizability checker, and vouches for each key's last event.
pub async fn range_reader(urls: Vec<String>, rec: Recorder, stop: Arc<AtomicBool>, trace: Trace) {
    while !stop.load(Ordering::SeqCst) {
        madsim::time::sleep(Duration::from_millis(100 + random(200))).await;
        let url = pick(&urls).to_string();
        let Some(mut c) = kv_at(&url).await else {
            continue;
        };
        let invoke = rec.now();
        let req = RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        };
        let Ok(Ok(resp)) = madsim::time::timeout(CALL_TIMEOUT, c.range(req)).await else {
            continue;
        };
        let complete = rec.now();
        let resp = resp.into_inner();
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        assert!(
            resp.kvs.windows(2).all(|w| w[0].key < w[1].key),
            "a range answer is sorted by key, each key once"
        );
        let mut found = BTreeMap::new();
        for kv in &resp.kvs {
            assert!(
                0 < kv.create_revision
                    && kv.create_revision <= kv.mod_revision
                    && kv.mod_revision <= rev,
                "range at revision {rev}: {} has create {} mod {}",
                utf8(&kv.key),
                kv.create_revision,
                kv.mod_revision
            );
            found.insert(utf8(&kv.key), (utf8(&kv.value), kv.mod_revision));
        }
        rec.seen("ranger", "range", rev);
        trace.record(format!(
            "ranger: at {rev} via {url} (term {}): {}",
            resp.header.as_ref().map_or(0, |h| h.raft_term),
            found
                .iter()
                .map(|(k, (v, r))| format!("{k}={v}@{r}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        rec.with(|r| {
            for i in 0..KEYS {
                let key = format!("k{i}");
                let value = found.get(&key).map(|(v, _)| v.clone());
                r.kv.push(Event {
                    key,
                    op: Op::Read {
                        result: Some(value),
                    },
                    invoke,
                    complete: Some(complete),
                });
            }
            for (key, (value, mod_revision)) in found {
                r.committed.push(Committed {
                    revision: mod_revision,
                    key,
                    change: Change::Put(value),
                });
            }
        });
    }
}

/// What ended one watch stream.
enum StreamEnd {
    /// Broken or refused: resume on another member after the last revision delivered.
    Broken,
    /// The start revision was compacted: history from it is gone; start over from here.
    Compacted(i64),
    /// Told to stop, and the last progress notification came.
    Done,
}

/// Watch the `k` prefix from `start_revision` until `stop`, resuming on random members when a
/// stream breaks (from the revision after the last one delivered, as etcd's clients do). At
/// `stop` it asks for a progress notification so its last segment states how far it is complete.
pub async fn watcher(
    name: String,
    urls: Vec<String>,
    start_revision: i64,
    rec: Recorder,
    stop: Arc<AtomicBool>,
    trace: Trace,
) {
    let mut generation = 0;
    let mut from = start_revision;
    loop {
        let mut segment = Segment {
            watcher: format!("{name}.{generation}"),
            start_key: "k".into(),
            end_key: "l".into(),
            start_revision: from,
            events: Vec::new(),
            complete_through: from - 1,
        };
        let end = watch_stream(pick(&urls), &mut segment, &stop).await;
        let through = segment.complete_through;
        if !segment.events.is_empty() || matches!(end, StreamEnd::Done) {
            rec.with(|r| r.segments.push(segment));
        }
        match end {
            StreamEnd::Done => return,
            StreamEnd::Broken => {
                from = through + 1;
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
            StreamEnd::Compacted(at) => {
                // Start over after the compaction point: as in etcd, a compaction at `at` also
                // removes the tombstones of keys deleted at `at`, so a watch from `at` itself
                // replays that revision only in part.
                trace.record(format!(
                    "{name}: revision {from} compacted at {at}, resume after it"
                ));
                generation += 1;
                from = at + 1;
            }
        }
    }
}

async fn watch_stream(url: &str, segment: &mut Segment, stop: &AtomicBool) -> StreamEnd {
    let Ok(Ok(mut client)) =
        madsim::time::timeout(CONNECT_TIMEOUT, WatchClient::connect(url.to_string())).await
    else {
        return StreamEnd::Broken;
    };
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: segment.start_key.clone().into_bytes(),
            range_end: segment.end_key.clone().into_bytes(),
            start_revision: segment.start_revision,
            ..Default::default()
        })),
    };
    if tx.unbounded_send(create).is_err() {
        return StreamEnd::Broken;
    }
    let Ok(Ok(resp)) = madsim::time::timeout(CALL_TIMEOUT, client.watch(rx)).await else {
        return StreamEnd::Broken;
    };
    let mut stream = resp.into_inner();
    let mut asked_progress: Option<madsim::time::Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) && asked_progress.is_none() {
            let progress = WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
            };
            if tx.unbounded_send(progress).is_err() {
                return StreamEnd::Broken;
            }
            asked_progress = Some(madsim::time::Instant::now());
        }
        if asked_progress.is_some_and(|at| at.elapsed() > CALL_TIMEOUT) {
            // No progress notification from this member in time: try another.
            return StreamEnd::Broken;
        }
        let next = madsim::time::timeout(Duration::from_millis(500), stream.next()).await;
        let msg = match next {
            Err(_) => continue,
            Ok(Some(Ok(msg))) => msg,
            Ok(_) => return StreamEnd::Broken,
        };
        if msg.compact_revision > 0 {
            return StreamEnd::Compacted(msg.compact_revision);
        }
        if msg.canceled {
            return StreamEnd::Broken;
        }
        if msg.created {
            continue;
        }
        let header_rev = msg.header.as_ref().map_or(0, |h| h.revision);
        if msg.events.is_empty() {
            // A progress notification: everything up to the header revision was delivered.
            segment.complete_through = segment.complete_through.max(header_rev);
            if asked_progress.is_some() {
                return StreamEnd::Done;
            }
            continue;
        }
        for ev in msg.events {
            let Some(kv) = ev.kv else { continue };
            let change = if ev.r#type == EventType::Delete as i32 {
                Change::Delete
            } else {
                Change::Put(utf8(&kv.value))
            };
            segment.complete_through = segment.complete_through.max(kv.mod_revision);
            segment.events.push(Committed {
                revision: kv.mod_revision,
                key: utf8(&kv.key),
                change,
            });
        }
    }
}

/// Grant leases, attach a key to each, then revoke it, keep it alive a while and let it expire,
/// or let it expire at once; read the key meanwhile and after. Until `stop`.
pub async fn lease_client(id: usize, urls: Vec<String>, rec: Recorder, stop: Arc<AtomicBool>) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let ttl = 2 + random(3) as i64;
        if let Some(lease) = grant(&urls, ttl, &rec).await {
            let key = format!("lease/{id}/{n}");
            attach_and_use(&urls, lease, ttl, &key, &rec, &stop).await;
        }
        madsim::time::sleep(Duration::from_millis(100 + random(400))).await;
    }
}

/// Grant a lease of `ttl` seconds through a random member; its id if acknowledged.
pub async fn grant(urls: &[String], ttl: i64, rec: &Recorder) -> Option<i64> {
    let mut l = lease_at(pick(urls)).await?;
    let req = LeaseGrantRequest { ttl, id: 0 };
    let resp = madsim::time::timeout(CALL_TIMEOUT, l.lease_grant(req))
        .await
        .ok()?
        .ok()?
        .into_inner();
    rec.with(|r| {
        r.leases.push(Observation::Granted {
            lease: resp.id,
            at: rec.now(),
            ttl_secs: resp.ttl,
        })
    });
    Some(resp.id)
}

async fn attach_and_use(
    urls: &[String],
    lease: i64,
    ttl: i64,
    key: &str,
    rec: &Recorder,
    stop: &AtomicBool,
) {
    if let Some(mut c) = kv_at(pick(urls)).await {
        let put = PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"leased".to_vec(),
            lease,
            ..Default::default()
        };
        let _ = madsim::time::timeout(CALL_TIMEOUT, c.put(put)).await;
    }
    read_leased(urls, key, lease, rec).await;
    match random(3) {
        0 => {
            madsim::time::sleep(Duration::from_millis(random(1000))).await;
            revoke(urls, lease, rec).await;
        }
        1 => {
            for _ in 0..1 + random(4) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                madsim::time::sleep(Duration::from_millis(ttl as u64 * 1000 / 3)).await;
                keep_alive(urls, lease, rec).await;
                read_leased(urls, key, lease, rec).await;
            }
        }
        _ => {}
    }
    // Wait (bounded) until the lease is known gone, then the key must be too.
    let deadline = madsim::time::Instant::now() + Duration::from_secs(ttl as u64 + 15);
    while madsim::time::Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        madsim::time::sleep(Duration::from_millis(500)).await;
        if time_to_live(urls, lease, rec).await == Some(-1) {
            read_leased(urls, key, lease, rec).await;
            return;
        }
    }
}

/// A linearizable read of a leased key, for the lease checker.
pub async fn read_leased(urls: &[String], key: &str, lease: i64, rec: &Recorder) -> Option<bool> {
    let mut c = kv_at(pick(urls)).await?;
    let invoke = rec.now();
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let resp = madsim::time::timeout(CALL_TIMEOUT, c.range(req))
        .await
        .ok()?
        .ok()?
        .into_inner();
    let present = !resp.kvs.is_empty();
    if let Some(kv) = resp.kvs.first() {
        assert_eq!(kv.lease, lease, "{key} is attached to its lease");
    }
    rec.with(|r| {
        r.leases.push(Observation::Read {
            key: key.to_string(),
            lease,
            invoke,
            present,
        })
    });
    Some(present)
}

/// Revoke `lease`; an acknowledged revoke means it is gone.
pub async fn revoke(urls: &[String], lease: i64, rec: &Recorder) {
    let Some(mut l) = lease_at(pick(urls)).await else {
        return;
    };
    if let Ok(Ok(_)) = madsim::time::timeout(
        CALL_TIMEOUT,
        l.lease_revoke(LeaseRevokeRequest { id: lease }),
    )
    .await
    {
        rec.with(|r| {
            r.leases.push(Observation::Gone {
                lease,
                at: rec.now(),
            })
        });
    }
}

/// One keep-alive round trip; the TTL answered, if any (0: the lease is gone).
pub async fn keep_alive(urls: &[String], lease: i64, rec: &Recorder) -> Option<i64> {
    let mut l = lease_at(pick(urls)).await?;
    rec.with(|r| {
        r.leases.push(Observation::KeepAliveSent {
            lease,
            at: rec.now(),
        })
    });
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(LeaseKeepAliveRequest { id: lease })
        .ok()?;
    let resp = madsim::time::timeout(CALL_TIMEOUT, l.lease_keep_alive(rx))
        .await
        .ok()?
        .ok()?;
    let mut answers = resp.into_inner();
    let answer = madsim::time::timeout(CALL_TIMEOUT, answers.next())
        .await
        .ok()??
        .ok()?;
    if answer.ttl <= 0 {
        rec.with(|r| {
            r.leases.push(Observation::Gone {
                lease,
                at: rec.now(),
            })
        });
    }
    Some(answer.ttl)
}

/// The lease's remaining TTL as `TimeToLive` answers it (-1: the lease is gone).
pub async fn time_to_live(urls: &[String], lease: i64, rec: &Recorder) -> Option<i64> {
    let mut l = lease_at(pick(urls)).await?;
    let req = LeaseTimeToLiveRequest {
        id: lease,
        keys: false,
    };
    let resp = madsim::time::timeout(CALL_TIMEOUT, l.lease_time_to_live(req))
        .await
        .ok()?
        .ok()?
        .into_inner();
    if resp.ttl == -1 {
        rec.with(|r| {
            r.leases.push(Observation::Gone {
                lease,
                at: rec.now(),
            })
        });
    }
    Some(resp.ttl)
}

/// Compact now and then, keeping the newest `KEEP` revisions, until `stop`.
pub async fn compactor(urls: Vec<String>, trace: Trace, stop: Arc<AtomicBool>) {
    const KEEP: i64 = 30;
    let mut done = 0;
    while !stop.load(Ordering::SeqCst) {
        madsim::time::sleep(Duration::from_millis(2000 + random(2000))).await;
        let Some(mut c) = kv_at(pick(&urls)).await else {
            continue;
        };
        let probe = RangeRequest {
            key: b"k".to_vec(),
            count_only: true,
            ..Default::default()
        };
        let Ok(Ok(resp)) = madsim::time::timeout(CALL_TIMEOUT, c.range(probe)).await else {
            continue;
        };
        let head = resp.into_inner().header.map_or(0, |h| h.revision);
        let at = head - KEEP;
        if at <= done {
            continue;
        }
        // Half of them wait for the physical end, which the member's background compactor
        // reaches in batches while the faults go on.
        let req = CompactionRequest {
            revision: at,
            physical: random(2) == 0,
        };
        if let Ok(Ok(_)) = madsim::time::timeout(CALL_TIMEOUT, c.compact(req)).await {
            done = at;
            trace.record(format!("compacted at {at}"));
        }
    }
}
