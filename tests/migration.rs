//! Live migration with `etcdctl make-mirror` (etcd 3.5.1's etcdctl, a Go clientv3 program): a real
//! etcd 3.5.1 is mirrored into MetaStore while it keeps taking writes (puts, overwrites, deletes,
//! a multi-key txn, large values), until MetaStore holds exactly the same keys and values; then the
//! cut-over (the mirror stops, clients write to MetaStore); then the way back, MetaStore mirrored
//! into a fresh etcd. make-mirror copies keys and values, not revisions (each write gets the
//! destination's next revision), so that is what is compared; a restore from an etcd snapshot
//! (tests/etcd_snapshot.rs) keeps revisions too.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

/// A fresh single-member etcd 3.5.1 (with its data dir) and its `host:port`.
fn start_etcd() -> ((Etcd, tempfile::TempDir), String) {
    let data = tempfile::tempdir().expect("tempdir");
    let etcd = common::etcd::spawn(
        &common::etcd::reference_dir(),
        &data.path().join("e"),
        common::free_port(),
    );
    let endpoint = etcd.endpoint.clone();
    ((etcd, data), endpoint)
}

/// A running `etcdctl make-mirror`, killed on drop.
struct Mirror(Child);

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `etcdctl make-mirror` (3.5.1) from `source` into the root of `destination`, running until
/// dropped.
fn start_mirror(source: &str, destination: &str) -> Mirror {
    let child = Command::new(common::etcd::reference_dir().join("etcdctl"))
        .arg(format!("--endpoints={source}"))
        .args(["make-mirror", "--no-dest-prefix", destination])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcdctl make-mirror");
    Mirror(child)
}

async fn connect(endpoint: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = Client::connect([endpoint], None).await {
            if c.get("probe", None).await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "{endpoint} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key and value, in key order.
async fn contents(c: &mut Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    let all = c
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .expect("read everything");
    all.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect()
}

/// Wait (bounded) until `to` holds exactly what `from` holds.
async fn wait_mirrored(from: &mut Client, to: &mut Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (want, have) = (contents(from).await, contents(to).await);
        if want == have {
            assert!(!want.is_empty());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not mirrored within 30 s ({} keys at the source, {} at the destination)",
            want.len(),
            have.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes of every kind make-mirror carries: puts, overwrites, deletes, large values, and a txn
/// that changes several keys in one revision.
async fn write_history(c: &mut Client, round: &str) {
    for i in 0..150 {
        let value = if i % 25 == 0 {
            "x".repeat(64 * 1024)
        } else {
            format!("{round}-{i}")
        };
        c.put(format!("{round}/key-{i:03}"), value, None)
            .await
            .expect("put");
    }
    for i in (0..150).step_by(3) {
        c.put(
            format!("{round}/key-{i:03}"),
            format!("{round}-again-{i}"),
            None,
        )
        .await
        .expect("overwrite");
    }
    for i in (0..150).step_by(7) {
        c.delete(format!("{round}/key-{i:03}"), None)
            .await
            .expect("delete");
    }
    let txn = Txn::new()
        .when([Compare::version(
            format!("{round}/key-001"),
            CompareOp::Greater,
            0,
        )])
        .and_then([
            TxnOp::put(format!("{round}/txn-a"), "a", None),
            TxnOp::put(format!("{round}/txn-b"), "b", None),
            TxnOp::delete(format!("{round}/key-002"), None),
        ]);
    assert!(c.txn(txn).await.expect("txn").succeeded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_mirror_moves_a_live_etcd_into_metastore_and_back() {
    let (_etcd, etcd_endpoint) = start_etcd();
    let metastore = common::Server::start("rocksdb");
    let mut etcd = connect(&etcd_endpoint).await;
    let mut ms = connect(metastore.host_port()).await;

    // Keys written before the mirror starts come over in its first sync; the rest as they happen.
    write_history(&mut etcd, "before").await;
    let mirror = start_mirror(&etcd_endpoint, metastore.host_port());
    write_history(&mut etcd, "during").await;
    wait_mirrored(&mut etcd, &mut ms, "etcd -> MetaStore").await;

    // Cut-over: writes stop at the source, the mirror goes, clients move to MetaStore.
    drop(mirror);
    ms.put("after-cutover", "v", None)
        .await
        .expect("put after the cut-over");
    let got = ms.get("after-cutover", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"v");

    // And back: MetaStore, still taking writes, mirrored into a fresh etcd.
    let (_back, back_endpoint) = start_etcd();
    let mut back = connect(&back_endpoint).await;
    let _mirror_back = start_mirror(metastore.host_port(), &back_endpoint);
    write_history(&mut ms, "after").await;
    wait_mirrored(&mut ms, &mut back, "MetaStore -> etcd").await;
}
