//! A follower far behind a store of several hundred MB catches up by a raft snapshot (issue 15):
//! the transfer is streamed in bounded chunks, so neither the member sending it nor the one
//! receiving it grows its memory with the store's size, and its deadline scales with the bytes
//! sent, so a big store is not cut off at the minimum.

mod common;

use std::time::{Duration, Instant};

use common::abuse::{rss_kib, RSS_BUDGET_KIB};
use common::TestCluster;
use etcd_client::GetOptions;
use metastore::limits;

/// Values written while the follower is down: 400 × 1 MiB, every key distinct, so the store the
/// snapshot carries holds 400 MiB of values.
const VALUES: usize = 400;
const VALUE_BYTES: usize = 1024 * 1024;

/// The value of key `i`: a pattern of its own, so a mixed-up or truncated value shows.
fn value(i: usize) -> Vec<u8> {
    let tag = format!("{i:04}:");
    tag.bytes().cycle().take(VALUE_BYTES).collect()
}

fn key(i: usize) -> String {
    format!("big/{i:04}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_on_a_store_of_several_hundred_megabytes() {
    let _alone = common::abuse::one_at_a_time().await;
    // A snapshot every 50 entries, and at most 25 entries kept below it: a follower that misses
    // the 300 writes can only catch up by a snapshot.
    let mut cluster = TestCluster::start_with(3, &["--snapshot-count", "50"]);
    let leader = cluster.leader().await;
    let lagging = (leader + 1) % 3;
    cluster.members[lagging].kill9();
    let mut client = cluster.members[leader].client().await;
    let written = Instant::now();
    for i in 0..VALUES {
        client.put(key(i), value(i), None).await.expect("put");
    }
    let head = client
        .get(key(0), None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    eprintln!(
        "{} MiB written in {:?}",
        (VALUES * VALUE_BYTES) >> 20,
        written.elapsed()
    );

    let sender_pid = cluster.members[leader].pid();
    let sender_before = rss_kib(sender_pid);
    cluster.members[lagging].restart();
    let receiver_pid = cluster.members[lagging].pid();
    let started = Instant::now();
    // The transfer's own deadline for this many bytes, and a little for the member to start.
    let deadline = started
        + limits::SNAPSHOT_TRANSFER_TIMEOUT_MIN
        + Duration::from_secs(
            (VALUES * VALUE_BYTES) as u64 / limits::SNAPSHOT_TRANSFER_MIN_BYTES_PER_SEC,
        )
        + Duration::from_secs(10);
    let (mut sender_peak, mut receiver_peak) = (sender_before, 0);
    let last = key(VALUES - 1);
    loop {
        sender_peak = sender_peak.max(rss_kib(sender_pid));
        receiver_peak = receiver_peak.max(rss_kib(receiver_pid));
        let caught_up = async {
            let mut c = cluster.members[lagging].client().await;
            let got = c
                .get(last.as_str(), Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            Some(got.header()?.revision() >= head && got.count() == 1)
        };
        if tokio::time::timeout(Duration::from_secs(2), caught_up)
            .await
            .ok()
            .flatten()
            == Some(true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not catch up on the {} MiB store in {:?}",
            (VALUES * VALUE_BYTES) >> 20,
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "caught up in {:?}; sender RSS {sender_before} KiB before, {sender_peak} KiB at most; \
         receiver RSS at most {receiver_peak} KiB",
        started.elapsed()
    );
    assert!(
        sender_peak <= sender_before + RSS_BUDGET_KIB,
        "sending the snapshot took the leader from {sender_before} KiB to {sender_peak} KiB"
    );
    // A receiver holding the snapshot in memory would take the store's size on top of its own
    // footprint (about 80 MiB in a debug build). One staging it chunk by chunk holds what RocksDB
    // holds whatever the size: a 64 MiB memtable and one being flushed for each of the two
    // keyspaces it writes (staging, then the key-value records), 256 MiB at most, under the
    // store's 400 MiB with its own footprint (180 to 300 MiB measured).
    let store_kib = (VALUES * VALUE_BYTES) as u64 / 1024;
    assert!(
        receiver_peak < store_kib,
        "receiving the snapshot took the follower to {receiver_peak} KiB: a {store_kib} KiB store"
    );
    // Every value arrived whole, and the members agree on the store.
    let mut follower = cluster.members[lagging].client().await;
    for i in 0..VALUES {
        let got = follower
            .get(key(i), Some(GetOptions::new().with_serializable()))
            .await
            .expect("get from the follower");
        assert_eq!(got.kvs().len(), 1, "{}", key(i));
        assert!(got.kvs()[0].value() == value(i), "{} differs", key(i));
    }
    let mut hashes = Vec::new();
    for m in &cluster.members {
        let mut c = m.client().await;
        hashes.push(c.hash_kv(head).await.expect("hash_kv").hash());
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "members disagree at revision {head}: {hashes:?}"
    );
    // The follower serves writes through the cluster again.
    follower.put("after", "v", None).await.expect("put after");
}
