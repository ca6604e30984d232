//! The v3lock service through the `etcd-client` crate, on both engines.

mod common;

use std::time::Duration;

use common::{Server, ENGINES};
use etcd_client::LockOptions;

#[tokio::test]
async fn lock_is_exclusive_fifo_and_released_by_unlock_or_lease_expiry() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        let l1 = c.lease_grant(60, None).await.unwrap().id();
        let l2 = c.lease_grant(2, None).await.unwrap().id();
        let l3 = c.lease_grant(60, None).await.unwrap().id();

        let first = c
            .lock("mylock", Some(LockOptions::new().with_lease(l1)))
            .await
            .unwrap();
        let key1 = first.key().to_vec();
        assert_eq!(
            key1,
            format!("mylock/{l1:x}").into_bytes(),
            "[{engine}] etcd's key layout"
        );

        // A second locker waits while the first holds the lock.
        let mut c2 = server.client().await;
        let second = tokio::spawn(async move {
            c2.lock("mylock", Some(LockOptions::new().with_lease(l2)))
                .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!second.is_finished(), "[{engine}] the lock is exclusive");
        c.unlock(key1).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.key(), format!("mylock/{l2:x}").as_bytes());

        // The holder's lease expires (2 s, never kept alive): the lock passes on by itself.
        let mut c3 = server.client().await;
        let third = tokio::spawn(async move {
            c3.lock("mylock", Some(LockOptions::new().with_lease(l3)))
                .await
        });
        let got = tokio::time::timeout(Duration::from_secs(8), third)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            got.key(),
            format!("mylock/{l3:x}").as_bytes(),
            "[{engine}] released by expiry"
        );
    }
}
