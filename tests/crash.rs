//! Crash safety with the real binary on RocksDB: `kill -9` at any moment loses nothing acknowledged,
//! and a restart recovers revision, compaction point and key index from disk.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{grpc, Server};
use etcd_client::GetOptions;
use tonic::Code;

#[tokio::test]
async fn kill9_during_writes_loses_nothing_acknowledged() {
    let mut server = Server::start("rocksdb");
    let acked: Arc<Mutex<BTreeMap<String, (String, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = server
            .client_with_timeout(std::time::Duration::from_secs(2))
            .await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut c = client;
            for i in 0.. {
                let (k, v) = (format!("w{w}/k{}", i % 50), format!("{w}-{i}"));
                match c.put(k.clone(), v.clone(), None).await {
                    Ok(r) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(k, (v, r.header().unwrap().revision()));
                    }
                    Err(_) => return, // the server died under us
                }
            }
        }));
    }
    // Let the writers run, then kill the server mid-stream.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the writers made progress before the kill ({} keys)",
        acked.len()
    );

    server.restart();
    let mut c = server.client().await;
    let max_rev = acked.values().map(|(_, r)| *r).max().unwrap();
    for (k, (v, rev)) in &acked {
        let got = c.get(k.as_str(), None).await.unwrap();
        let kv = got
            .kvs()
            .first()
            .unwrap_or_else(|| panic!("acknowledged key {k} is gone"));
        // A later write to the same key may have been applied but not acknowledged before the kill.
        assert!(kv.mod_revision() >= *rev, "{k}: revision went backwards");
        if kv.mod_revision() == *rev {
            assert_eq!(kv.value_str().unwrap(), v, "{k}");
        }
        let at = c
            .get(k.as_str(), Some(GetOptions::new().with_revision(*rev)))
            .await
            .unwrap();
        assert_eq!(
            at.kvs()[0].value_str().unwrap(),
            v,
            "{k} at its acknowledged revision {rev}"
        );
    }
    let head = c
        .get("w0/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(
        head.header().unwrap().revision() >= max_rev,
        "the store revision survived"
    );
}

#[tokio::test]
async fn restart_recovers_revision_compaction_and_index() {
    let mut server = Server::start("rocksdb");
    let mut c = server.client().await;
    for i in 0..20 {
        c.put(format!("k{}", i % 5), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.delete("k0", None).await.unwrap();
    let rev = c
        .get("k1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    c.compact(rev - 3, None).await.unwrap();
    let before: Vec<_> = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect();
    drop(c);

    server.restart();
    let mut c = server.client().await;
    let after = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(
        after.header().unwrap().revision(),
        rev,
        "revision recovered"
    );
    let after: Vec<_> = after
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect();
    assert_eq!(after, before, "key index and records recovered");
    let e = grpc(
        c.get("k1", Some(GetOptions::new().with_revision(rev - 4)))
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
    // Versions continue from the recovered index.
    c.put("k1", "next", None).await.unwrap();
    let kv = c.get("k1", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        kv.version(),
        before.iter().find(|b| b.0 == b"k1").unwrap().4 + 1
    );
    assert_eq!(kv.mod_revision(), rev + 1);
}
