//! The v3election service through the `etcd-client` crate, on both engines.

mod common;

use std::time::Duration;

use common::{Server, ENGINES};
use etcd_client::{ProclaimOptions, ResignOptions};

#[tokio::test]
async fn campaign_leader_observe_proclaim_resign() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        let l1 = c.lease_grant(60, None).await.unwrap().id();
        let l2 = c.lease_grant(60, None).await.unwrap().id();
        let won = c.campaign("el", "alice", l1).await.unwrap();
        let leader = won.leader().unwrap().clone();
        assert_eq!(
            leader.key(),
            format!("el/{l1:x}").as_bytes(),
            "[{engine}] etcd's key layout"
        );
        assert_eq!(
            c.leader("el").await.unwrap().kv().unwrap().value(),
            b"alice"
        );

        let mut observe = c.observe("el").await.unwrap();
        let first = observe.message().await.unwrap().unwrap();
        assert_eq!(first.kv().unwrap().value(), b"alice");

        // A second candidate waits while alice leads.
        let mut c2 = server.client().await;
        let bob = tokio::spawn(async move { c2.campaign("el", "bob", l2).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!bob.is_finished(), "[{engine}] one leader at a time");

        c.proclaim(
            "alice-2",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), observe.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            seen.kv().unwrap().value(),
            b"alice-2",
            "[{engine}] observers see proclamations"
        );

        c.resign(Some(ResignOptions::new().with_leader(leader.clone())))
            .await
            .unwrap();
        let bob = tokio::time::timeout(Duration::from_secs(5), bob)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(bob.leader().unwrap().key(), format!("el/{l2:x}").as_bytes());
        let seen = tokio::time::timeout(Duration::from_secs(5), observe.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            seen.kv().unwrap().value(),
            b"bob",
            "[{engine}] the next leader is observed"
        );

        // The old leader key no longer proclaims.
        let err = c
            .proclaim("stale", Some(ProclaimOptions::new().with_leader(leader)))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("election: not leader"),
            "[{engine}] {err}"
        );
    }
}

/// Campaign with lease 0 as etcd 3.5.1's server answers it (checked against the real binary): a
/// fresh lease of 60 s is granted, named in the leader key's `lease` and in its key.
#[tokio::test]
async fn campaign_with_lease_zero_gets_a_session_lease() {
    let server = Server::start("memory");
    let mut c = server.client().await;
    let won = c.campaign("zel", "v", 0).await.unwrap();
    let leader = won.leader().unwrap().clone();
    assert_ne!(leader.lease(), 0, "lease 0 is replaced by a granted lease");
    assert_eq!(leader.key(), format!("zel/{:x}", leader.lease()).as_bytes());
    let ttl = c.lease_time_to_live(leader.lease(), None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60, "etcd's session TTL");
    let kv = c.get(leader.key(), None).await.unwrap();
    assert_eq!(kv.kvs()[0].lease(), leader.lease());
    assert_eq!(kv.kvs()[0].value(), b"v");

    // A second lease-0 candidate waits behind the first, on a key of its own.
    let mut c2 = server.client().await;
    let second = tokio::spawn(async move { c2.campaign("zel", "w", 0).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "one leader at a time");
    c.resign(Some(ResignOptions::new().with_leader(leader.clone())))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let next = got.leader().unwrap();
    assert_ne!(next.lease(), leader.lease());
    assert_eq!(next.key(), format!("zel/{:x}", next.lease()).as_bytes());
}
