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

/// A member binds its client port before it opens its store, as etcd does: a client that connects
/// while a restarted member reads its records is queued by the kernel, not refused, and answered
/// once the member serves. (Refused, a gRPC client waits out its reconnect backoff, 1 s and
/// growing, after the member is back.)
#[tokio::test]
async fn a_client_connecting_while_the_store_opens_is_answered_not_refused() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let mut server = Server::start_with("rocksdb", &["--max-txn-ops", "10000"]);
    let mut c = server.client().await;
    // Enough records that opening the store (the key index is rebuilt from every one) takes a
    // while: 200,000 keys in 20 transactions.
    for batch in 0..20 {
        let puts: Vec<_> = (0..10_000)
            .map(|i| etcd_client::TxnOp::put(format!("k{batch:02}-{i:05}"), [b'v'; 64], None))
            .collect();
        c.txn(etcd_client::Txn::new().and_then(puts))
            .await
            .expect("load");
    }
    drop(c);
    server.kill9();

    let port = common::free_port();
    let mut child = std::process::Command::new(common::metastore_bin())
        .args(["--name", "test", "--engine", "rocksdb"])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&server.data_dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn metastore");
    let stdout = child.stdout.take().expect("stdout");
    // Killed however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Killed(child);
    // When the member said it serves its client port.
    let serving = Arc::new(std::sync::OnceLock::<Instant>::new());
    let said = serving.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("metastore: serving client requests on ") {
                let _ = said.set(Instant::now());
            }
        }
    });
    let give_up = Instant::now() + Duration::from_secs(60);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(conn) => break conn,
            Err(e) => {
                assert!(
                    Instant::now() < give_up,
                    "the port never took a connection: {e}"
                );
                assert!(
                    serving.get().is_none(),
                    "the member served before its port took a connection: {e}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let connected = Instant::now();
    assert!(
        serving.get().is_none(),
        "the port took its first connection only once the member served"
    );
    // The connection made while the store opened is answered once the member serves.
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("an answer");
    // (The line is written before the member serves; this thread may read it a little later.)
    while serving.get().is_none() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(1));
    }
    let served = *serving.get().expect("the member said it serves");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(r#""health":"true""#),
        "{answer}"
    );
    eprintln!(
        "connected {:?} before the member served",
        served.duration_since(connected)
    );
}
