//! Regression tests for the request that stopped every member (issue 14): a txn whose put ran
//! before a later range of the same branch failed left the put in the key index, the lease table
//! and the watch events; the next write to the key reused its revision and panicked apply on every
//! member. A refused txn must leave no trace, and the member (or cluster) keeps serving.

mod common;

use std::time::Duration;

use common::{grpc, Server, TestCluster, ENGINES};
use etcd_client::{Client, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use tonic::Code;

/// The exact request from the report: put k1, then read k2 at a revision no member has.
fn crash_txn() -> Txn {
    Txn::new().and_then([
        TxnOp::put("k1", "v", None),
        TxnOp::get("k2", Some(GetOptions::new().with_revision(999_999))),
    ])
}

/// The same shape with the put one level down, in a nested txn.
fn nested_crash_txn() -> Txn {
    Txn::new().and_then([
        TxnOp::txn(Txn::new().and_then([TxnOp::put("k1", "nested", None)])),
        TxnOp::get("k2", Some(GetOptions::new().with_revision(999_999))),
    ])
}

async fn expect_refused(c: &mut Client, txn: Txn, what: &str) {
    let err = c.txn(txn).await.expect_err(what);
    assert_eq!(
        grpc(err),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".to_string()
        ),
        "{what}"
    );
}

/// Every event a watcher from revision 1 on `key` gets until nothing more comes for a moment:
/// `(type, value, mod_revision)`.
async fn history(c: &mut Client, key: &str) -> Vec<(EventType, Vec<u8>, i64)> {
    let mut stream = c
        .watch(key, Some(WatchOptions::new().with_start_revision(1)))
        .await
        .expect("watch");
    let mut seen = Vec::new();
    while let Ok(Ok(Some(resp))) =
        tokio::time::timeout(Duration::from_millis(500), stream.message()).await
    {
        for ev in resp.events() {
            let kv = ev.kv().expect("kv");
            seen.push((ev.event_type(), kv.value().to_vec(), kv.mod_revision()));
        }
    }
    drop(stream);
    seen
}

#[tokio::test]
async fn a_refused_txn_leaves_no_trace_on_one_member() {
    for engine in ENGINES {
        let mut server = Server::start(engine);
        let mut c = server.client().await;
        expect_refused(&mut c, crash_txn(), "the crash txn").await;
        expect_refused(&mut c, nested_crash_txn(), "the nested crash txn").await;
        let get = c.get("k1", None).await.expect("get");
        assert!(
            get.kvs().is_empty(),
            "[{engine}] the refused put is invisible"
        );
        assert_eq!(get.header().unwrap().revision(), 1, "[{engine}]");

        // The write that used to panic the member.
        let put = c.put("k1", "x", None).await.expect("the next put works");
        assert_eq!(put.header().unwrap().revision(), 2, "[{engine}]");
        let kv = c.get("k1", None).await.unwrap().kvs()[0].clone();
        assert_eq!(
            (kv.value(), kv.version(), kv.create_revision()),
            (&b"x"[..], 1, 2),
            "[{engine}]"
        );
        assert_eq!(
            history(&mut c, "k1").await,
            vec![(EventType::Put, b"x".to_vec(), 2)],
            "[{engine}] watchers never saw the refused put"
        );

        // And after a crash the same state comes back from disk (the memory engine keeps none).
        if engine != "rocksdb" {
            continue;
        }
        server.kill9();
        server.restart();
        let mut c = server.client().await;
        let kv = c.get("k1", None).await.unwrap().kvs()[0].clone();
        assert_eq!((kv.value(), kv.version()), (&b"x"[..], 1), "[{engine}]");
        let put = c.put("k1", "y", None).await.expect("put after restart");
        assert_eq!(put.header().unwrap().revision(), 3, "[{engine}]");
    }
}

#[tokio::test]
async fn a_refused_txn_does_not_stop_a_cluster() {
    let cluster = TestCluster::start(3);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    // Through a follower (forwarded to the leader) and through the leader: every member applies
    // the refused entry, and every member must go on.
    for via in [follower, leader] {
        let mut c = cluster.members[via].client().await;
        expect_refused(&mut c, crash_txn(), "the crash txn").await;
        expect_refused(&mut c, nested_crash_txn(), "the nested crash txn").await;
    }
    let mut revisions = Vec::new();
    for (i, m) in cluster.members.iter().enumerate() {
        let mut c = m.client().await;
        let put = c
            .put("k1", format!("from-{i}"), None)
            .await
            .unwrap_or_else(|e| panic!("member {i} must still serve writes: {e}"));
        revisions.push(put.header().unwrap().revision());
    }
    assert_eq!(
        revisions,
        vec![2, 3, 4],
        "one revision per write, none reused"
    );
    for (i, m) in cluster.members.iter().enumerate() {
        let mut c = m.client().await;
        let kv = c.get("k1", None).await.expect("get").kvs()[0].clone();
        assert_eq!(
            (kv.value(), kv.version(), kv.mod_revision()),
            (&b"from-2"[..], 3, 4),
            "member {i}"
        );
        assert_eq!(
            history(&mut c, "k1").await.len(),
            3,
            "member {i}: only the three accepted puts are events"
        );
    }
}
