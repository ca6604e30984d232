//! The Lease API through the `etcd-client` crate against the real binary, on both engines.

mod common;

use std::time::Duration;

use common::{grpc, Server, ENGINES};
use etcd_client::{EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};
use tonic::Code;

#[tokio::test]
async fn grant_attach_time_to_live_and_list() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        let chosen = c.lease_grant(60, None).await.unwrap();
        assert!(chosen.id() > 0, "[{engine}] the server picks a positive id");
        assert_eq!(chosen.ttl(), 60);
        let short = c
            .lease_grant(1, Some(LeaseGrantOptions::new().with_id(77)))
            .await
            .unwrap();
        assert_eq!(
            (short.id(), short.ttl()),
            (77, 2),
            "[{engine}] TTL raised to the minimum (1.5 election timeouts)"
        );
        let e = grpc(
            c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(77)))
                .await
                .unwrap_err(),
        );
        assert_eq!(
            e,
            (
                Code::FailedPrecondition,
                "etcdserver: lease already exists".into()
            )
        );
        let e = grpc(c.lease_grant(9_000_000_001, None).await.unwrap_err());
        assert_eq!(
            e,
            (Code::OutOfRange, "etcdserver: too large lease TTL".into())
        );

        c.put("a", "1", Some(PutOptions::new().with_lease(chosen.id())))
            .await
            .unwrap();
        c.put("b", "1", Some(PutOptions::new().with_lease(chosen.id())))
            .await
            .unwrap();
        c.put("b", "2", Some(PutOptions::new().with_lease(77)))
            .await
            .unwrap(); // moves b to lease 77
        assert_eq!(
            c.get("a", None).await.unwrap().kvs()[0].lease(),
            chosen.id()
        );
        let ttl = c
            .lease_time_to_live(chosen.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(
            (ttl.granted_ttl(), ttl.keys()),
            (60, &[b"a".to_vec()][..]),
            "[{engine}]"
        );
        // Whole seconds rounded down, as etcd answers: more than 55 s left.
        assert!(ttl.ttl() >= 55 && ttl.ttl() <= 60, "{}", ttl.ttl());
        let mut ids: Vec<i64> = c
            .leases()
            .await
            .unwrap()
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        ids.sort();
        let mut want = vec![77, chosen.id()];
        want.sort();
        assert_eq!(ids, want);
        let unknown = c.lease_time_to_live(12345, None).await.unwrap();
        assert_eq!(
            unknown.ttl(),
            -1,
            "an unknown lease answers TTL -1, as in etcd"
        );
    }
}

#[tokio::test]
async fn revoke_deletes_keys_in_one_revision_and_watchers_see_it() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        let lease = c.lease_grant(60, None).await.unwrap().id();
        for k in ["l/1", "l/2", "l/3"] {
            c.put(k, "v", Some(PutOptions::new().with_lease(lease)))
                .await
                .unwrap();
        }
        c.put("l/keep", "v", None).await.unwrap();
        let mut w = c
            .watch("l/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(w.message().await.unwrap().unwrap().created());
        let revoked = c.lease_revoke(lease).await.unwrap();
        let rev = revoked.header().unwrap().revision();
        let resp = tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let deletes: Vec<(EventType, i64)> = resp
            .events()
            .iter()
            .map(|e| (e.event_type(), e.kv().unwrap().mod_revision()))
            .collect();
        assert_eq!(
            deletes,
            vec![(EventType::Delete, rev); 3],
            "[{engine}] all three keys at one revision, together"
        );
        let left = c
            .get("l/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(left.kvs().len(), 1);
        let e = grpc(c.lease_revoke(lease).await.unwrap_err());
        assert_eq!(
            e,
            (
                Code::NotFound,
                "etcdserver: requested lease not found".into()
            )
        );
        let e = grpc(
            c.put("x", "v", Some(PutOptions::new().with_lease(lease)))
                .await
                .unwrap_err(),
        );
        assert_eq!(e.1, "etcdserver: requested lease not found");
    }
}

