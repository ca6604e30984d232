//! The KV API through the `etcd-client` crate against the real binary, on both engines.

mod common;

use common::{grpc, Server, ENGINES};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use tonic::Code;

#[tokio::test]
async fn revisions_headers_and_versions() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        let empty = c.get("nothing", None).await.unwrap();
        let h = empty.header().unwrap();
        assert_eq!(h.revision(), 1, "[{engine}] a fresh store is at revision 1");
        assert!(h.cluster_id() != 0 && h.member_id() != 0 && h.raft_term() >= 1);

        let r = c.put("k", "v1", None).await.unwrap();
        assert_eq!(
            r.header().unwrap().revision(),
            2,
            "[{engine}] the first write makes revision 2"
        );
        let r = c
            .put("k", "v2", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(r.header().unwrap().revision(), 3);
        let prev = r.prev_key().unwrap();
        assert_eq!(
            (prev.value(), prev.mod_revision(), prev.version()),
            (&b"v1"[..], 2, 1)
        );

        let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
        assert_eq!(
            (
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease()
            ),
            (2, 3, 2, 0)
        );

        // A delete of nothing and a failed txn do not bump the revision.
        let d = c.delete("absent", None).await.unwrap();
        assert_eq!((d.deleted(), d.header().unwrap().revision()), (0, 3));
        let t = Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "nope")])
            .and_then([TxnOp::put("k", "x", None)]);
        let t = c.txn(t).await.unwrap();
        assert!(!t.succeeded());
        assert_eq!(t.header().unwrap().revision(), 3);

        // Delete then re-create: a new generation.
        let d = c
            .delete("k", Some(DeleteOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert_eq!(
            (
                d.deleted(),
                d.prev_kvs().len(),
                d.header().unwrap().revision()
            ),
            (1, 1, 4)
        );
        c.put("k", "v3", None).await.unwrap();
        let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
        assert_eq!((kv.create_revision(), kv.version()), (5, 1), "[{engine}]");
        // Reads at past revisions see the old generation and the deleted gap.
        assert_eq!(
            c.get("k", Some(GetOptions::new().with_revision(3)))
                .await
                .unwrap()
                .kvs()[0]
                .value(),
            b"v2"
        );
        assert!(c
            .get("k", Some(GetOptions::new().with_revision(4)))
            .await
            .unwrap()
            .kvs()
            .is_empty());
    }
}

#[tokio::test]
async fn range_end_rules_and_options() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        for (k, v) in [
            ("a", "4"),
            ("b/1", "3"),
            ("b/2", "2"),
            ("b/3", "1"),
            ("c", "0"),
        ] {
            c.put(k, v, None).await.unwrap();
        }
        c.put("b/3", "9", None).await.unwrap(); // b/3: version 2, rev 7
        let keys = |r: &etcd_client::GetResponse| {
            r.kvs()
                .iter()
                .map(|kv| kv.key_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };

        let r = c
            .get("b/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(keys(&r), ["b/1", "b/2", "b/3"], "[{engine}] prefix");
        let r = c
            .get("b/2", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap();
        assert_eq!(
            keys(&r),
            ["b/2", "b/3", "c"],
            "[{engine}] from key (range_end \\0)"
        );
        let r = c
            .get("a", Some(GetOptions::new().with_range("b/2")))
            .await
            .unwrap();
        assert_eq!(keys(&r), ["a", "b/1"]);
        let r = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        assert_eq!(r.count(), 5);

        let r = c
            .get("", Some(GetOptions::new().with_all_keys().with_limit(2)))
            .await
            .unwrap();
        assert_eq!((keys(&r).len(), r.more(), r.count()), (2, true, 5));
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_sort(SortTarget::Value, SortOrder::Descend)
                        .with_limit(2),
                ),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r), ["b/3", "a"]);
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_sort(SortTarget::Key, SortOrder::Descend),
                ),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r), ["c", "b/3", "b/2", "b/1", "a"]);
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_sort(SortTarget::Version, SortOrder::Ascend),
                ),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r).last().unwrap(), "b/3");
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_sort(SortTarget::Create, SortOrder::Descend),
                ),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r)[0], "c");
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_sort(SortTarget::Mod, SortOrder::Descend),
                ),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r)[0], "b/3");

        let r = c
            .get("b/", Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .unwrap();
        assert!(r.kvs().iter().all(|kv| kv.value().is_empty()) && r.kvs().len() == 3);
        let r = c
            .get(
                "b/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!((r.kvs().len(), r.count()), (0, 3));
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_min_mod_revision(4)
                        .with_max_mod_revision(6),
                ),
            )
            .await
            .unwrap();
        assert_eq!(
            keys(&r),
            ["b/2", "c"],
            "[{engine}] b/3 was modified at 7, outside [4, 6]"
        );
        let r = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_min_create_revision(3)
                        .with_max_create_revision(4),
                ),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r), ["b/1", "b/2"]);
        let r = c
            .get("b/3", Some(GetOptions::new().with_revision(5)))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"1");
        assert_eq!(
            r.header().unwrap().revision(),
            7,
            "the header carries the current revision"
        );
        let r = c
            .get("b/3", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        assert_eq!(r.kvs()[0].value(), b"9");
    }
}

