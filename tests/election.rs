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
