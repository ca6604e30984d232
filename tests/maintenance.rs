//! Maintenance on one member, both engines: the quota alarm round trip (writes past
//! `--quota-backend-bytes` raise NOSPACE and are refused until compaction, defragment and
//! `alarm disarm`), `endpoint status` and `hashkv` through etcdctl.

mod common;

use std::process::Command;

use common::{grpc, Server, ENGINES};

fn etcdctl(server: &Server, args: &[&str]) -> (bool, String) {
    common::etcdctl(server.host_port(), args)
}

/// Quota of the test servers: a few dozen of the values below.
const QUOTA: &str = "2000000";
const VALUE_BYTES: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_alarm_round_trip() {
    for engine in ENGINES {
        let server = Server::start_with(engine, &["--quota-backend-bytes", QUOTA]);
        let mut c = server.client().await;
        let value = vec![b'x'; VALUE_BYTES];
        let mut refused = None;
        for i in 0..200 {
            match c.put("big", value.clone(), None).await {
                Ok(_) => {}
                Err(e) => {
                    refused = Some((i, grpc(e)));
                    break;
                }
            }
        }
        let (writes, (code, message)) =
            refused.unwrap_or_else(|| panic!("{engine}: 200 writes of 64 KiB passed a 2 MB quota"));
        assert!(writes > 5, "{engine}: refused after only {writes} writes");
        assert_eq!(code, tonic::Code::ResourceExhausted, "{engine}");
        assert_eq!(
            message, "etcdserver: mvcc: database space exceeded",
            "{engine}"
        );

        // The alarm is raised (in the background of the refused write) and stays armed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (ok, text) = etcdctl(&server, &["alarm", "list"]);
            assert!(ok, "{engine}: {text}");
            if text.contains("alarm:NOSPACE") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{engine}: no NOSPACE alarm: {text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let (ok, text) = etcdctl(&server, &["endpoint", "status"]);
        assert!(
            ok && text.contains("alarm:NOSPACE"),
            "{engine}: status lists the alarm: {text}"
        );
        let small = c.put("small", "v", None).await;
        assert!(
            small.is_err(),
            "{engine}: a small write while NOSPACE is raised must fail"
        );
        // Reads and deletes still work.
        assert_eq!(c.get("big", None).await.expect("get").kvs().len(), 1);

        let rev = c
            .get("big", None)
            .await
            .expect("get")
            .header()
            .unwrap()
            .revision();
        let (ok, text) = etcdctl(&server, &["compaction", &rev.to_string()]);
        assert!(ok, "{engine}: {text}");
        let (ok, text) = etcdctl(&server, &["defrag"]);
        assert!(
            ok && text.contains("Finished defragmenting"),
            "{engine}: {text}"
        );
        let (ok, text) = etcdctl(&server, &["alarm", "disarm"]);
        assert!(ok && text.contains("alarm:NOSPACE"), "{engine}: {text}");
        let (ok, text) = etcdctl(&server, &["alarm", "list"]);
        assert!(
            ok && text.trim().is_empty(),
            "{engine}: alarms left: {text}"
        );
        c.put("small", "v", None)
            .await
            .unwrap_or_else(|e| panic!("{engine}: write after disarm: {e}"));

        let (ok, text) = etcdctl(&server, &["endpoint", "status", "-w", "json"]);
        assert!(ok && text.contains("\"dbSize\""), "{engine}: {text}");
        let (ok, text) = etcdctl(&server, &["endpoint", "hashkv"]);
        assert!(ok, "{engine}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_and_restore_into_a_new_cluster() {
    let server = Server::start("rocksdb");
    let mut c = server.client().await;
    for i in 0..100 {
        c.put(format!("key-{i:03}"), format!("value-{i}"), None)
            .await
            .expect("put");
    }
    c.delete("key-050", None).await.expect("delete");
    let head = c.put("key-000", "changed", None).await.expect("put");
    let rev = head.header().unwrap().revision();
    let hash = c.hash_kv(rev).await.expect("hashkv").hash();

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("backup.db");
    let (ok, text) = etcdctl(&server, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(ok && text.contains("Snapshot saved at"), "{text}");

    // A damaged backup is refused; so is an existing data dir.
    let mut damaged = std::fs::read(&file).expect("read backup");
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let bad = tmp.path().join("bad.db");
    std::fs::write(&bad, &damaged).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["snapshot", "restore"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(tmp.path().join("never"))
        .output()
        .expect("run restore");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("integrity check failed"), "{stderr}");
    assert!(
        !tmp.path().join("never").exists() && !tmp.path().join("never.restoring").exists(),
        "a refused restore leaves no data dir"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .expect("run restore");
    assert!(
        !out.status.success(),
        "restore into an existing dir must fail"
    );

    let cluster = common::TestCluster::start_restored(3, &file);
    cluster.leader().await;
    for m in &cluster.members {
        let mut r = m.client().await;
        let all = r
            .get("key-", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("get");
        assert_eq!(all.kvs().len(), 99, "{}", m.name);
        assert_eq!(all.kvs()[0].value_str().unwrap(), "changed");
        assert_eq!(all.kvs()[0].mod_revision(), rev);
        let h = r.hash_kv(rev).await.expect("hashkv");
        assert_eq!(
            h.hash(),
            hash,
            "{}: the restored history hashes alike",
            m.name
        );
    }
    let mut w = cluster.members[0].client().await;
    let next = w.put("after", "restore", None).await.expect("put");
    assert_eq!(next.header().unwrap().revision(), rev + 1);
}

/// One request of [`alarms_stop_writes_as_etcds_do`].
#[derive(Debug, Clone, Copy)]
enum AlarmStep {
    Alarm(etcd_client::AlarmAction, etcd_client::AlarmType, u64),
    Put,
    Delete,
    /// A txn that deletes, one that puts, one that only reads.
    TxnDelete,
    TxnPut,
    TxnRead,
    LeaseGrant(i64),
    LeaseRevoke(i64),
    Compact,
}

/// A server's answer to `step`: what the compare looks at.
async fn alarm_step_answer(c: &mut etcd_client::Client, step: AlarmStep) -> String {
    use etcd_client::{AlarmOptions, Compare, CompareOp, Txn, TxnOp};
    let rev = |h: Option<&etcd_client::ResponseHeader>| h.map(|h| h.revision()).unwrap_or(-1);
    let txn = |op: TxnOp| {
        Txn::new()
            .when([Compare::version("k", CompareOp::Greater, -1)])
            .and_then([op])
    };
    let answer = match step {
        AlarmStep::Alarm(action, alarm, member) => {
            let mut opts = AlarmOptions::new();
            opts.with_member(member);
            c.alarm(action, alarm, Some(opts)).await.map(|r| {
                let mut alarms: Vec<_> = r
                    .alarms()
                    .iter()
                    .map(|a| (a.member_id(), a.alarm() as i32))
                    .collect();
                // etcd lists them in its map's order.
                alarms.sort_unstable();
                format!("rev {} alarms {alarms:?}", rev(r.header()))
            })
        }
        AlarmStep::Put => c
            .put("k", "v", None)
            .await
            .map(|r| format!("rev {}", rev(r.header()))),
        AlarmStep::Delete => c
            .delete("k", None)
            .await
            .map(|r| format!("rev {} deleted {}", rev(r.header()), r.deleted())),
        AlarmStep::TxnDelete | AlarmStep::TxnPut | AlarmStep::TxnRead => {
            let op = match step {
                AlarmStep::TxnDelete => TxnOp::delete("k", None),
                AlarmStep::TxnPut => TxnOp::put("k", "w", None),
                _ => TxnOp::get("k", None),
            };
            c.txn(txn(op))
                .await
                .map(|r| format!("rev {} succeeded {}", rev(r.header()), r.succeeded()))
        }
        AlarmStep::LeaseGrant(id) => c
            .lease_grant(600, Some(etcd_client::LeaseGrantOptions::new().with_id(id)))
            .await
            .map(|r| format!("rev {} lease {}", rev(r.header()), r.id())),
        AlarmStep::LeaseRevoke(id) => c
            .lease_revoke(id)
            .await
            .map(|r| format!("rev {}", rev(r.header()))),
        AlarmStep::Compact => {
            let head = c.get("k", None).await.map(|r| rev(r.header())).unwrap_or(1);
            c.compact(head, None)
                .await
                .map(|r| format!("rev {}", rev(r.header())))
        }
    };
    common::etcd::answer_text(answer)
}

/// Alarms raised and cleared by hand (any member id, NONE included) and the writes they stop,
/// as etcd 3.5.1 answers them, on a generated sequence sent to the real etcd and to MetaStore:
/// CORRUPT refuses every write (`corrupt cluster`, DataLoss) and lets reads and read-only txns
/// through; NOSPACE refuses puts, lease grants and txns that put, and lets deletes, delete-only
/// txns, revokes and compactions through; a GET lists the alarms of its type whatever the member
/// id. Left out: the two transitions after which etcd 3.5 stops enforcing an alarm that is still
/// raised until it restarts (clearing one type while the other is raised; raising NOSPACE while
/// CORRUPT is): MetaStore keeps enforcing what is raised, as etcd does after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_stop_writes_as_etcds_do() {
    use etcd_client::{AlarmAction, AlarmType};

    let data = tempfile::tempdir().expect("tempdir");
    let (_etcd, mut reference) = common::etcd::start_reference(&data.path().join("e")).await;
    let server = Server::start("memory");
    let mut ours = server.client().await;
    let mut seq = common::etcd::Sequence::new(0x2545_f491_4f6c_dd1d);
    let mut below = |n: u64| seq.below(n);
    const TYPES: [AlarmType; 3] = [AlarmType::None, AlarmType::Nospace, AlarmType::Corrupt];
    const ACTIONS: [AlarmAction; 3] = [
        AlarmAction::Get,
        AlarmAction::Activate,
        AlarmAction::Deactivate,
    ];
    // The alarms raised, as (member, type), from etcd's answers.
    let mut raised = std::collections::BTreeSet::<(u64, i32)>::new();
    let mut steps = 0;
    while steps < 400 {
        let step = match below(10) {
            // Clear a raised alarm as often as anything else happens to them.
            0 | 1 if !raised.is_empty() && below(2) == 0 => {
                let (member, alarm) = *raised
                    .iter()
                    .nth(below(raised.len() as u64) as usize)
                    .expect("a raised alarm");
                let alarm = if alarm == AlarmType::Nospace as i32 {
                    AlarmType::Nospace
                } else {
                    AlarmType::Corrupt
                };
                AlarmStep::Alarm(AlarmAction::Deactivate, alarm, member)
            }
            0..=2 => AlarmStep::Alarm(
                ACTIONS[below(3) as usize],
                TYPES[[0, 1, 1, 1, 2][below(5) as usize]],
                [0, 1, 7][below(3) as usize],
            ),
            3 => AlarmStep::Put,
            4 => AlarmStep::Delete,
            5 => [AlarmStep::TxnDelete, AlarmStep::TxnPut, AlarmStep::TxnRead][below(3) as usize],
            6 => AlarmStep::LeaseGrant(1 + below(3) as i64),
            7 => AlarmStep::LeaseRevoke(1 + below(3) as i64),
            8 => AlarmStep::Compact,
            _ => AlarmStep::Put,
        };
        if let AlarmStep::Alarm(action, alarm, member) = step {
            let count = |t: AlarmType| raised.iter().filter(|(_, a)| *a == t as i32).count();
            let other = match alarm {
                AlarmType::Nospace => AlarmType::Corrupt,
                _ => AlarmType::Nospace,
            };
            let quirk = match action {
                AlarmAction::Deactivate => {
                    alarm != AlarmType::None
                        && raised.contains(&(member, alarm as i32))
                        && count(alarm) == 1
                        && count(other) > 0
                }
                AlarmAction::Activate => {
                    alarm == AlarmType::Nospace
                        && count(AlarmType::Nospace) == 0
                        && count(AlarmType::Corrupt) > 0
                }
                AlarmAction::Get => false,
            };
            if quirk {
                continue;
            }
        }
        steps += 1;
        let expected = alarm_step_answer(&mut reference, step).await;
        let got = alarm_step_answer(&mut ours, step).await;
        assert_eq!(got, expected, "step {steps}: {step:?}");
        if let AlarmStep::Alarm(action, alarm, member) = step {
            if !expected.starts_with("error") && alarm != AlarmType::None {
                match action {
                    AlarmAction::Activate => raised.insert((member, alarm as i32)),
                    AlarmAction::Deactivate => raised.remove(&(member, alarm as i32)),
                    AlarmAction::Get => false,
                };
            }
        }
    }
}

/// What `grpc.health.v1.Health` answers on one server: Check and the first Watch response for the
/// server-wide service `""` and for names it does not serve.
async fn grpc_health_answers(endpoint: &str) -> Vec<String> {
    use metastore::pb::grpc_health::health_client::HealthClient;
    use metastore::pb::grpc_health::HealthCheckRequest;
    let channel = tonic::transport::Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let mut seen = Vec::new();
    for service in ["", "etcdserverpb.KV", "grpc.health.v1.Health"] {
        let ask = HealthCheckRequest {
            service: service.to_string(),
        };
        let check = health.check(ask.clone()).await;
        seen.push(format!(
            "check {service:?}: {:?}",
            check
                .map(|r| r.into_inner().status)
                .map_err(|s| (s.code(), s.message().to_string()))
        ));
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut stream = health.watch(ask).await?.into_inner();
            stream.message().await
        })
        .await
        .expect("a first watch response within 5 s");
        seen.push(format!(
            "watch {service:?}: {:?}",
            first
                .map(|r| r.map(|r| r.status))
                .map_err(|s| (s.code(), s.message().to_string()))
        ));
    }
    seen
}

/// The gRPC health service answers as etcd 3.5.1's (asked side by side): `""` is SERVING, other
/// names are unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_service_answers_as_etcds() {
    let data = tempfile::tempdir().expect("tempdir");
    let (etcd, _reference) = common::etcd::start_reference(&data.path().join("e")).await;
    let server = Server::start("memory");
    let expected = grpc_health_answers(&format!("http://{}", etcd.endpoint)).await;
    let got = grpc_health_answers(&server.endpoint).await;
    assert_eq!(got, expected);
    assert_eq!(expected[0], r#"check "": Ok(1)"#, "SERVING");
}

/// One call of [`grpc_counter_calls`]' mix, chosen by `pick`; errors are part of the point.
async fn one_counted_call(c: &mut etcd_client::Client, pick: u64, i: u64) {
    use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
    let key = format!("k{}", i % 4);
    let _ = match pick % 12 {
        0 => c.put(key, "v", None).await.map(drop),
        1 => c.get(key, None).await.map(drop),
        // A future revision: OutOfRange.
        2 => c
            .get(key, Some(GetOptions::new().with_revision(1_000)))
            .await
            .map(drop),
        3 => c.delete(key, None).await.map(drop),
        4 => {
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, "t", None)]);
            c.txn(txn).await.map(drop)
        }
        // An empty key: InvalidArgument.
        5 => c.put("", "v", None).await.map(drop),
        // An unknown lease: NotFound.
        6 => c.lease_revoke(0x7777).await.map(drop),
        7 => c.lease_time_to_live(0x7777, None).await.map(drop),
        // A future revision: OutOfRange.
        8 => c.compact(1_000, None).await.map(drop),
        // Auth is off: FailedPrecondition.
        9 => c
            .auth_client()
            .authenticate("u".into(), "p".into())
            .await
            .map(drop),
        // A watch created, then the client goes away: Canceled.
        10 => {
            let mut stream = c.watch(key, None).await.expect("watch");
            stream.message().await.map(drop)
        }
        // Keep-alives answered, then the client stops sending: the stream ends, OK. (Leaving
        // at once instead races the end of the requests against the reset of the stream.)
        _ => {
            let id = c.lease_grant(30, None).await.expect("grant").id();
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await.expect("keep-alive");
            keeper.keep_alive().await.expect("send");
            stream.message().await.expect("an answer");
            drop(keeper);
            while let Ok(Some(_)) = stream.message().await {}
            Ok(())
        }
    };
}

