//! Hostile and careless clients against the real binary (issue 15): each attack asserts that the
//! member stays up, its RSS stays within budget, a well-behaved client keeps its latency, and what
//! the attacker started is gone within a second of it leaving.

mod common;

use common::abuse::{
    assert_p99_within, assert_survived, back_to_baseline, p99, probe_latencies, rss_kib,
    settled_footprint, CLEANUP_DEADLINE,
};
use common::Server;

/// Election.Observe calls whose clients went away end with them: no watcher, no task left; while
/// they are open a well-behaved client keeps its latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_observe_calls_leave_nothing_behind() {
    const ELECTIONS: usize = 7;
    let mut server = Server::start("memory");
    let mut client = server.client().await;
    client.put("abuse/probe", "v", None).await.expect("put");
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    for e in 0..ELECTIONS {
        client
            .campaign(format!("abuse-election-{e}"), "leader", lease)
            .await
            .expect("campaign");
    }
    let mut quiet = probe_latencies(&mut client, 200).await;
    let quiet = p99(&mut quiet);
    let baseline = settled_footprint(&server.endpoint).await;
    let rss_before = rss_kib(server.pid());
    for round in 0..10 {
        let mut streams = Vec::new();
        for i in 0..1000 {
            let mut c = client.clone();
            let name = format!("abuse-election-{}", (round * 1000 + i) % ELECTIONS);
            streams.push(tokio::spawn(async move {
                let mut s = c.observe(name).await.expect("observe");
                // Each stream reports the current leader first; then it sits idle.
                s.message()
                    .await
                    .expect("observe message")
                    .expect("a leader");
                s
            }));
        }
        let mut opened = Vec::new();
        for s in streams {
            opened.push(s.await.expect("join"));
        }
        let mut attacked = probe_latencies(&mut client, 100).await;
        assert_p99_within(quiet, p99(&mut attacked));
        drop(opened);
    }
    assert_survived(&mut server, rss_before);
    // The probe's own connection may hold a task or two of its own.
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
}
