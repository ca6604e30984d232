//! Peer TLS (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
//! `--peer-client-cert-auth`): real member processes over `https://` peer URLs replicate and
//! restart; a member with a certificate from another CA is kept out; a peer port with client
//! certificate auth refuses callers without a certificate from its CA; bad flag combinations stop
//! the server before it starts, with etcd's errors.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::{Identity, TestCa};
use common::{free_port, ClusterSpec, TestCluster};
use etcd_client::{GetOptions, MemberAddOptions};
use metastore::config::TlsFlags;
use metastore::net::peer_channels::PeerChannels;
use metastore::pb::metastore::MembersRequest;

/// Peer TLS flags for a member presenting `identity` and trusting `ca`, with client certificate
/// auth on its peer port.
fn peer_flags(identity: &Identity, ca: &TestCa) -> Vec<String> {
    let mut flags = identity.flags("peer-");
    flags.extend([
        "--peer-trusted-ca-file".to_string(),
        ca.cert.display().to_string(),
        "--peer-client-cert-auth".to_string(),
    ]);
    flags
}

/// A cluster of `n` members over https peer URLs with client certificate auth, every member's
/// peer certificate from `ca` except for the members `own` gives their own peer flags.
fn https_cluster(n: usize, engine: &str, ca: &TestCa, own: &[(usize, Vec<String>)]) -> TestCluster {
    let shared = peer_flags(&ca.issue("member", &["127.0.0.1", "localhost"]), ca);
    let member_extra = (0..n)
        .map(|i| match own.iter().find(|(j, _)| *j == i) {
            Some((_, flags)) => flags.clone(),
            None => shared.clone(),
        })
        .collect();
    TestCluster::start_spec(
        n,
        ClusterSpec {
            engine: engine.to_string(),
            peer_scheme: "https",
            member_extra,
            ..ClusterSpec::default()
        },
    )
}