/// The `grpc_server_*` series of `endpoint`'s `/metrics` whose service etcd 3.5.1 counts, each
/// less its value in `since`.
async fn grpc_counters(
    endpoint: &str,
    since: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    common::abuse::http_get(endpoint, "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("grpc_server_"))
        .filter(|l| !l.contains("v3lockpb.") && !l.contains("v3electionpb."))
        .filter(|l| !l.contains("\"RangeStream\""))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| {
            let value: u64 = value.parse().expect("a count");
            let before = since.get(series).copied().unwrap_or(0);
            (series.to_string(), value - before)
        })
        .collect()
}

/// The series of `want` (etcd's) and `got` (MetaStore's) that differ, one per line.
fn counters_differ(
    want: &std::collections::BTreeMap<String, u64>,
    got: &std::collections::BTreeMap<String, u64>,
) -> String {
    let mut out = String::new();
    for (k, v) in want {
        if got.get(k) != Some(v) {
            out += &format!("{k}: etcd {v}, MetaStore {:?}\n", got.get(k));
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        out += &format!("{k}: only MetaStore\n");
    }
    out
}

/// The gRPC server counters (`grpc_server_started_total`, `_handled_total` by code,
/// `_msg_received_total`, `_msg_sent_total`) are etcd 3.5.1's: the same series listed from the
/// start (every method, every code), and the same seeded mix of calls (answers, refusals,
/// streams the client leaves) moves them alike, series by series. (etcd-client's own suite counts
/// `Authenticate` calls this way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_server_counters_count_as_etcds() {
    let data = tempfile::tempdir().expect("tempdir");
    let zero = std::collections::BTreeMap::new();
    for seed in [7u64, 8] {
        let (etcd, mut reference) =
            common::etcd::start_reference(&data.path().join(format!("e{seed}"))).await;
        let server = Server::start(ENGINES[seed as usize % ENGINES.len()]);
        let mut ours = server.client().await;
        let etcd_url = format!("http://{}", etcd.endpoint);
        let (etcd_start, our_start) = (
            grpc_counters(&etcd_url, &zero).await,
            grpc_counters(&server.endpoint, &zero).await,
        );
        let series = |m: &std::collections::BTreeMap<String, u64>| -> Vec<String> {
            m.keys().cloned().collect()
        };
        assert_eq!(
            series(&our_start),
            series(&etcd_start),
            "seed {seed}: series"
        );
        // The same picks for both servers.
        let mut picks = common::etcd::Sequence::new(seed);
        for i in 0..40 {
            let pick = picks.below(12);
            one_counted_call(&mut reference, pick, i).await;
            one_counted_call(&mut ours, pick, i).await;
        }
        // Streams the clients left end on each server in its own time.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (want, got) = (
                grpc_counters(&etcd_url, &etcd_start).await,
                grpc_counters(&server.endpoint, &our_start).await,
            );
            if want == got {
                assert!(want.values().any(|v| *v > 0), "seed {seed}: calls counted");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "seed {seed}: the counters moved differently:\n{}",
                counters_differ(&want, &got)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Puts one key every 100 ms for `for_how_long` through `c`: the revision each put made, and when.
async fn steady_puts(
    c: &mut etcd_client::Client,
    for_how_long: std::time::Duration,
) -> Vec<(std::time::Instant, i64)> {
    let start = std::time::Instant::now();
    let mut made = Vec::new();
    while start.elapsed() < for_how_long {
        let resp = c.put("auto", "v", None).await.expect("put");
        let revision = resp.header().expect("header").revision();
        made.push((std::time::Instant::now(), revision));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    made
}

/// `--auto-compaction-retention` in periodic mode compacts as etcd 3.5.1's does: with a
/// retention of 2 s under a steady writer, each server has compacted after 6 s, to a revision
/// made between the start and one second before the end (about 2 s of history kept), and a read
/// below it is refused as compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_keeps_about_its_retention_as_etcd() {
    let data = tempfile::tempdir().expect("tempdir");
    let flags = ["--auto-compaction-retention=2s"];
    let (etcd, reference) =
        common::etcd::start_reference_with(&data.path().join("e"), &flags).await;
    let server = Server::start_with("rocksdb", &flags);
    let ours = server.client().await;
    let etcd_url = format!("http://{}", etcd.endpoint);
    for (who, mut c, url) in [
        ("etcd", reference, etcd_url.as_str()),
        ("metastore", ours, server.endpoint.as_str()),
    ] {
        let made = steady_puts(&mut c, std::time::Duration::from_secs(6)).await;
        let compacted = common::abuse::metric(url, "etcd_debugging_mvcc_compact_revision").await;
        let (end, _) = *made.last().expect("puts");
        let newest_allowed = made
            .iter()
            .filter(|(at, _)| end.duration_since(*at) >= std::time::Duration::from_secs(1))
            .map(|(_, rev)| *rev)
            .max()
            .expect("puts a second before the end");
        assert!(
            compacted > 0 && compacted <= newest_allowed,
            "{who}: compacted to {compacted}; puts made {made:?}"
        );
        let below = etcd_client::GetOptions::new().with_revision(compacted - 1);
        let refused = c
            .get("auto", Some(below))
            .await
            .expect_err("a compacted read");
        assert!(
            grpc(refused)
                .1
                .contains("required revision has been compacted"),
            "{who}"
        );
    }
}
