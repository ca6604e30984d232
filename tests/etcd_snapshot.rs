//! etcd's snapshot file in both directions, with the real etcd 3.5.1 (scripts/etcd-reference.sh)
//! and Debian's etcdctl 3.4.23:
//! * etcd → MetaStore → etcd: etcd gets keys over several revisions, a delete, a compaction, a
//!   lease with a key, a user and a role with auth enabled; `etcdctl snapshot save` writes its
//!   file; `metastore snapshot restore` builds a data dir from it; the MetaStore member started
//!   there must serve the same keys at the same revisions, the lease, the user (by its password)
//!   and the same watch history. Then `etcdctl snapshot save` against that member writes etcd's
//!   format again, which `etcdutl snapshot restore` and a real etcd started on it must serve
//!   alike. The data fills branch and overflow pages of the bbolt files. A damaged or truncated
//!   file is refused with a clear error and no data dir.
//! * MetaStore → etcd: the same history written to MetaStore; its snapshot passes `etcdctl
//!   snapshot status` (3.5.1 and 3.4.23) and `etcdutl snapshot status` with the right revision and
//!   key count, restores into an etcd that serves the same, and restores into MetaStore too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseTimeToLiveOptions, Permission, PutOptions,
    WatchOptions,
};

const ROOT_PASSWORD: &str = "root-pw";
const USER: &str = "alice";
const USER_PASSWORD: &str = "alice-pw";

use common::etcd::{reference_dir as etcd_dir, spawn as spawn_etcd, Etcd};

/// Run a tool and return its stdout, failing the test with its stderr if it fails.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `etcdctl snapshot save` with etcd 3.5.1's etcdctl, as root.
fn snapshot_save(etcd_bin: &Path, endpoint: &str, file: &Path) {
    let out = run_ok(
        Command::new(etcd_bin.join("etcdctl"))
            .arg(format!("--endpoints={endpoint}"))
            .arg(format!("--user=root:{ROOT_PASSWORD}"))
            .args(["snapshot", "save"])
            .arg(file),
    );
    assert!(out.contains("Snapshot saved at"), "{out}");
}

/// `(revision, totalKey)` of `snapshot status -w json` by `tool` (etcdctl 3.4 or 3.5, etcdutl).
fn snapshot_status(tool: &mut Command, file: &Path) -> (i64, u64) {
    let out = run_ok(
        tool.env("ETCDCTL_API", "3")
            .args(["snapshot", "status"])
            .arg(file)
            .args(["-w", "json"]),
    );
    let status: serde_json::Value = serde_json::from_str(out.trim()).expect("status json");
    (
        status["revision"].as_i64().expect("revision"),
        status["totalKey"].as_u64().expect("totalKey"),
    )
}

/// Every record of every bucket of an etcd snapshot file, counted by our own bbolt reader.
fn records_in(file: &Path) -> u64 {
    use metastore::raft::etcd_snapshot::bbolt::{Bolt, BoltError, Entry};
    let bytes = std::fs::read(file).expect("read snapshot");
    let data = &bytes[..bytes.len() - 32];
    let bolt = Bolt::open(data, data.len() as u64).expect("a bbolt file");
    let mut names = Vec::new();
    bolt.walk(&bolt.root(), &mut |e: Entry<'_>| {
        names.push(e.key.to_vec());
        Ok::<_, BoltError>(true)
    })
    .expect("root bucket");
    let mut n = 0;
    for name in names {
        let bucket = bolt.bucket(&bolt.root(), &name).unwrap().unwrap();
        bolt.walk(&bucket, &mut |_: Entry<'_>| {
            n += 1;
            Ok::<_, BoltError>(true)
        })
        .expect("bucket");
    }
    n
}

/// etcd's tools read the file: etcdctl 3.5.1 and 3.4.23 and etcdutl 3.5.1 all report the store
/// revision and every record.
fn check_status(etcd_bin: &Path, file: &Path, head: i64) {
    let records = records_in(file);
    for mut tool in [
        Command::new(etcd_bin.join("etcdctl")),
        Command::new(etcd_bin.join("etcdutl")),
        Command::new("/usr/bin/etcdctl"),
    ] {
        let name = format!("{tool:?}");
        let (revision, keys) = snapshot_status(&mut tool, file);
        assert_eq!(revision, head, "{name}: the store revision");
        assert_eq!(keys, records, "{name}: every record");
    }
}

