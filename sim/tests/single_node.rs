//! A single member inside madsim: put/get/txn through the real gRPC stubs, crash (losing unsynced
//! writes) and restart, and check that every acknowledged write survived; the same seed twice gives
//! the same trace.
#![cfg(madsim)]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use madsim::runtime::{Handle, Runtime};
use metastore::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use metastore::pb::etcdserverpb::kv_client::KvClient;
use metastore::pb::etcdserverpb::lease_client::LeaseClient;
use metastore::pb::etcdserverpb::watch_client::WatchClient;
use metastore::pb::etcdserverpb::watch_request::RequestUnion;
use metastore::pb::etcdserverpb::{
    request_op, Compare, LeaseGrantRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use metastore_sim::cluster::{connect, SimMember};
use metastore_sim::trace::Trace;

/// Seeds each run covers; override with `METASTORE_SIM_SEEDS=a,b,c`.
fn seeds() -> Vec<u64> {
    metastore_sim::trace::seeds(1..=200)
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

/// The simulated machine the test's clients run on.
fn client_node(handle: &Handle) -> madsim::runtime::NodeHandle {
    handle
        .create_node()
        .name("client")
        .ip("10.0.0.100".parse().unwrap())
        .build()
}

/// Writes, reads and a txn; then a power cut and a restart; then every acknowledged write is checked.
async fn scenario(trace: Trace) -> BTreeMap<String, (String, i64)> {
    let handle = Handle::current();
    let member = SimMember::start(&handle, "m1", "10.0.0.1");
    let client_node = client_node(&handle);
    let url = member.url();
    let t = trace.clone();
    let phase1 = client_node.spawn(async move {
        let mut c = connect(&url).await;
        let mut acked = BTreeMap::new();
        for i in 0..40 {
            let (k, v) = (format!("k{}", i % 10), format!("v{i}"));
            let rev = c
                .put(put(&k, &v))
                .await
                .expect("put")
                .into_inner()
                .header
                .expect("header")
                .revision;
            t.record(format!("put {k}={v} rev={rev}"));
            acked.insert(k, (v, rev));
        }
        let got = c
            .range(RangeRequest {
                key: b"k3".to_vec(),
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner();
        t.record(format!(
            "get k3 -> {:?} rev={}",
            got.kvs.first().map(|kv| kv.mod_revision),
            got.header.unwrap().revision
        ));
        let txn = TxnRequest {
            compare: vec![Compare {
                key: b"k1".to_vec(),
                target: CompareTarget::Value as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::Value(acked["k1"].0.clone().into_bytes())),
                range_end: vec![],
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("k1", "txn"))),
            }],
            failure: vec![],
        };
        let r = c.txn(txn).await.expect("txn").into_inner();
        assert!(
            r.succeeded,
            "compare on the acknowledged value must succeed"
        );
        let rev = r.header.unwrap().revision;
        t.record(format!("txn k1=txn rev={rev}"));
        acked.insert("k1".into(), ("txn".into(), rev));
        acked
    });
    let mut acked = phase1.await.expect("phase 1");

    // Before the crash: a watcher reads the history so far and goes away (its last seen revision is
    // where it will resume), a lease with an attached key is granted, and more writes follow that
    // the watcher misses.
    let url = member.url();
    let t = trace.clone();
    let phase1_head = acked.values().map(|(_, rev)| *rev).max().unwrap_or(0);
    let (last_seen, lease_id, more) = client_node
        .spawn(async move {
            let mut w = WatchClient::connect(url.clone())
                .await
                .expect("watch client");
            let mut responses = w.watch(watch_from(2)).await.expect("watch").into_inner();
            let mut last_seen = 0;
            while last_seen < phase1_head {
                let next = madsim::time::timeout(Duration::from_secs(30), responses.message());
                let resp = next
                    .await
                    .expect("watch event within 30 s")
                    .expect("ok")
                    .expect("open");
                if let Some(ev) = resp.events.last() {
                    last_seen = ev.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0);
                }
            }
            drop(responses);
            let mut l = LeaseClient::connect(url.clone())
                .await
                .expect("lease client");
            let grant = l
                .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await
                .expect("grant")
                .into_inner();
            let mut kv = connect(&url).await;
            let leased = PutRequest {
                key: b"leased".to_vec(),
                value: b"v".to_vec(),
                lease: grant.id,
                ..Default::default()
            };
            kv.put(leased).await.expect("put with lease");
            // Writes the stopped watcher misses.
            let mut more = Vec::new();
            for i in 0..5 {
                let (k, v) = (format!("k{i}"), format!("missed{i}"));
                let rev = kv
                    .put(put(&k, &v))
                    .await
                    .expect("put")
                    .into_inner()
                    .header
                    .expect("header")
                    .revision;
                more.push((k, (v, rev)));
            }
            t.record(format!(
                "watcher stopped at revision {last_seen}; lease {:x} granted",
                grant.id
            ));
            (last_seen, grant.id, more)
        })
        .await
        .expect("phase 1b");
    acked.extend(more);

    // Power cut: the member dies and every unsynced write is lost; only the fsynced raft log remains.
    let lost = member.crash(&handle);
    trace.record(format!("crash m1: {lost} unsynced write batches lost"));
    assert!(
        lost > 0,
        "the state machine's buffered writes must be exposed to the crash"
    );
    madsim::time::sleep(Duration::from_secs(1)).await;
    member.restart(&handle);
    trace.record("restart m1");

    let url = member.url();
    let t = trace.clone();
    let expected = acked.clone();
    client_node
        .spawn(async move {
            let mut c = connect(&url).await;
            for (k, (v, rev)) in &expected {
                let mut got = None;
                for _ in 0..100 {
                    match c
                        .range(RangeRequest {
                            key: k.clone().into_bytes(),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(r) => {
                            got = Some(r.into_inner());
                            break;
                        }
                        Err(_) => madsim::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                let got = got.unwrap_or_else(|| panic!("member never answered after restart"));
                let kv = got
                    .kvs
                    .first()
                    .unwrap_or_else(|| panic!("acknowledged {k} lost in the crash"));
                assert_eq!(
                    (kv.value.as_slice(), kv.mod_revision),
                    (v.as_bytes(), *rev),
                    "{k} after restart"
                );
                t.record(format!("after restart {k}={v} rev={}", kv.mod_revision));
            }
        })
        .await
        .expect("phase 2");

    // Phase 3: the watcher resumes from its last seen revision + 1 and gets exactly the revisions it
    // missed, in order, once each; the lease kept its key and its TTL (full TTL plus grace, as it was
    // never checkpointed).
    let url = member.url();
    let t = trace.clone();
    let head = acked.values().map(|(_, rev)| *rev).max().unwrap_or(0);
    // Every k-key revision after the watcher's last one: the five puts it missed.
    let mut expected_revs: Vec<i64> = acked
        .values()
        .map(|(_, rev)| *rev)
        .filter(|r| *r > last_seen)
        .collect();
    expected_revs.sort();
    client_node
        .spawn(async move {
            let mut l = LeaseClient::connect(url.clone())
                .await
                .expect("lease client");
            let ttl = l
                .lease_time_to_live(LeaseTimeToLiveRequest {
                    id: lease_id,
                    keys: true,
                })
                .await
                .expect("time to live")
                .into_inner();
            assert_eq!(
                (ttl.granted_ttl, ttl.keys.clone()),
                (60, vec![b"leased".to_vec()])
            );
            assert!(
                // Rounded down (as etcd): more than 54 s left, at most 61 (60 plus grace).
                (54..=61).contains(&ttl.ttl),
                "lease kept its TTL across the restart: {}",
                ttl.ttl
            );
            let mut c = WatchClient::connect(url).await.expect("watch client");
            let mut responses = c
                .watch(watch_from(last_seen + 1))
                .await
                .expect("watch")
                .into_inner();
            let mut revs = Vec::new();
            let missed: Vec<i64> = expected_revs.clone();
            while revs.len() < missed.len() {
                let next = madsim::time::timeout(Duration::from_secs(30), responses.message());
                let resp = next
                    .await
                    .unwrap_or_else(|_| {
                        panic!("missed revisions not delivered within 30 s; got {revs:?}")
                    })
                    .expect("stream ok")
                    .expect("stream open");
                assert!(!resp.canceled, "watch cancelled: {resp:?}");
                revs.extend(
                    resp.events
                        .iter()
                        .map(|e| e.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0)),
                );
            }
            assert_eq!(
                revs, missed,
                "resumed watch after restart: exactly the missed revisions"
            );
            t.record(format!(
                "watch resumed at {} with revisions {missed:?} (head {head}); lease ttl {}",
                last_seen + 1,
                ttl.ttl
            ));
        })
        .await
        .expect("phase 3");
    acked
}

/// A watch request stream on `k..l` from `start`, kept open.
fn watch_from(start: i64) -> impl futures::Stream<Item = WatchRequest> + Send + 'static {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            start_revision: start,
            ..Default::default()
        })),
    };
    futures::stream::iter([create]).chain(futures::stream::pending())
}

