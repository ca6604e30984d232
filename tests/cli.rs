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

/// A server binary started with nothing but `vars` in its environment (and `args` on its command
/// line), killed on drop.
struct Configured(std::process::Child);

impl Drop for Configured {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_configured(bin: &std::path::Path, vars: &[(String, String)], args: &[&str]) -> Configured {
    let child = Command::new(bin)
        .env_clear()
        .envs(vars.iter().cloned())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the server");
    Configured(child)
}

/// The same etcd variables, given to etcd 3.5.1 and to MetaStore.
fn etcd_variables(dir: &std::path::Path) -> (Vec<(String, String)>, String) {
    let client = format!("127.0.0.1:{}", common::free_port());
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let vars = [
        ("ETCD_NAME", "from-env".to_string()),
        ("ETCD_DATA_DIR", dir.display().to_string()),
        ("ETCD_LISTEN_CLIENT_URLS", format!("http://{client}")),
        ("ETCD_ADVERTISE_CLIENT_URLS", format!("http://{client}")),
        ("ETCD_LISTEN_PEER_URLS", peer.clone()),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer.clone()),
        ("ETCD_INITIAL_CLUSTER", format!("from-env={peer}")),
        ("ETCD_MAX_TXN_OPS", "3".to_string()),
        // Named nothing etcd knows: both log it and go on.
        ("ETCD_NOT_A_FLAG", "1".to_string()),
    ];
    let vars = vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    (vars, client)
}

/// What a server configured by [`etcd_variables`] shows of that configuration: its member's
/// name, and how a txn of 4 operations (past `ETCD_MAX_TXN_OPS`) is answered.
async fn configuration_seen(endpoint: &str) -> (String, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut client = loop {
        if let Ok(mut c) = etcd_client::Client::connect([endpoint], None).await {
            if c.status().await.is_ok() {
                break c;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{endpoint} did not answer within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let members = client.member_list().await.expect("member list");
    let name = members.members()[0].name().to_string();
    let ops: Vec<etcd_client::TxnOp> = (0..4)
        .map(|i| etcd_client::TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let txn = client
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .map(|_| "applied".to_string())
        .unwrap_or_else(|e| format!("{:?}", common::grpc(e)));
    (name, txn)
}

/// etcd's `ETCD_*` variables configure MetaStore as they configure etcd 3.5.1: a member set up by
/// nothing but variables serves where they say, under the name and limits they give, on the data
/// dir they name; a variable that an explicit flag shadows stops both; a variable that names
/// an etcd setting MetaStore does not serve stops MetaStore instead of being dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_variables_configure_a_member_as_they_configure_etcd() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etcd_bin = common::etcd::reference_dir().join("etcd");
    let ours_bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_metastore"));
    let mut seen = Vec::new();
    for (who, bin) in [("etcd", &etcd_bin), ("metastore", &ours_bin)] {
        let dir = tmp.path().join(who);
        let (vars, client) = etcd_variables(&dir);
        let _server = start_configured(bin, &vars, &[]);
        seen.push(configuration_seen(&format!("http://{client}")).await);
        assert!(dir.is_dir(), "{who} keeps its data in ETCD_DATA_DIR");
    }
    assert_eq!(seen[0].0, "from-env");
    assert!(seen[0].1.contains("too many operations"), "{:?}", seen[0]);
    assert_eq!(seen[1], seen[0], "MetaStore configured as etcd");

    for (who, bin) in [("etcd", &etcd_bin), ("metastore", &ours_bin)] {
        let (vars, _) = etcd_variables(&tmp.path().join(format!("{who}-shadowed")));
        let (status, stderr) = run_to_exit(bin, &vars, &["--name", "from-flag"], who);
        assert!(!status.success(), "{who} started with a shadowed variable");
        assert!(
            stderr.contains("conflicting environment variable") && stderr.contains("ETCD_NAME"),
            "{who}: {stderr}"
        );
    }

    let (mut vars, _) = etcd_variables(&tmp.path().join("unserved"));
    vars.push(("ETCD_FORCE_NEW_CLUSTER".into(), "true".into()));
    let out = Command::new(&ours_bin)
        .env_clear()
        .envs(vars)
        .output()
        .expect("run metastore");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--force-new-cluster"), "{stderr}");
}

/// Run `bin` as [`start_configured`] does, expecting it to exit by itself within 20 s: its exit
/// status and what it wrote to stderr.
fn run_to_exit(
    bin: &std::path::Path,
    vars: &[(String, String)],
    args: &[&str],
    who: &str,
) -> (std::process::ExitStatus, String) {
    let mut server = start_configured(bin, vars, args);
    let status = common::exit_within(&mut server.0, std::time::Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{who} kept running with a shadowed variable"));
    let mut stderr = String::new();
    std::io::Read::read_to_string(server.0.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("stderr");
    (status, stderr)
}