/// The value of `key` as member `i` reads it, linearizable or serializable.
async fn read(cluster: &TestCluster, i: usize, key: &str, serializable: bool) -> Option<String> {
    let mut client = cluster.members[i].client().await;
    let options = serializable.then(|| GetOptions::new().with_serializable());
    let reply = client.get(key, options).await.expect("get");
    reply
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

/// Wait (bounded) until member `i`'s serializable read of `key` is `want`.
async fn wait_serializable(cluster: &TestCluster, i: usize, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = read(cluster, i, key, true).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member m{i} still reads {key} = {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_peers_replicate_and_survive_a_restart() {
    // RocksDB only: a cluster member may not run on the memory engine (it is refused at start).
    for engine in ["rocksdb"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new(tmp.path(), "cluster");
        let mut cluster = https_cluster(3, engine, &ca, &[]);
        let leader = cluster.leader().await;
        let follower = (leader + 1) % 3;

        // Through a follower: the write is forwarded to the leader over the TLS peer channel.
        let mut client = cluster.members[follower].client().await;
        client.put("tls-key", "v1", None).await.expect("put");
        for i in 0..3 {
            assert_eq!(
                read(&cluster, i, "tls-key", false).await.as_deref(),
                Some("v1"),
                "{engine}: linearizable read on m{i}"
            );
            wait_serializable(&cluster, i, "tls-key", "v1").await;
        }
        // Membership keeps the URLs as written.
        let members = client.member_list().await.expect("member list");
        for m in members.members() {
            assert!(
                m.peer_urls()
                    .iter()
                    .all(|u| u.starts_with("https://127.0.0.1:")),
                "{engine}: {:?}",
                m.peer_urls()
            );
        }

        // A restarted member (the leader, so the others elect one over TLS) catches up.
        cluster.members[leader].restart();
        let mut client = cluster.members[follower].client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = client.put("tls-key", "v2", None).await {
            assert!(
                Instant::now() < deadline,
                "{engine}: put after restart: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut c = cluster.members[leader].client().await;
            match c.get("tls-key", None).await {
                Ok(r) if r.kvs().first().map(|kv| kv.value()) == Some(b"v2".as_slice()) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "{engine}: restarted member does not read v2: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        wait_serializable(&cluster, leader, "tls-key", "v2").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_with_an_https_url_joins_over_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(tmp.path(), "cluster");
    let shared = peer_flags(&ca.issue("member", &["127.0.0.1", "localhost"]), &ca);
    // The flags go to every member, the one that joins later too.
    let mut cluster = TestCluster::start_spec(
        3,
        ClusterSpec {
            engine: "rocksdb".to_string(),
            peer_scheme: "https",
            extra: shared,
            ..ClusterSpec::default()
        },
    );
    cluster.leader().await;
    let mut client = cluster.members[0].client().await;
    client.put("before-join", "v", None).await.expect("put");
    let peer_port = free_port();
    let url = format!("https://127.0.0.1:{peer_port}");
    client
        .member_add(
            [url.as_str()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add with an https peer URL");
    // The new member asks the others who it is over TLS, then the leader replicates to it.
    let joined = cluster.start_joining("m3", peer_port);
    wait_serializable(&cluster, joined, "before-join", "v").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_certificate_from_another_ca_is_kept_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(tmp.path(), "cluster");
    let rogue_ca = TestCa::new(tmp.path(), "rogue");
    // The rogue member trusts the cluster's CA (it can verify the others), but its own
    // certificate comes from another CA: the others refuse it as a client
    // (--peer-client-cert-auth) and cannot verify it as a server.
    let rogue = rogue_ca.issue("rogue", &["127.0.0.1", "localhost"]);
    let cluster = https_cluster(3, "rocksdb", &ca, &[(2, peer_flags(&rogue, &ca))]);
    let leader = cluster.leader().await;
    assert_ne!(leader, 2, "the rogue member leads");
    let mut client = cluster.members[0].client().await;
    client
        .put("secret", "v", None)
        .await
        .expect("put through the quorum of two");
    assert_eq!(
        read(&cluster, 1, "secret", false).await.as_deref(),
        Some("v")
    );
    wait_serializable(&cluster, 1, "secret", "v").await;
    // Give replication ample time; the rogue member must still have nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        read(&cluster, 2, "secret", true).await,
        None,
        "the rogue member got the data"
    );
    let mut rogue_client = cluster.members[2].client().await;
    assert!(
        rogue_client.get("secret", None).await.is_err(),
        "the rogue member served a linearizable read"
    );
}

/// `Members` on the peer port at `url`, dialed with `flags`: whether the call got an answer.
async fn call_peer(url: &str, flags: &TlsFlags) -> Result<(), String> {
    let channels = PeerChannels::new(flags)?;
    let mut client = channels.client(url).map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(Duration::from_secs(10), client.members(MembersRequest {}))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?;
    reply.map(|_| ()).map_err(|status| status.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_callers_without_a_trusted_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(tmp.path(), "cluster");
    let rogue_ca = TestCa::new(tmp.path(), "rogue");
    let cluster = https_cluster(1, "memory", &ca, &[]);
    cluster.leader().await;
    let url = cluster.members[0].peer_url();
    let good = ca.issue("caller", &["127.0.0.1"]);
    let bad = rogue_ca.issue("caller", &["127.0.0.1"]);
    let flags = |identity: Option<&Identity>, trusted: &TestCa| TlsFlags {
        cert_file: identity.map(|i| i.cert.clone()),
        key_file: identity.map(|i| i.key.clone()),
        trusted_ca_file: Some(trusted.cert.clone()),
        client_cert_auth: false,
    };

    // The control: a certificate from the cluster's CA gets an answer.
    call_peer(&url, &flags(Some(&good), &ca))
        .await
        .expect("a trusted caller is answered");
    let refused = [
        ("no client certificate", flags(None, &ca)),
        ("a certificate from another CA", flags(Some(&bad), &ca)),
        // The caller's own check: the member's certificate is not from the CA it trusts.
        ("a server it cannot verify", flags(Some(&good), &rogue_ca)),
    ];
    for (what, flags) in refused {
        let result = call_peer(&url, &flags).await;
        assert!(result.is_err(), "a caller with {what} was answered");
    }
    // Plain HTTP/2 on the TLS port.
    let plain = url.replacen("https://", "http://", 1);
    assert!(
        call_peer(&plain, &TlsFlags::default()).await.is_err(),
        "a plain caller was answered"
    );
}

/// Run `metastore` with `args`; it must exit (bounded wait) with a failure whose stderr says
/// `expected`, having created nothing under `dir`'s data dir.
fn refused(dir: &Path, args: &[&str], expected: &str) {
    let data = dir.join(format!("data-{}", common::free_port()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["--name", "m0", "--engine", "rocksdb"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-client-urls", "http://127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn metastore");
    let status = common::exit_within(&mut child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("metastore {args:?} did not stop within 30 s"));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "metastore {args:?} started");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
    assert!(
        !data.exists(),
        "{args:?} created the data dir before failing"
    );
}

#[test]
fn bad_peer_tls_flags_stop_the_server_with_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let ca = TestCa::new(dir, "cluster");
    let member = ca.issue("member", &["127.0.0.1"]);
    let ca_path = ca.cert.display().to_string();
    let cert = member.cert.display().to_string();
    let key = member.key.display().to_string();
    let missing = dir.join("missing.pem").display().to_string();
    let https = "https://127.0.0.1:2380";

    refused(
        dir,
        &[
            "--listen-peer-urls",
            https,
            "--peer-trusted-ca-file",
            &ca_path,
        ],
        "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url \
         https://127.0.0.1:2380 with HTTPS scheme",
    );
    refused(
        dir,
        &[
            "--listen-peer-urls",
            "http://127.0.0.1:0",
            "--peer-client-cert-auth",
        ],
        "--peer-client-cert-auth needs --peer-trusted-ca-file",
    );
    refused(
        dir,
        &[
            "--listen-peer-urls",
            https,
            "--initial-advertise-peer-urls",
            https,
            "--peer-cert-file",
            &cert,
            "--peer-key-file",
            &key,
        ],
        "--peer-trusted-ca-file must be given to verify the https peer URL https://127.0.0.1:2380",
    );
    refused(
        dir,
        &["--listen-peer-urls", https, "--peer-cert-file", &cert],
        "--peer-cert-file and --peer-key-file must be given together",
    );
    refused(
        dir,
        &[
            "--listen-peer-urls",
            https,
            "--peer-cert-file",
            &missing,
            "--peer-key-file",
            &key,
        ],
        &format!("cannot read {missing}"),
    );
    refused(
        dir,
        &[
            "--listen-peer-urls",
            "http://127.0.0.1:0",
            "--peer-trusted-ca-file",
            &missing,
        ],
        &format!("cannot read {missing}"),
    );
    // A key file that holds no key.
    refused(
        dir,
        &[
            "--listen-peer-urls",
            https,
            "--peer-cert-file",
            &cert,
            "--peer-key-file",
            &cert,
        ],
        &format!("cannot read {cert}"),
    );
}

/// A 3-member cluster whose members carry `member` and the flag `allowed` replicates as usual;
/// on its peer port a caller with a certificate `admitted` (common name, names) is answered, one
/// with `refused` (from the same CA) is refused with etcd's text. The callers' certificates are
/// issued once the members run: one may share the members' common name, and so its files.
async fn only_allowed_peers_are_served(
    ca: &TestCa,
    member: &Identity,
    allowed: [&str; 2],
    admitted: (&str, &[&str]),
    refused: (&str, &[&str]),
) {
    let mut flags = peer_flags(member, ca);
    flags.extend(allowed.map(str::to_string));
    let own: Vec<(usize, Vec<String>)> = (0..3).map(|i| (i, flags.clone())).collect();
    let cluster = https_cluster(3, "rocksdb", ca, &own);
    cluster.leader().await;
    let mut client = cluster.members[0].client().await;
    client.put("allowed", "v", None).await.expect("put");
    wait_serializable(&cluster, 2, "allowed", "v").await;

    let url = cluster.members[0].peer_url();
    let flags = |identity: &Identity| TlsFlags {
        cert_file: Some(identity.cert.clone()),
        key_file: Some(identity.key.clone()),
        trusted_ca_file: Some(ca.cert.clone()),
        client_cert_auth: false,
    };
    call_peer(&url, &flags(&ca.issue(admitted.0, admitted.1)))
        .await
        .unwrap_or_else(|e| panic!("{allowed:?}: an allowed certificate is answered: {e}"));
    let other = call_peer(&url, &flags(&ca.issue(refused.0, refused.1))).await;
    assert!(
        other
            .as_ref()
            .is_err_and(|e| e.contains("client certificate authentication failed")),
        "{allowed:?}: another certificate from the same CA: {other:?}"
    );
}

/// `--peer-cert-allowed-hostname`: members whose certificates are valid for that host name
/// replicate as usual; a caller with a certificate from the same CA for other names is refused,
/// whatever its common name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_cert_allowed_hostname_admits_only_that_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(tmp.path(), "cluster");
    only_allowed_peers_are_served(
        &ca,
        &ca.issue("m", &["127.0.0.1", "localhost", "member.cluster.test"]),
        ["--peer-cert-allowed-hostname", "member.cluster.test"],
        ("anyone", &["member.cluster.test"]),
        ("m", &["127.0.0.1", "intruder.test"]),
    )
    .await;
}

/// `--peer-cert-allowed-cn`: members whose certificates carry that common name replicate as
/// usual; a caller with a certificate from the same CA under another name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_cert_allowed_cn_admits_only_that_common_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(tmp.path(), "cluster");
    only_allowed_peers_are_served(
        &ca,
        &ca.issue("member", &["127.0.0.1", "localhost"]),
        ["--peer-cert-allowed-cn", "member"],
        ("member", &["127.0.0.1"]),
        ("intruder", &["127.0.0.1"]),
    )
    .await;
}
