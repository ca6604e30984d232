//! The etcd 3.6 / 3.7 API points: `StatusResponse.storageVersion`, `dbSizeQuota` and
//! `downgradeInfo`, `HashKVResponse.hash_revision`, `SnapshotResponse.version`, the `Downgrade`
//! RPC (every action and error, on one member and on a 3-member cluster, across restarts and raft
//! snapshots, over gRPC and the JSON gateway) and `AuthStatus` without a token (3.7). etcd 3.5.1 is the oracle
//! where it already answers the same way (how a downgrade target is read, the auth checks around
//! `AuthStatus`); where MetaStore follows 3.6 or 3.7 instead, the test says what 3.5.1 answers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, TestCluster};
use futures::StreamExt;
use metastore::pb::etcdserverpb::auth_client::AuthClient;
use metastore::pb::etcdserverpb::downgrade_request::DowngradeAction;
use metastore::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use metastore::pb::etcdserverpb::{
    AuthStatusRequest, AuthStatusResponse, DowngradeInfo, DowngradeRequest, DowngradeResponse,
    HashKvRequest, SnapshotRequest, StatusRequest, StatusResponse,
};
use tonic::Code;

/// The etcd release MetaStore serves, its cluster version and the one a downgrade may target.
const SERVER: &str = "3.7.0";
const CLUSTER: &str = "3.7";
const TARGET: &str = "3.6";

async fn maintenance(endpoint: &str) -> MaintenanceClient<tonic::transport::Channel> {
    MaintenanceClient::connect(endpoint.to_string())
        .await
        .expect("connect")
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("token", token.parse().expect("ascii token"));
    }
    request
}

