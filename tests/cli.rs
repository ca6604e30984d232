//! The `metastore` command line: help, flag errors, and the benchmark client.

mod common;

use std::process::Command;

fn metastore(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(args)
        .output()
        .expect("run metastore")
}

#[test]
fn help_documents_etcd_flags() {
    let out = metastore(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--name",
        "--data-dir",
        "--listen-client-urls",
        "--advertise-client-urls",
        "--engine",
        "--max-request-bytes",
        "--max-txn-ops",
        "--quota-backend-bytes",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    assert!(
        help.contains("1572864"),
        "default max request bytes is 1.5 MiB"
    );
    assert!(help.contains("rocksdb") && help.contains("memory"));
}

#[test]
fn bad_flags_fail_clearly() {
    let out = metastore(&["--no-such-flag"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = metastore(&["--engine", "bolt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bolt"));
    let out = metastore(&["--listen-client-urls", "not-a-url", "--engine", "memory"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid URL"));
    let out = metastore(&["--max-txn-ops", "0", "--engine", "memory"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-txn-ops"));
    // A memory engine forgets raft votes and log on restart: a cluster member may not use it.
    let out = metastore(&[
        "--engine",
        "memory",
        "--name",
        "a",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:12380",
        "--initial-cluster",
        "a=http://127.0.0.1:12380,b=http://127.0.0.1:22380,c=http://127.0.0.1:32380",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--engine memory") && stderr.contains("3-member cluster"),
        "{stderr}"
    );
}

#[test]
fn bench_runs_every_workload_against_a_server() {
    let server = common::Server::start("memory");
    for (workload, extra) in [
        ("put", vec!["--key-space-size", "100"]),
        ("range", vec!["--consistency", "s"]),
        ("range", vec![]),
        ("txn", vec![]),
        (
            "watch",
            vec![
                "--streams",
                "2",
                "--watchers-per-stream",
                "3",
                "--put-rate",
                "400",
            ],
        ),
        ("lease-keepalive", vec![]),
        // The keys the put workload wrote: whole, streamed, and keys-only under a prefix.
        ("list", vec![]),
        ("list", vec!["--stream"]),
        (
            "list",
            vec!["--stream", "--keys-only", "--list-prefix", "0"],
        ),
    ] {
        let mut args = vec![
            "bench",
            workload,
            "--endpoints",
            server.host_port(),
            "--total",
            "200",
            "--clients",
            "4",
            "--conns",
            "2",
        ];
        args.extend(extra);
        let out = metastore(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "bench {workload}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("Requests/sec") && stdout.contains("Errors:       0"),
            "{stdout}"
        );
    }
    // The writes really happened.
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={}", server.host_port()),
            "get",
            "0",
            "--prefix",
            "--keys-only",
            "-w",
            "json",
        ])
        .output()
        .expect("etcdctl");
    let json = String::from_utf8_lossy(&out.stdout);
    let count: u64 = json
        .split("\"count\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        count > 50 && count <= 100,
        "200 puts over a key space of 100 wrote {count} keys: {json}"
    );
}
