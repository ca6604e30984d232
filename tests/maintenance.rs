//! Maintenance on one member, both engines: the quota alarm round trip (writes past
//! `--quota-backend-bytes` raise NOSPACE and are refused until compaction, defragment and
//! `alarm disarm`), `endpoint status` and `hashkv` through etcdctl.

mod common;

use std::process::Command;

use common::{grpc, Server, ENGINES};

fn etcdctl(server: &Server, args: &[&str]) -> (bool, String) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", server.host_port()))
        .args(args)
        .output()
        .expect("etcdctl is installed (Debian package etcd-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Quota of the test servers: a few dozen of the values below.
const QUOTA: &str = "2000000";
const VALUE_BYTES: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_alarm_round_trip() {
    for engine in ENGINES {
        let server = Server::start_with(engine, &["--quota-backend-bytes", QUOTA]);
        let mut c = server.client().await;
        let value = vec![b'x'; VALUE_BYTES];
        let mut refused = None;
        for i in 0..200 {
            match c.put("big", value.clone(), None).await {
                Ok(_) => {}
                Err(e) => {
                    refused = Some((i, grpc(e)));
                    break;
                }
            }
        }
        let (writes, (code, message)) =
            refused.unwrap_or_else(|| panic!("{engine}: 200 writes of 64 KiB passed a 2 MB quota"));
        assert!(writes > 5, "{engine}: refused after only {writes} writes");
        assert_eq!(code, tonic::Code::ResourceExhausted, "{engine}");
        assert_eq!(
            message, "etcdserver: mvcc: database space exceeded",
            "{engine}"
        );

        // The alarm is raised (in the background of the refused write) and stays armed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (ok, text) = etcdctl(&server, &["alarm", "list"]);
            assert!(ok, "{engine}: {text}");
            if text.contains("alarm:NOSPACE") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{engine}: no NOSPACE alarm: {text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let small = c.put("small", "v", None).await;
        assert!(
            small.is_err(),
            "{engine}: a small write while NOSPACE is raised must fail"
        );
        // Reads and deletes still work.
        assert_eq!(c.get("big", None).await.expect("get").kvs().len(), 1);

        let rev = c
            .get("big", None)
            .await
            .expect("get")
            .header()
            .unwrap()
            .revision();
        let (ok, text) = etcdctl(&server, &["compaction", &rev.to_string()]);
        assert!(ok, "{engine}: {text}");
        let (ok, text) = etcdctl(&server, &["defrag"]);
        assert!(
            ok && text.contains("Finished defragmenting"),
            "{engine}: {text}"
        );
        let (ok, text) = etcdctl(&server, &["alarm", "disarm"]);
        assert!(ok && text.contains("alarm:NOSPACE"), "{engine}: {text}");
        let (ok, text) = etcdctl(&server, &["alarm", "list"]);
        assert!(
            ok && text.trim().is_empty(),
            "{engine}: alarms left: {text}"
        );
        c.put("small", "v", None)
            .await
            .unwrap_or_else(|e| panic!("{engine}: write after disarm: {e}"));

        let (ok, text) = etcdctl(&server, &["endpoint", "status", "-w", "json"]);
        assert!(ok && text.contains("\"dbSize\""), "{engine}: {text}");
        let (ok, text) = etcdctl(&server, &["endpoint", "hashkv"]);
        assert!(ok, "{engine}: {text}");
    }
}