#[tokio::test]
async fn txn_compares_nesting_and_branches() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        c.put("x", "1", None).await.unwrap();
        c.put("p/a", "1", None).await.unwrap();
        c.put("p/b", "1", None).await.unwrap();
        let rev = c.get("x", None).await.unwrap().header().unwrap().revision();

        let ok = |cmp: Compare| Txn::new().when([cmp]);
        for (cmp, want) in [
            (Compare::version("x", CompareOp::Equal, 1), true),
            (Compare::version("x", CompareOp::Greater, 1), false),
            (Compare::create_revision("x", CompareOp::Equal, 2), true),
            (Compare::mod_revision("x", CompareOp::Less, rev + 1), true),
            (Compare::value("x", CompareOp::NotEqual, "1"), false),
            (Compare::lease("x", CompareOp::Equal, 0), true),
            (Compare::version("missing", CompareOp::Equal, 0), true),
            (
                Compare::value("p/", CompareOp::Equal, "1").with_prefix(),
                true,
            ),
            (
                Compare::version("p/", CompareOp::Greater, 1).with_prefix(),
                false,
            ),
        ] {
            assert_eq!(
                c.txn(ok(cmp.clone())).await.unwrap().succeeded(),
                want,
                "[{engine}] {cmp:?}"
            );
        }

        let nested = Txn::new()
            .when([Compare::value("x", CompareOp::Equal, "1")])
            .and_then([TxnOp::put("y", "then", None)])
            .or_else([TxnOp::put("y", "else", None)]);
        let t = Txn::new()
            .when([Compare::version("x", CompareOp::Greater, 0)])
            .and_then([
                TxnOp::put("x", "2", None),
                TxnOp::txn(nested),
                TxnOp::get("x", None),
            ])
            .or_else([TxnOp::delete("x", None)]);
        let t = c.txn(t).await.unwrap();
        assert!(t.succeeded());
        assert_eq!(
            t.header().unwrap().revision(),
            rev + 1,
            "[{engine}] one txn, one revision"
        );
        let resps = t.op_responses();
        match (&resps[1], &resps[2]) {
            (TxnOpResponse::Txn(inner), TxnOpResponse::Get(g)) => {
                assert!(
                    inner.succeeded(),
                    "the nested compare sees the state before the txn"
                );
                assert_eq!(
                    g.kvs()[0].value(),
                    b"2",
                    "a get inside the txn sees its own put"
                );
            }
            other => panic!("unexpected responses {other:?}"),
        }
        assert_eq!(c.get("y", None).await.unwrap().kvs()[0].value(), b"then");
        let t = Txn::new()
            .when([Compare::value("x", CompareOp::Equal, "1")])
            .or_else([TxnOp::delete("x", None)]);
        assert!(!c.txn(t).await.unwrap().succeeded());
        assert!(
            c.get("x", None).await.unwrap().kvs().is_empty(),
            "the failure branch ran"
        );
    }
}