/// etcd's tools read `file` ([`check_status`]), and a real etcd restored from it serves what
/// `expected` says.
async fn check_in_etcd(etcd_bin: &Path, file: &Path, data: &Path, expected: &Expected) {
    check_status(etcd_bin, file, expected.head);
    let etcd = restore_into_etcd(etcd_bin, file, data);
    expected
        .check_served(&etcd.endpoint, "etcd restored from MetaStore's snapshot")
        .await;
}

/// `etcdutl snapshot restore` into a new data dir, and a real etcd 3.5.1 started on it.
fn restore_into_etcd(etcd_bin: &Path, file: &Path, data: &Path) -> Etcd {
    let peer = common::free_port();
    let url = format!("http://127.0.0.1:{peer}");
    run_ok(
        Command::new(etcd_bin.join("etcdutl"))
            .args(["snapshot", "restore"])
            .arg(file)
            .args(["--name", "e"])
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--initial-cluster=e={url}"))
            .arg(format!("--initial-advertise-peer-urls={url}")),
    );
    spawn_etcd(etcd_bin, data, peer)
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

/// Write the same history to etcd or MetaStore (no auth yet): keys over several revisions, a
/// delete, enough keys for branch pages in the `key` bucket, a value spilling over several
/// overflow pages, a lease with a key, a compaction, writes after it, users and a role with a
/// permission, then auth enabled. Returns the lease and the compaction revision.
async fn fill(c: &mut Client) -> (i64, i64) {
    c.put("k1", "v1", None).await.expect("put");
    c.put("k1", "v2", None).await.expect("put");
    c.put("k2", "gone", None).await.expect("put");
    c.delete("k2", None).await.expect("delete");
    c.put("k3", "three", None).await.expect("put");
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
    (lease, compact_at)
}

/// What a store holding [`fill`]'s history serves.
#[derive(Debug)]
struct Expected {
    head: i64,
    keys: Vec<Row>,
    history: Vec<(bool, String, String, i64)>,
    compact_at: i64,
    lease: i64,
}

impl Expected {
    /// Read it from the store that was filled.
    async fn of(endpoint: &str, lease: i64, compact_at: i64) -> Expected {
        let mut root = connect_retry(endpoint, Some(("root", ROOT_PASSWORD))).await;
        let (head, keys) = all_keys(&mut root).await;
        let history = history(&mut root, compact_at, head).await;
        assert!(
            history.iter().any(|e| !e.0) && history.len() >= 4,
            "the retained history has puts and a delete: {history:?}"
        );
        Expected {
            head,
            keys,
            history,
            compact_at,
            lease,
        }
    }

    /// Check that the store at `endpoint`, restored from a snapshot, serves it all: the same
    /// keys at the same revisions, the compaction, the lease, the users by their passwords and
    /// their permissions; then that it takes a write at the next revision.
    async fn check_served(&self, endpoint: &str, what: &str) {
        let mut root = connect_retry(endpoint, Some(("root", ROOT_PASSWORD))).await;
        let (head, keys) = all_keys(&mut root).await;
        assert_eq!(head, self.head, "{what}: the same store revision");
        assert_eq!(
            keys, self.keys,
            "{what}: the same keys, values, revisions, versions and leases"
        );
        assert_eq!(
            history(&mut root, self.compact_at, self.head).await,
            self.history,
            "{what}: watch --rev {} replays the same events",
            self.compact_at
        );
        let err = root
            .get(
                "k1",
                Some(GetOptions::new().with_revision(self.compact_at - 1)),
            )
            .await
            .expect_err("compacted");
        assert!(err.to_string().contains("compacted"), "{what}: {err}");
        let ttl = root
            .lease_time_to_live(self.lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("lease ttl");
        assert_eq!(ttl.granted_ttl(), 600, "{what}");
        // A new leader renews every lease it takes over (etcd adds an election timeout).
        // Rounded down as etcd answers: more than 590 s left, at most 602.
        assert!(
            ttl.ttl() >= 590 && ttl.ttl() <= 602,
            "{what}: {}",
            ttl.ttl()
        );
        assert_eq!(ttl.keys(), [b"leased".to_vec()], "{what}");

        let mut alice = connect(endpoint, Some((USER, USER_PASSWORD)))
            .await
            .expect("alice authenticates with her password");
        let r = alice.get("k1", None).await.expect("alice reads k1");
        assert_eq!(r.kvs()[0].value_str().unwrap(), "v3", "{what}");
        assert!(
            alice.get("leased", None).await.is_err(),
            "{what}: r1 grants only keys under k"
        );
        assert!(
            connect(endpoint, Some((USER, "wrong"))).await.is_err(),
            "{what}: a wrong password is refused"
        );
        let anonymous = connect(endpoint, None).await;
        let refused = match anonymous {
            Ok(mut c) => c.get("k1", None).await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "{what}: auth is enabled");
        let next = alice
            .put("k6", "after", None)
            .await
            .expect("write after restore");
        assert_eq!(next.header().unwrap().revision(), self.head + 1, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_goes_through_metastore_and_back_into_etcd() {
    let etcd_bin = etcd_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let etcd = spawn_etcd(
        &etcd_bin,
        &tmp.path().join("etcd-data"),
        common::free_port(),
    );
    let mut c = connect_retry(&etcd.endpoint, None).await;
    let (lease, compact_at) = fill(&mut c).await;
    let expected = Expected::of(&etcd.endpoint, lease, compact_at).await;
    let file = tmp.path().join("etcd.db");
    snapshot_save(&etcd_bin, &etcd.endpoint, &file);
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

    // etcd → MetaStore. Its own snapshot is taken before the checks write to it.
    let cluster = common::TestCluster::start_restored(1, &file);
    let member = cluster.members[0].endpoint();
    connect_retry(&member, Some(("root", ROOT_PASSWORD))).await;
    let ours = tmp.path().join("metastore.db");
    snapshot_save(&etcd_bin, member.trim_start_matches("http://"), &ours);
    expected
        .check_served(&member, "MetaStore restored from etcd")
        .await;
    drop(cluster);

    // → etcd again.
    check_in_etcd(&etcd_bin, &ours, &tmp.path().join("etcd-again"), &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metastore_snapshot_is_an_etcd_snapshot() {
    let etcd_bin = etcd_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = common::Server::start_with("rocksdb", &["--bcrypt-cost", "4"]);
    let mut c = server.client().await;
    let (lease, compact_at) = fill(&mut c).await;
    let expected = Expected::of(&server.endpoint, lease, compact_at).await;
    let file = tmp.path().join("metastore.db");
    snapshot_save(&etcd_bin, server.host_port(), &file);
    // Debian's etcdctl 3.4 saves it too, to the same bytes.
    let file_34 = tmp.path().join("metastore-34.db");
    run_ok(
        Command::new("/usr/bin/etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", server.host_port()))
            .arg(format!("--user=root:{ROOT_PASSWORD}"))
            .args(["snapshot", "save"])
            .arg(&file_34),
    );
    let bytes = std::fs::read(&file).expect("read snapshot");
    assert_eq!(bytes, std::fs::read(&file_34).expect("read snapshot"));
    assert_eq!(bytes.len() % 512, 32, "whole sectors and the hash");
    drop(c);
    drop(server);

    check_in_etcd(&etcd_bin, &file, &tmp.path().join("etcd"), &expected).await;

    // MetaStore reads its own snapshot back.
    let cluster = common::TestCluster::start_restored(1, &file);
    expected
        .check_served(&cluster.members[0].endpoint(), "MetaStore restored")
        .await;
}

/// A snapshot of tens of MB: etcdctl pings while it downloads (to size its flow-control window),
/// which must not cost it its connection (it did, and its retries never finished), and the file
/// is whole: values of a MiB each span overflow pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_downloads_whole() {
    let etcd_bin = etcd_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = common::Server::start("rocksdb");
    let mut c = server.client().await;
    let mut head = 0;
    for i in 0..64 {
        let value = vec![b'a' + (i % 26) as u8; 1024 * 1024];
        let r = c
            .put(format!("big/{i:02}"), value, None)
            .await
            .expect("put");
        head = r.header().unwrap().revision();
    }
    let file = tmp.path().join("large.db");
    // Bounded: a refused download makes etcdctl retry forever.
    let out = run_ok(
        Command::new("timeout")
            .arg("120")
            .arg(etcd_bin.join("etcdctl"))
            .arg(format!("--endpoints={}", server.host_port()))
            .args(["snapshot", "save"])
            .arg(&file),
    );
    assert!(out.contains("Snapshot saved at"), "{out}");
    let len = std::fs::metadata(&file).expect("saved").len();
    assert!(len > 64 * 1024 * 1024, "{len} bytes");
    let (revision, keys) = snapshot_status(&mut Command::new(etcd_bin.join("etcdutl")), &file);
    assert_eq!(revision, head);
    assert_eq!(keys, records_in(&file));
}

/// Debian's etcd 3.4.23 and its etcdctl (`METASTORE_ETCD34_BIN`'s directory, else where
/// scripts/etcd-3.4.sh unpacks them).
fn etcd_3_4_dir() -> PathBuf {
    let bin = match std::env::var("METASTORE_ETCD34_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(std::env::var("HOME").expect("HOME"))
            .join(".cache/metastore/etcd-3.4/usr/bin/etcd"),
    };
    let version = Command::new(&bin).arg("--version").output();
    assert!(
        version.is_ok_and(|v| String::from_utf8_lossy(&v.stdout).contains("etcd Version: 3.4.")),
        "etcd 3.4 is not at {}: run scripts/etcd-3.4.sh",
        bin.display()
    );
    bin.parent().unwrap().to_path_buf()
}

/// The same round trip with etcd 3.4.23 at both ends: its snapshot (written by its own etcdctl)
/// restores into MetaStore, which serves the same history, users and lease; MetaStore's snapshot
/// restores with etcd 3.4's own `etcdctl snapshot restore` into an etcd 3.4.23 that serves them
/// alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_3_4_snapshot_goes_through_metastore_and_back_into_etcd_3_4() {
    let etcd34 = etcd_3_4_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let etcd = spawn_etcd(
        &etcd34,
        &tmp.path().join("etcd34-data"),
        common::free_port(),
    );
    let mut c = connect_retry(&etcd.endpoint, None).await;
    let (lease, compact_at) = fill(&mut c).await;
    let expected = Expected::of(&etcd.endpoint, lease, compact_at).await;
    let file = tmp.path().join("etcd34.db");
    snapshot_save(&etcd34, &etcd.endpoint, &file);
    drop(c);
    drop(etcd);

    let cluster = common::TestCluster::start_restored(1, &file);
    let member = cluster.members[0].endpoint();
    connect_retry(&member, Some(("root", ROOT_PASSWORD))).await;
    let ours = tmp.path().join("metastore.db");
    snapshot_save(&etcd34, member.trim_start_matches("http://"), &ours);
    expected
        .check_served(&member, "MetaStore restored from etcd 3.4.23")
        .await;
    drop(cluster);

    check_status(&etcd_dir(), &ours, expected.head);
    let data = tmp.path().join("etcd34-again");
    let peer = common::free_port();
    let url = format!("http://127.0.0.1:{peer}");
    run_ok(
        Command::new(etcd34.join("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&ours)
            .args(["--name", "e"])
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--initial-cluster=e={url}"))
            .arg(format!("--initial-advertise-peer-urls={url}")),
    );
    let etcd = spawn_etcd(&etcd34, &data, peer);
    expected
        .check_served(
            &etcd.endpoint,
            "etcd 3.4.23 restored from MetaStore's snapshot",
        )
        .await;
}