async fn status(endpoint: &str) -> StatusResponse {
    maintenance(endpoint)
        .await
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

async fn downgrade_as(
    endpoint: &str,
    action: i32,
    version: &str,
    token: Option<&str>,
) -> Result<DowngradeResponse, (Code, String)> {
    let request = DowngradeRequest {
        action,
        version: version.to_string(),
    };
    maintenance(endpoint)
        .await
        .downgrade(with_token(request, token))
        .await
        .map(|r| r.into_inner())
        .map_err(|s| (s.code(), s.message().to_string()))
}

async fn downgrade(
    endpoint: &str,
    action: DowngradeAction,
    version: &str,
) -> Result<String, (Code, String)> {
    downgrade_as(endpoint, action as i32, version, None)
        .await
        .map(|r| {
            let header = r.header.expect("a Downgrade answer has a header");
            assert!(header.cluster_id != 0 && header.member_id != 0 && header.revision > 0);
            r.version
        })
}

use DowngradeAction::{Cancel, Enable, Validate};

fn wrong_format() -> Result<String, (Code, String)> {
    Err((
        Code::InvalidArgument,
        "etcdserver: wrong downgrade target version format".into(),
    ))
}

fn invalid_target() -> Result<String, (Code, String)> {
    Err((
        Code::InvalidArgument,
        "etcdserver: invalid downgrade target version".into(),
    ))
}

fn in_progress() -> Result<String, (Code, String)> {
    Err((
        Code::FailedPrecondition,
        "etcdserver: cluster has a downgrade job in progress".into(),
    ))
}

fn ok(version: &str) -> Result<String, (Code, String)> {
    Ok(version.to_string())
}

fn disabled() -> Option<DowngradeInfo> {
    Some(DowngradeInfo {
        enabled: false,
        target_version: String::new(),
    })
}

fn enabled() -> Option<DowngradeInfo> {
    Some(DowngradeInfo {
        enabled: true,
        target_version: format!("{TARGET}.0"),
    })
}

/// `(downgradeInfo, storageVersion, version)` of a member's Status.
async fn versions(endpoint: &str) -> (Option<DowngradeInfo>, String, String) {
    let s = status(endpoint).await;
    (s.downgrade_info, s.storage_version, s.version)
}

fn downgraded() -> (Option<DowngradeInfo>, String, String) {
    (enabled(), format!("{TARGET}.0"), SERVER.into())
}

fn not_downgraded() -> (Option<DowngradeInfo>, String, String) {
    (disabled(), SERVER.into(), SERVER.into())
}

/// `POST` `body` to the JSON gateway at `path`: the answer's body.
fn gateway(endpoint: &str, path: &str, body: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-X", "POST", "-d", body])
        .arg(format!("{endpoint}{path}"))
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `/version`'s `etcdcluster`.
fn http_cluster_version(endpoint: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .arg(format!("{endpoint}/version"))
        .output()
        .expect("curl must be installed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["etcdserver"], SERVER);
    v["etcdcluster"].as_str().expect("etcdcluster").to_string()
}

/// Whether `/metrics` names `version` as the cluster version (and 3.7.0 as the server's).
fn metrics_cluster_version(endpoint: &str, version: &str) -> bool {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .arg(format!("{endpoint}/metrics"))
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!(
            "etcd_server_version{{server_version=\"{SERVER}\"}} 1\n"
        )),
        "{text}"
    );
    text.lines()
        .filter(|l| l.starts_with("etcd_cluster_version{"))
        .map(str::to_string)
        .collect::<Vec<_>>()
        == [format!(
            "etcd_cluster_version{{cluster_version=\"{version}\"}} 1"
        )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_hashkv_and_snapshot_carry_the_3_6_fields() {
    let server = Server::start_with("rocksdb", &["--quota-backend-bytes", "123456789"]);
    let s = status(&server.endpoint).await;
    assert_eq!(s.version, SERVER);
    assert_eq!(s.storage_version, SERVER, "the cluster version, patch 0");
    assert_eq!(s.db_size_quota, 123_456_789);
    assert_eq!(s.downgrade_info, disabled());
    assert_eq!(http_cluster_version(&server.endpoint), SERVER);
    assert!(metrics_cluster_version(&server.endpoint, CLUSTER));

    // Without the flag: etcd's default quota, 2 GiB, as etcd 3.6 reports it.
    let default = Server::start("memory");
    assert_eq!(status(&default.endpoint).await.db_size_quota, 2 << 30);

    let mut c = server.client().await;
    for i in 0..5 {
        c.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let head = c
        .get("k0", None)
        .await
        .expect("get")
        .header()
        .unwrap()
        .revision();
    c.compact(2, None).await.expect("compact");
    let mut m = maintenance(&server.endpoint).await;
    let hash_kv = |revision| HashKvRequest { revision };
    let at_head = m.hash_kv(hash_kv(0)).await.expect("hashkv").into_inner();
    assert_eq!(at_head.hash_revision, head, "revision 0 hashes the head");
    assert_eq!(at_head.compact_revision, 2);
    let at_4 = m.hash_kv(hash_kv(4)).await.expect("hashkv").into_inner();
    assert_eq!(at_4.hash_revision, 4);
    assert_ne!(
        at_4.hash, at_head.hash,
        "a different revision, a different hash"
    );
    let again = m.hash_kv(hash_kv(head)).await.expect("hashkv").into_inner();
    assert_eq!((again.hash, again.hash_revision), (at_head.hash, head));
    // The gateway's etcd 3.6 path for HashKV.
    let json = gateway(
        &server.endpoint,
        "/v3/maintenance/hashkv",
        r#"{"revision":"4"}"#,
    );
    assert_eq!(json["hash_revision"], "4", "{json}");
    assert_eq!(json["hash"], at_4.hash, "{json}");

    // Every chunk of a snapshot names the etcd schema of the file: etcd 3.5's, which etcd 3.5
    // and later restore.
    let mut chunks = m
        .snapshot(SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut count = 0;
    while let Some(chunk) = chunks.next().await {
        assert_eq!(chunk.expect("chunk").version, "3.5.0");
        count += 1;
    }
    assert!(count > 1, "a snapshot and its checksum");
}

/// Every action and error of `Downgrade` on one member, across a restart, over gRPC and the JSON
/// gateway, and its auth check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_on_one_member() {
    let mut server = Server::start("rocksdb");
    let e = server.endpoint.clone();

    // What etcd checks before it looks at the cluster: the action, then the target's format.
    assert_eq!(
        downgrade_as(&e, 7, TARGET, None).await.map(|r| r.version),
        Err((Code::Unknown, "etcdserver: unknown method".into()))
    );
    for bad in ["", "x", "v3.6", "3.6.0.1", "3", "3.6-rc"] {
        assert_eq!(
            downgrade(&e, Validate, bad).await,
            wrong_format(),
            "{bad:?}"
        );
        assert_eq!(downgrade(&e, Enable, bad).await, wrong_format(), "{bad:?}");
    }
    // A cancel's version is never read.
    assert_eq!(downgrade(&e, Cancel, "x").await, ok(CLUSTER));

    // Only one minor down.
    for target in ["3.7", "3.7.0", "3.5", "3.8", "4.6", "2.6"] {
        assert_eq!(
            downgrade(&e, Validate, target).await,
            invalid_target(),
            "{target}"
        );
        assert_eq!(
            downgrade(&e, Enable, target).await,
            invalid_target(),
            "{target}"
        );
    }
    for target in ["3.6", "3.6.0", "3.6.9", "03.06", "3.6.1-rc.0+x"] {
        assert_eq!(
            downgrade(&e, Validate, target).await,
            ok(CLUSTER),
            "{target}"
        );
    }
    // Validating changes nothing; cancelling with nothing to cancel succeeds, as in etcd 3.6.
    assert_eq!(versions(&e).await, not_downgraded());
    assert_eq!(downgrade(&e, Cancel, "").await, ok(CLUSTER));
    assert_eq!(versions(&e).await, not_downgraded());

    // Enable: the answer carries the cluster version before; the cluster version and the storage
    // version are the target from then on, the server version stays.
    assert_eq!(downgrade(&e, Enable, "3.6.2").await, ok(CLUSTER));
    assert_eq!(versions(&e).await, downgraded());
    assert_eq!(http_cluster_version(&e), format!("{TARGET}.0"));
    assert!(metrics_cluster_version(&e, TARGET));
    // Now the only next step would be 3.5, which the downgrade in progress holds back.
    assert_eq!(downgrade(&e, Validate, TARGET).await, invalid_target());
    assert_eq!(downgrade(&e, Enable, TARGET).await, invalid_target());
    assert_eq!(downgrade(&e, Validate, "3.5").await, in_progress());
    assert_eq!(downgrade(&e, Enable, "3.5").await, in_progress());
    assert_eq!(versions(&e).await, downgraded());

    // The setting is stored: a restart keeps it.
    server.restart();
    let e = server.endpoint.clone();
    assert_eq!(versions(&e).await, downgraded());
    assert_eq!(downgrade(&e, Validate, "3.5").await, in_progress());

    // Over the JSON gateway: the same answers (etcd's path since 3.5).
    let json = gateway(&e, "/v3/maintenance/downgrade", r#"{"action":"CANCEL"}"#);
    assert_eq!(json["version"], TARGET, "{json}");
    assert_eq!(versions(&e).await, not_downgraded());
    let json = gateway(
        &e,
        "/v3/maintenance/downgrade",
        r#"{"action":"VALIDATE","version":"3.6"}"#,
    );
    assert_eq!(json["version"], CLUSTER, "{json}");
    let json = gateway(
        &e,
        "/v3/maintenance/downgrade",
        r#"{"action":"ENABLE","version":"x"}"#,
    );
    assert_eq!(
        json["message"], "etcdserver: wrong downgrade target version format",
        "{json}"
    );
    assert_eq!(json["code"], 3, "{json}");
    let json = gateway(
        &e,
        "/v3/maintenance/downgrade",
        r#"{"action":"ENABLE","version":"3.6"}"#,
    );
    assert_eq!(json["version"], CLUSTER, "{json}");
    assert_eq!(
        gateway(&e, "/v3/maintenance/status", "{}")["downgradeInfo"],
        serde_json::json!({"enabled": true, "targetVersion": "3.6.0"})
    );
    assert_eq!(downgrade(&e, Cancel, "").await, ok(TARGET));
    assert_eq!(downgrade(&e, Cancel, "").await, ok(CLUSTER));
    server.restart();
    assert_eq!(versions(&server.endpoint).await, not_downgraded());

    // With auth enabled, root only (etcd 3.6's isPermitted, with etcd's codes).
    let e = server.endpoint.clone();
    let mut c = server.client().await;
    c.user_add("root", "rootpw", None).await.expect("user add");
    c.user_grant_role("root", "root").await.expect("grant");
    c.user_add("u", "upw", None).await.expect("user add");
    c.auth_enable().await.expect("auth enable");
    let root = token(&e, "root", "rootpw").await;
    let user = token(&e, "u", "upw").await;
    let validate = Validate as i32;
    assert_eq!(
        downgrade_as(&e, validate, TARGET, None)
            .await
            .map(|r| r.version),
        Err((
            Code::InvalidArgument,
            "etcdserver: user name is empty".into()
        ))
    );
    assert_eq!(
        downgrade_as(&e, validate, TARGET, Some(&user))
            .await
            .map(|r| r.version),
        Err((
            Code::PermissionDenied,
            "etcdserver: permission denied".into()
        ))
    );
    assert_eq!(
        downgrade_as(&e, validate, TARGET, Some("bogus"))
            .await
            .map(|r| r.version),
        Err((
            Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        ))
    );
    assert_eq!(
        downgrade_as(&e, validate, TARGET, Some(&root))
            .await
            .map(|r| r.version),
        ok(CLUSTER)
    );
}

async fn token(endpoint: &str, user: &str, password: &str) -> String {
    let c = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect");
    c.auth_client()
        .authenticate(user.into(), password.into())
        .await
        .expect("login")
        .token()
        .to_string()
}

/// Wait (bounded) until every running member of `cluster` reports `want` in its Status.
async fn until_all_report(cluster: &TestCluster, want: (Option<DowngradeInfo>, String, String)) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for endpoint in cluster.endpoints() {
        loop {
            let got = versions(&endpoint).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint}: {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// On a 3-member cluster: a downgrade enabled through one member shows on every member, is
/// refused as in progress everywhere, survives every member's restart, and is cancelled through
/// another; of two enables racing through different members exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_on_a_cluster() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    until_all_report(&cluster, not_downgraded()).await;

    // Enabled through a follower (forwarded to the leader).
    let via = cluster.members[follower].endpoint();
    assert_eq!(downgrade(&via, Enable, TARGET).await, ok(CLUSTER));
    // The member that answered has applied it.
    assert_eq!(versions(&via).await, downgraded());
    until_all_report(&cluster, downgraded()).await;
    for endpoint in cluster.endpoints() {
        assert_eq!(downgrade(&endpoint, Validate, "3.5").await, in_progress());
        assert_eq!(downgrade(&endpoint, Enable, TARGET).await, invalid_target());
    }

    // Every member restarted, one at a time and then all at once: still enabled.
    cluster.members[other].restart();
    cluster.members[leader].restart();
    cluster.leader().await;
    until_all_report(&cluster, downgraded()).await;
    for m in &mut cluster.members {
        m.kill9();
    }
    for m in &mut cluster.members {
        m.restart();
    }
    cluster.leader().await;
    until_all_report(&cluster, downgraded()).await;

    // Cancelled through another member than the one that enabled it.
    let via = cluster.members[other].endpoint();
    assert_eq!(downgrade(&via, Cancel, "").await, ok(TARGET));
    assert_eq!(versions(&via).await, not_downgraded());
    until_all_report(&cluster, not_downgraded()).await;

    // Two enables racing through two members: the state machine takes one; the other is refused
    // (at the edge or at apply) as the downgrade in progress makes it.
    let a = cluster.members[follower].endpoint();
    let b = cluster.members[other].endpoint();
    let (ra, rb) = tokio::join!(downgrade(&a, Enable, TARGET), downgrade(&b, Enable, TARGET));
    let results = [ra, rb];
    assert_eq!(
        results.iter().filter(|r| **r == ok(CLUSTER)).count(),
        1,
        "{results:?}"
    );
    for r in results.iter().filter(|r| **r != ok(CLUSTER)) {
        assert!(*r == invalid_target() || *r == in_progress(), "{r:?}");
    }
    until_all_report(&cluster, downgraded()).await;
    // And two racing cancels both succeed (etcd 3.6 answers a cancel with nothing left to
    // cancel as a success), leaving it cancelled.
    let (ra, rb) = tokio::join!(downgrade(&a, Cancel, ""), downgrade(&b, Cancel, ""));
    assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
    until_all_report(&cluster, not_downgraded()).await;
}

/// How a downgrade target is read, against etcd 3.5.1 (whose `Downgrade` VALIDATE reads it as
/// 3.6 does): the same strings are refused as malformed. (3.5.1 is no oracle beyond that: its
/// cluster version is 3.5, its ENABLE times out without an answer, and its CANCEL with nothing to
/// cancel fails where 3.6's succeeds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_targets_are_read_as_etcd_reads_them() {
    let data = tempfile::tempdir().expect("tempdir");
    let etcd = common::etcd::spawn(
        &common::etcd::reference_dir(),
        &data.path().join("e"),
        common::free_port(),
    );
    let etcd_endpoint = format!("http://{}", etcd.endpoint);
    let server = Server::start("memory");
    let deadline = Instant::now() + Duration::from_secs(20);
    let validate = |endpoint: String, version: &'static str| async move {
        downgrade_as(&endpoint, Validate as i32, version, None)
            .await
            .map(|r| r.version)
    };
    // etcd answers once it listens (connecting earlier is refused) and has a leader.
    while MaintenanceClient::connect(etcd_endpoint.clone())
        .await
        .is_err()
        || validate(etcd_endpoint.clone(), "3.4").await != Ok("3.5.0".into())
    {
        assert!(Instant::now() < deadline, "etcd 3.5.1 did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let malformed = |r: &Result<String, (Code, String)>| *r == wrong_format();
    for version in [
        "",
        "x",
        "3",
        "3.",
        "3.6.",
        "3..6",
        ".3.6",
        "v3.6",
        "V3.6",
        "3.6.0.1",
        "3.6.x",
        "3.6-rc",
        "3.6+b",
        "3.6.0-rc.1",
        "3.6.0+b.1",
        "3.6.0-rc+b",
        "03.06",
        "3.6.007",
        " 3.6",
        "3.6 ",
        "3,6",
        "+3.6",
        "-3.6",
        "3.-6",
        "3.+6",
        "99999999999999999999.6",
        "3.99999999999999999999",
        "9223372036854775807.6",
        "3.4",
    ] {
        let theirs = validate(etcd_endpoint.clone(), version).await;
        let ours = validate(server.endpoint.clone(), version).await;
        assert_eq!(
            malformed(&ours),
            malformed(&theirs),
            "{version:?}: etcd 3.5.1 {theirs:?}, MetaStore {ours:?}"
        );
    }
    drop(etcd);
}

async fn auth_status(
    endpoint: &str,
    token: Option<&str>,
) -> Result<AuthStatusResponse, (Code, String)> {
    // A refused connect is an error too: the caller polls etcd with this while it starts.
    AuthClient::connect(endpoint.to_string())
        .await
        .map_err(|e| (Code::Unavailable, e.to_string()))?
        .auth_status(with_token(AuthStatusRequest {}, token))
        .await
        .map(|r| r.into_inner())
        .map_err(|s| (s.code(), s.message().to_string()))
}

/// `AuthStatus` as etcd 3.7 answers it: to anyone, with or without a token; a token that is sent
/// must still be valid. etcd 3.5.1 (and 3.6) want root: the same sequence against it shows
/// what changed, and that everything else agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_status_needs_no_token() {
    let data = tempfile::tempdir().expect("tempdir");
    let etcd = common::etcd::spawn(
        &common::etcd::reference_dir(),
        &data.path().join("e"),
        common::free_port(),
    );
    let server = Server::start_with("memory", &["--bcrypt-cost", "4"]);
    let theirs = format!("http://{}", etcd.endpoint);
    let ours = server.endpoint.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while auth_status(&theirs, None).await.is_err() {
        assert!(Instant::now() < deadline, "etcd 3.5.1 did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let enabled_and_revision = |r: Result<AuthStatusResponse, (Code, String)>| {
        r.map(|s| (s.enabled, s.auth_revision, s.header.is_some()))
    };

    // Auth disabled: both answer anyone. (etcd also resolves a token sent while auth is disabled
    // and refuses an unknown one, for any request that goes through raft; MetaStore ignores tokens
    // then, for every request.)
    for endpoint in [&theirs, &ours] {
        let anonymous = enabled_and_revision(auth_status(endpoint, None).await);
        assert_eq!(anonymous.map(|a| a.0), Ok(false), "{endpoint}");
    }

    let mut revisions = Vec::new();
    for endpoint in [&theirs, &ours] {
        let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .expect("connect");
        c.user_add("root", "rootpw", None).await.expect("user add");
        c.user_grant_role("root", "root").await.expect("grant");
        c.user_add("u", "upw", None).await.expect("user add");
        c.auth_enable().await.expect("auth enable");
        let root = token(endpoint, "root", "rootpw").await;
        let user = token(endpoint, "u", "upw").await;
        let as_root = enabled_and_revision(auth_status(endpoint, Some(&root)).await);
        assert_eq!(as_root.clone().map(|a| (a.0, a.2)), Ok((true, true)));
        revisions.push(as_root.clone().map(|a| a.1));
        // A token that is sent must be valid, in both.
        assert_eq!(
            enabled_and_revision(auth_status(endpoint, Some("bogus")).await),
            Err((
                Code::Unauthenticated,
                "etcdserver: invalid auth token".into()
            )),
            "{endpoint}"
        );
        let anonymous = enabled_and_revision(auth_status(endpoint, None).await);
        let as_user = enabled_and_revision(auth_status(endpoint, Some(&user)).await);
        if endpoint == &theirs {
            // etcd 3.5.1: root only.
            assert_eq!(
                anonymous,
                Err((
                    Code::InvalidArgument,
                    "etcdserver: user name is empty".into()
                ))
            );
            assert_eq!(
                as_user,
                Err((
                    Code::PermissionDenied,
                    "etcdserver: permission denied".into()
                ))
            );
        } else {
            // etcd 3.7: anyone, with the same answer root gets.
            assert_eq!(anonymous, as_root);
            assert_eq!(as_user, as_root);
        }
    }
    // The same auth changes, the same auth revision.
    assert_eq!(revisions[0], revisions[1]);
}

/// A member that joins after the downgrade was enabled, once the log holding the enable is purged
/// (snapshots every 20 entries), learns it from the snapshot it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_later_gets_the_downgrade_in_its_snapshot() {
    let mut cluster = TestCluster::start_with(3, &["--snapshot-count", "20"]);
    let leader = cluster.leader().await;
    let via = cluster.members[leader].endpoint();
    assert_eq!(downgrade(&via, Enable, TARGET).await, ok(CLUSTER));
    let mut c = cluster.members[leader].client().await;
    for i in 0..100 {
        c.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let peer_port = common::free_port();
    let (added, text) = common::etcdctl(
        &cluster.etcdctl_endpoints(),
        &[
            "member",
            "add",
            "m3",
            "--learner",
            &format!("--peer-urls=http://127.0.0.1:{peer_port}"),
        ],
    );
    assert!(added, "member add: {text}");
    let joined = cluster.start_joining("m3", peer_port);
    let learner = cluster.members[joined].endpoint();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut l = cluster.members[joined].client().await;
        let caught_up = l
            .get(
                "k99",
                Some(etcd_client::GetOptions::new().with_serializable()),
            )
            .await
            .is_ok_and(|g| g.kvs().len() == 1);
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "the learner did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(versions(&learner).await, downgraded());
    assert_eq!(downgrade(&learner, Validate, "3.5").await, in_progress());
}