#[tokio::test]
async fn expiry_deletes_keys_unless_kept_alive() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        let dies = c.lease_grant(2, None).await.unwrap().id();
        let lives = c.lease_grant(2, None).await.unwrap().id();
        c.put("dies", "v", Some(PutOptions::new().with_lease(dies)))
            .await
            .unwrap();
        c.put("lives", "v", Some(PutOptions::new().with_lease(lives)))
            .await
            .unwrap();
        let (mut keeper, mut stream) = c.lease_keep_alive(lives).await.unwrap();
        for _ in 0..8 {
            keeper.keep_alive().await.unwrap();
            let resp = stream.message().await.unwrap().unwrap();
            assert_eq!((resp.id(), resp.ttl()), (lives, 2));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // 4 s have passed: the 2 s lease without keep-alives is gone with its key.
        assert!(
            c.get("dies", None).await.unwrap().kvs().is_empty(),
            "[{engine}] expired key deleted"
        );
        assert_eq!(c.lease_time_to_live(dies, None).await.unwrap().ttl(), -1);
        assert_eq!(
            c.get("lives", None).await.unwrap().kvs().len(),
            1,
            "[{engine}] kept-alive key stays"
        );
        keeper.keep_alive().await.unwrap();
        assert_eq!(stream.message().await.unwrap().unwrap().ttl(), 2);
        // The server answers a keep-alive of an unknown lease with TTL 0; the client turns that into
        // its "lease not found" error.
        match c.lease_keep_alive(dies).await {
            Err(etcd_client::Error::LeaseKeepAliveError(msg)) => assert_eq!(msg, "lease not found"),
            other => panic!("[{engine}] expected lease not found, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn leases_survive_restart_with_a_fresh_ttl() {
    let mut server = Server::start("rocksdb");
    let mut c = server.client().await;
    let lease = c.lease_grant(3, None).await.unwrap().id();
    c.put("k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    drop(c);
    server.restart();
    let mut c = server.client().await;
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(
        (ttl.granted_ttl(), ttl.keys()),
        (3, &[b"k".to_vec()][..]),
        "table and attachment recovered"
    );
    assert!(
        ttl.ttl() >= 2,
        "at least 2 s left (rounded down); never checkpointed: a restarted leader grants the full TTL plus grace"
    );
    // 3 s of TTL plus 1 s of grace (an election timeout), then the next expiry check.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    assert!(
        c.get("k", None).await.unwrap().kvs().is_empty(),
        "and it still expires"
    );
}

#[tokio::test]
async fn restart_resumes_from_the_checkpointed_remaining_ttl() {
    let mut server = Server::start_with(
        "rocksdb",
        &["--experimental-lease-checkpoint-interval", "500ms"],
    );
    let mut c = server.client().await;
    let lease = c.lease_grant(20, None).await.unwrap().id();
    // Let a few checkpoints record the lease running down.
    tokio::time::sleep(Duration::from_millis(6000)).await;
    drop(c);
    server.kill9();
    server.restart();
    let mut c = server.client().await;
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    // Full TTL after a restart would be 20 s + 1 s of grace; the checkpoint says about 14 s were left.
    assert!(
        // Rounded down: more than 11 s left, at most 17.
        ttl.ttl() <= 17 && ttl.ttl() >= 11,
        "resumed from the checkpoint: {} s left",
        ttl.ttl()
    );
    // A keep-alive renews it to the full TTL, and that survives another restart.
    let (mut keeper, mut stream) = c.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().ttl(), 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop((keeper, stream, c));
    server.kill9();
    server.restart();
    let mut c = server.client().await;
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert!(
        ttl.ttl() >= 17,
        "more than 17 s left (rounded down): the renewal was checkpointed: {} s left",
        ttl.ttl()
    );
}

/// The remaining TTL is answered as etcd 3.5.1 answers it: whole seconds, rounded down (a lease of
/// 10 s asked 0.3 s after its grant has 9 left), the granted TTL raised to the minimum the same way.
/// Both servers are asked the same thing at the same moment; a sample is compared only when both
/// answered within 0.7 s of the grant, so a stalled machine cannot flip a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_ttl_is_rounded_as_etcd_rounds_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let (_etcd, mut reference) = common::etcd::start_reference(&data.path().join("e")).await;
    let server = Server::start("memory");
    let mut ours = server.client().await;
    let mut compared = 0;
    for ttl in [1, 2, 3, 5, 10, 60, 600] {
        let started = std::time::Instant::now();
        let mut ids = Vec::new();
        for c in [&mut reference, &mut ours] {
            ids.push(c.lease_grant(ttl, None).await.expect("grant").id());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::new();
        for (c, id) in [&mut reference, &mut ours].into_iter().zip(&ids) {
            let answer = c.lease_time_to_live(*id, None).await.expect("time to live");
            got.push((answer.granted_ttl(), answer.ttl()));
        }
        if started.elapsed() >= Duration::from_millis(700) {
            continue;
        }
        compared += 1;
        assert_eq!(got[1], got[0], "lease of {ttl} s: MetaStore vs etcd 3.5.1");
        assert_eq!(got[1].1, got[1].0 - 1, "lease of {ttl} s: rounded down");
    }
    assert!(compared >= 4, "only {compared} of 7 samples were timely");
}
