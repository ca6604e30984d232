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

/// Lease 0 as etcd 3.5.1's server answers it (checked against the real binary): the lock is taken
/// with a fresh lease of 60 s that nobody keeps alive, named in the key (`name/<lease in hex>`), so
/// two lease-0 lockers queue on two keys and the second waits. A waiter that goes away takes its
/// key out of the queue (etcd's Mutex.Lock unlocks on a failed wait).
#[tokio::test]
async fn lock_with_lease_zero_gets_a_session_lease_and_is_exclusive() {
    let server = Server::start("memory");
    let mut c = server.client().await;
    let first = c.lock("zlock", None).await.unwrap();
    let key1 = first.key().to_vec();
    let hex = std::str::from_utf8(&key1)
        .unwrap()
        .strip_prefix("zlock/")
        .expect("etcd's key layout")
        .to_string();
    let lease1 = i64::from_str_radix(&hex, 16).expect("the key names a lease");
    assert_ne!(lease1, 0, "lease 0 is replaced by a granted lease");
    let ttl = c.lease_time_to_live(lease1, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60, "etcd's session TTL");
    assert!(ttl.ttl() > 50, "a fresh lease: {}", ttl.ttl());
    let kv = c.get(key1.clone(), None).await.unwrap();
    assert_eq!(kv.kvs()[0].lease(), lease1, "the key is attached to it");

    // A second lease-0 locker gets a lease of its own and waits.
    let mut c2 = server.client().await;
    let second = tokio::spawn(async move { c2.lock("zlock", None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the lock is exclusive");
    let queued = |n| async move {
        let mut c = server_client(n).await;
        c.get("zlock/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count()
    };
    let endpoint = server.endpoint.clone();
    assert_eq!(queued(endpoint.clone()).await, 2, "two keys queued");

    // A third waiter whose client goes away leaves no key behind.
    let mut c3 = server.client().await;
    let third = tokio::spawn(async move { c3.lock("zlock", None).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while queued(endpoint.clone()).await < 3 {
        assert!(std::time::Instant::now() < deadline, "third key queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    third.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while queued(endpoint.clone()).await != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "an abandoned waiter's key is withdrawn"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    c.unlock(key1.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(got.key().starts_with(b"zlock/"));
    assert_ne!(got.key(), key1.as_slice(), "its own key, its own lease");
}

async fn server_client(endpoint: String) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect")
}

/// An empty name is a name too, as etcd 3.5.1 treats it (asked by the differential test): the
/// lock's key is `/<lease hex>`, and a lock error reaches the client as code Unknown with etcd's
/// text, as etcd serves v3lock through an in-process client.
#[tokio::test]
async fn an_empty_name_locks_and_errors_come_as_etcds_do() {
    let server = Server::start("memory");
    let mut c = server.client().await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let got = c
        .lock("", Some(LockOptions::new().with_lease(lease)))
        .await
        .expect("an empty name locks");
    assert_eq!(got.key(), format!("/{lease:x}").as_bytes());
    c.unlock(got.key()).await.expect("unlock");
    let err = c
        .lock("x", Some(LockOptions::new().with_lease(0x4321)))
        .await
        .expect_err("an unknown lease");
    let etcd_client::Error::GRpcStatus(status) = err else {
        panic!("a gRPC status: {err:?}");
    };
    assert_eq!(
        (status.code(), status.message()),
        (
            tonic::Code::Unknown,
            "etcdserver: requested lease not found"
        )
    );
}