#[tokio::test]
async fn errors_match_etcd_and_change_nothing() {
    for engine in ENGINES {
        let server = Server::start_with(
            engine,
            &["--max-txn-ops", "4", "--max-request-bytes", "4096"],
        );
        let mut c = server.client().await;
        c.put("k", "v", None).await.unwrap();
        let rev = || async {
            server
                .client()
                .await
                .get("k", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision()
        };
        let before = rev().await;

        let e = grpc(c.put("", "v", None).await.unwrap_err());
        assert_eq!(
            e,
            (
                Code::InvalidArgument,
                "etcdserver: key is not provided".into()
            ),
            "[{engine}]"
        );
        let e = grpc(c.get("", None).await.unwrap_err());
        assert_eq!(e.1, "etcdserver: key is not provided");

        let many = Txn::new().and_then(
            (0..5)
                .map(|i| TxnOp::put(format!("t{i}"), "v", None))
                .collect::<Vec<_>>(),
        );
        let e = grpc(c.txn(many).await.unwrap_err());
        assert_eq!(
            e,
            (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request".into()
            )
        );

        let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
        let e = grpc(c.txn(dup).await.unwrap_err());
        assert_eq!(
            e,
            (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request".into()
            )
        );

        let e = grpc(
            c.get("k", Some(GetOptions::new().with_revision(1000)))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            e,
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision".into()
            )
        );

        let e = grpc(c.put("big", vec![b'x'; 5000], None).await.unwrap_err());
        assert_eq!(
            e,
            (
                Code::InvalidArgument,
                "etcdserver: request is too large".into()
            )
        );

        let e = grpc(
            c.put("k", "v", Some(PutOptions::new().with_lease(12345)))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            e,
            (
                Code::NotFound,
                "etcdserver: requested lease not found".into()
            )
        );

        let e = grpc(
            c.put("nokey", "", Some(PutOptions::new().with_ignore_value()))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            e,
            (Code::InvalidArgument, "etcdserver: key not found".into())
        );
        let e = grpc(
            c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            e,
            (
                Code::InvalidArgument,
                "etcdserver: value is provided".into()
            )
        );

        // A txn whose chosen branch holds a bad put is rejected whole.
        let t = Txn::new().and_then([
            TxnOp::put("partial", "x", None),
            TxnOp::put("nokey", "", Some(PutOptions::new().with_ignore_value())),
        ]);
        assert_eq!(
            grpc(c.txn(t).await.unwrap_err()).1,
            "etcdserver: key not found"
        );

        assert_eq!(
            rev().await,
            before,
            "[{engine}] no rejected request changed the store"
        );
        assert!(c.get("partial", None).await.unwrap().kvs().is_empty());
        assert!(c.get("big", None).await.unwrap().kvs().is_empty());

        c.put("k", "v2", None).await.unwrap();
        c.compact(
            before + 1,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
        let e = grpc(
            c.get("k", Some(GetOptions::new().with_revision(before)))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            e,
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted".into()
            )
        );
        let e = grpc(c.compact(before, None).await.unwrap_err());
        assert_eq!(
            e.1,
            "etcdserver: mvcc: required revision has been compacted"
        );
        let e = grpc(c.compact(before + 100, None).await.unwrap_err());
        assert_eq!(
            e.1,
            "etcdserver: mvcc: required revision is a future revision"
        );
        assert_eq!(
            c.get("k", Some(GetOptions::new().with_revision(before + 1)))
                .await
                .unwrap()
                .kvs()[0]
                .value(),
            b"v2"
        );
    }
}

#[tokio::test]
async fn quota_refuses_writes_but_not_deletes() {
    for engine in ENGINES {
        let server = Server::start_with(engine, &["--quota-backend-bytes", "200000"]);
        let mut c = server.client().await;
        let mut refused = None;
        for i in 0..400 {
            match c.put(format!("fill/{i}"), vec![b'x'; 2048], None).await {
                Ok(_) => {}
                Err(e) => {
                    refused = Some(grpc(e));
                    break;
                }
            }
        }
        assert_eq!(
            refused,
            Some((
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded".into()
            )),
            "[{engine}] writes past the quota are refused"
        );
        c.delete("fill/", Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
    }
}
