//! `metastore bench k8s` end to end against a real server: every operation kind runs, the
//! workload's own consistency checks pass, and what it leaves behind is what kube-apiserver leaves
//! (objects under `/registry/`, events on leases of TTL 3660 s, `compact_rev_key`, a compaction).

mod common;

use std::process::Command;

use etcd_client::GetOptions;

/// The table rows of the report: op name → (count, conflicts, errors).
fn rows(stdout: &str) -> Vec<(String, u64, u64, u64)> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 8 && f[0] != "op")
        .map(|f| {
            let n = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
            (f[0].to_string(), n(f[1]), n(f[6]), n(f[7]))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn k8s_workload_runs_every_operation_and_its_checks_pass() {
    let server = common::Server::start("rocksdb");
    let out = Command::new(common::metastore_bin())
        .args([
            "bench",
            "k8s",
            "--endpoints",
            server.host_port(),
            "--objects",
            "300",
            "--duration-secs",
            "4",
            "--clients",
            "8",
            "--conns",
            "2",
            "--compact-interval-secs",
            "1",
            "--progress-interval-ms",
            "200",
            "--events-per-lease",
            "5",
            "--list-limit",
            "7",
            "--mix",
            "create=10,update=10,delete=10,get=10,list=10,list-all=10,count=10,event=10",
        ])
        .output()
        .expect("run metastore bench k8s");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("Listed: 300 objects before timing"),
        "{stdout}"
    );
    assert!(stdout.contains("Consistency:  ok"), "{stdout}");
    assert!(stdout.contains("Errors:       0"), "{stdout}");
    assert!(
        stdout.contains(" 0 acknowledged writes missing"),
        "{stdout}"
    );
    let rows = rows(&stdout);
    for op in [
        "create",
        "update",
        "delete",
        "get",
        "list",
        "list-all",
        "count",
        "event",
        "lease-grant",
        "compact",
    ] {
        let row = rows.iter().find(|r| r.0 == op);
        assert!(
            row.is_some_and(|r| r.1 > 0 && r.3 == 0),
            "{op}: {row:?}\n{stdout}"
        );
    }

    let mut client = server.client().await;
    // The objects and the events are there; an event is attached to a lease of TTL 3660 s.
    let objects = client
        .get(
            "/registry/pods/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert!(objects.count() > 0);
    let events = client
        .get(
            "/registry/events/",
            Some(GetOptions::new().with_prefix().with_limit(1)),
        )
        .await
        .expect("events");
    let lease = events.kvs().first().expect("an event").lease();
    assert_ne!(lease, 0);
    let ttl = client
        .lease_time_to_live(lease, None)
        .await
        .expect("lease ttl");
    assert_eq!(ttl.granted_ttl(), 3660);
    assert!(ttl.ttl() > 3600, "{}", ttl.ttl());
    // The compactor agreed on its schedule through compact_rev_key and compacted.
    let key = client.get("compact_rev_key", None).await.expect("get");
    assert!(key.kvs().first().is_some_and(|kv| kv.version() >= 2));
    let old = client
        .get(
            "/registry/pods/",
            Some(GetOptions::new().with_prefix().with_revision(2)),
        )
        .await;
    let err = old.expect_err("revision 2 is compacted");
    assert!(err.to_string().contains("compacted"), "{err}");
}
