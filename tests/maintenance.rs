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