fn run(seed: u64) -> (u64, Vec<String>) {
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async move {
        // Created inside the runtime, so its clock is simulated time.
        let trace = Trace::new();
        let acked = scenario(trace.clone()).await;
        assert_eq!(acked.len(), 10);
        (trace.digest(), trace.lines())
    })
}

#[test]
fn acknowledged_writes_survive_crash_and_same_seed_same_trace() {
    for seed in seeds() {
        let lines = metastore_sim::trace::run_twice(seed, run);
        assert!(lines.len() > 50, "seed {seed}: the scenario ran to the end");
    }
}

/// A member alone loses power right after acknowledging a run of puts (the unsynced part of its
/// applied state goes; the fsynced log stays), restarts, and is read linearizably from the
/// moment it listens again: every answer counts every acknowledged put. Each apply is slowed
/// (the `apply-slow` fault point forced on), so reads arrive while the restarted member is still
/// applying what its log holds: an answer from its applied state alone then would miss puts.
fn reads_across_a_restart(seed: u64) -> (u64, Vec<String>) {
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async move {
        let trace = Trace::new();
        metastore::rt::buggify::force("apply-slow");
        let handle = Handle::current();
        let member = SimMember::start(&handle, "m1", "10.0.0.1");
        let client_node = client_node(&handle);
        const PUTS: i64 = 30;
        let url = member.url();
        let last = client_node
            .spawn(async move {
                let mut c = connect(&url).await;
                let mut last = 0;
                for i in 0..PUTS {
                    let resp = c.put(put(&format!("r{i:02}"), "v")).await.expect("put");
                    last = resp.into_inner().header.expect("header").revision;
                }
                last
            })
            .await
            .expect("puts");
        let lost = member.crash(&handle);
        trace.record(format!("{PUTS} puts acknowledged up to revision {last}; crash lost {lost} unsynced write batches"));
        member.restart(&handle);
        let url = member.url();
        let t = trace.clone();
        client_node
            .spawn(async move {
                let deadline = madsim::time::Instant::now() + Duration::from_secs(30);
                let mut answered = 0;
                while answered < 20 {
                    assert!(
                        madsim::time::Instant::now() < deadline,
                        "the restarted member answered {answered} reads in 30 s"
                    );
                    let read = async {
                        let mut c = KvClient::connect(url.clone()).await.ok()?;
                        let req = RangeRequest {
                            key: b"r".to_vec(),
                            range_end: b"s".to_vec(),
                            count_only: true,
                            ..Default::default()
                        };
                        c.range(req).await.ok()
                    };
                    let Some(resp) = read.await else {
                        madsim::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let resp = resp.into_inner();
                    let rev = resp.header.expect("header").revision;
                    assert_eq!(
                        resp.count, PUTS,
                        "a linearizable read after the restart (at revision {rev}) missed acknowledged puts"
                    );
                    assert!(rev >= last, "read at revision {rev}, before the acknowledged {last}");
                    t.record(format!("read {answered}: {} keys at revision {rev}", resp.count));
                    answered += 1;
                }
            })
            .await
            .expect("reads");
        metastore::rt::buggify::enable(false);
        (trace.digest(), trace.lines())
    })
}

#[test]
fn linearizable_reads_right_after_a_restart_see_every_acknowledged_write() {
    for seed in metastore_sim::trace::seeds(1..=50) {
        metastore_sim::trace::run_twice(seed, reads_across_a_restart);
    }
}

#[test]
fn madsim_determinism_check() {
    // madsim runs the scenario twice and compares every random draw and scheduling decision.
    Runtime::check_determinism(seeds()[0], madsim::Config::default(), || async {
        scenario(Trace::new()).await;
    });
}
