//! Closing watch streams frees their watchers: many streams are opened and dropped against an
//! in-process member, and the watcher gauge returns to zero.

use std::net::SocketAddr;
use std::time::Duration;

use metastore::api::{self, Shutdown};
use metastore::config::{EngineKind, ServerConfig};
use metastore::node::Node;
use metastore::storage::MemoryEngine;

// The binary's allocator, which gives freed memory back to the system more readily than glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 10;
const STREAMS_PER_CLIENT: usize = 1000;
const ROUNDS: usize = 2;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_free_every_watcher() {
    let config = ServerConfig {
        engine: EngineKind::Memory,
        ..ServerConfig::default()
    };
    let node = Node::start(config, std::sync::Arc::new(MemoryEngine::new()))
        .await
        .expect("start");
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let addr_tx = std::sync::Mutex::new(Some(addr_tx));
    let shutdown = Shutdown::new();
    let server = tokio::spawn(api::serve(
        node.clone(),
        vec!["127.0.0.1:0".parse().unwrap()],
        shutdown.clone(),
        move |a| {
            if let Some(tx) = addr_tx.lock().unwrap().take() {
                let _ = tx.send(a);
            }
        },
    ));
    let endpoint = format!("http://{}", addr_rx.await.expect("bound address"));
    let hub = node.watch_hub().clone();

    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    // The baseline is the settled member's: once it leads (a read index works) and its task count
    // has held still for a second (tasks that start with leadership or end once the member's
    // attributes are published must not be mistaken for, or hide, tasks left by closed streams).
    let settle = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.linearize().await.is_err() {
        assert!(
            tokio::time::Instant::now() < settle,
            "no leader within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut last, mut still_since) = (tasks(), tokio::time::Instant::now());
    while still_since.elapsed() < Duration::from_secs(1) && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tasks() != last {
            (last, still_since) = (tasks(), tokio::time::Instant::now());
        }
    }
    let baseline_tasks = tasks();
    let mut rss_after_round = Vec::new();
    for round in 0..ROUNDS {
        let mut clients = Vec::new();
        let mut streams = Vec::new();
        for _ in 0..CLIENTS {
            let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
                .await
                .expect("connect");
            for i in 0..STREAMS_PER_CLIENT {
                let mut s = c.watch(format!("key/{i}"), None).await.expect("watch");
                assert!(s.message().await.expect("ok").expect("open").created());
                streams.push(s);
            }
            clients.push(c);
        }
        assert_eq!(
            hub.watcher_count(),
            CLIENTS * STREAMS_PER_CLIENT,
            "round {round}"
        );
        drop(streams);
        drop(clients);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while (hub.watcher_count() > 0 || tasks() > baseline_tasks)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            hub.watcher_count(),
            0,
            "round {round}: every watcher of a closed stream is gone"
        );
        // The client library keeps one background task of its own after first use; anything
        // beyond that would be a task left behind by a closed stream.
        assert!(
            tasks() <= baseline_tasks + 1,
            "round {round}: {} tasks alive, {baseline_tasks} before",
            tasks()
        );
        rss_after_round.push(rss_kib());
    }
    eprintln!(
        "rss after each round of {} streams (KiB): {rss_after_round:?}",
        CLIENTS * STREAMS_PER_CLIENT
    );
    // Memory must not grow with the number of streams ever opened: the last round ends no higher
    // than the first (plus allocator slack).
    let (first, last) = (rss_after_round[0], rss_after_round[ROUNDS - 1]);
    assert!(
        last <= first + first / 4,
        "memory grows with streams opened: {rss_after_round:?} KiB"
    );

    shutdown.trigger();
    let _ = server.await;
    node.shutdown().await;
}
