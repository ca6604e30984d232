//! Three real member processes on loopback ports (RocksDB): replication, reads and writes through
//! any member, leader loss under load with nothing acknowledged lost, catch-up after restart with
//! equal `HashKV`, and membership changes with etcdctl (learner add, join, promote, remove).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ClusterMember, Server, TestCluster};
use etcd_client::{GetOptions, PutOptions};

/// `(hash, hash revision)` of every running member once they all agree at one revision (bounded).
async fn converged_hashes(cluster: &TestCluster) -> Vec<(u32, i64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut hashes = Vec::new();
        for m in cluster.members.iter().filter(|m| m.is_running()) {
            let mut c = m.client().await;
            // Linearizable first, so every member has applied the newest revision.
            let rev = c
                .get("converge-probe", None)
                .await
                .ok()
                .and_then(|r| r.header().map(|h| h.revision()));
            let Some(rev) = rev else { continue };
            if let Ok(h) = c.hash_kv(rev).await {
                hashes.push((h.hash(), rev));
            }
        }
        let running = cluster.members.iter().filter(|m| m.is_running()).count();
        if hashes.len() == running && hashes.windows(2).all(|w| w[0] == w[1]) {
            return hashes;
        }
        assert!(
            Instant::now() < deadline,
            "members did not converge on one revision and hash: {hashes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What etcd answers a request caught in a leader change.
const LEADER_LOSS_ERRORS: [&str; 4] = [
    "etcdserver: leader changed",
    "etcdserver: request timed out",
    "etcdserver: no leader",
    "etcdserver: request timed out, possibly due to previous leader failure",
];

/// Whether a write may fail this way while the leader is killed: the member we talk to may be the
/// one killed (the client loses its connection: not a server answer), or the leader may be
/// changing (the server answers with one of etcd's leader-loss errors).
fn expected_during_leader_loss(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let leader_loss = status.code() == tonic::Code::Unavailable
                && LEADER_LOSS_ERRORS.contains(&status.message());
            leader_loss || !status.message().starts_with("etcdserver:")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Keys written before a learner joins (several snapshots' worth).
const PRE_JOIN_KEYS: usize = 200;
/// Values of 200 KiB written before the learner joins: its snapshot is several chunks long.
const PRE_JOIN_BIG_KEYS: usize = 24;

/// etcdctl against a cluster, with room for an election in each command.
fn etcdctl(endpoints: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["--command-timeout=10s"];
    all.extend_from_slice(args);
    common::etcdctl(endpoints, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_serves_reads_and_writes() {
    let cluster = TestCluster::start(3);
    cluster.leader().await;
    // Each member takes writes; a linearizable read on every other member sees them at once.
    for round in 0..5 {
        for (i, writer) in cluster.members.iter().enumerate() {
            let key = format!("k-{round}-{i}");
            let mut w = writer.client().await;
            let put = w
                .put(key.as_str(), "v", None)
                .await
                .expect("put through any member");
            let rev = put.header().expect("header").revision();
            for reader in &cluster.members {
                let mut r = reader.client().await;
                let got = r.get(key.as_str(), None).await.expect("linearizable get");
                assert_eq!(got.kvs().len(), 1, "{} missed {key}", reader.name);
                assert_eq!(got.kvs()[0].mod_revision(), rev);
                assert!(got.header().expect("header").revision() >= rev);
            }
            // A serializable read on the member that took the write sees it too (it waited for its
            // own apply before answering).
            let local = w
                .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                .await
                .expect("serializable get");
            assert_eq!(
                local.kvs().len(),
                1,
                "{} took {key} but does not show it",
                writer.name
            );
        }
    }
    // Leases granted on a follower expire on the leader's clock and take their keys everywhere.
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut f = cluster.members[follower].client().await;
    let lease = f.lease_grant(2, None).await.expect("grant on a follower");
    f.put(
        "leased",
        "x",
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await
    .expect("put with lease");
    let ttl = f.lease_time_to_live(lease.id(), None).await.expect("ttl");
    // Whole seconds left, rounded down as etcd answers: some time left, at most 3 s.
    assert!((0..=3).contains(&ttl.ttl()), "remaining TTL {}", ttl.ttl());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = f.get("leased", None).await.expect("get");
        if got.kvs().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leased key outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (ok, text) = etcdctl(&cluster.etcdctl_endpoints(), &["member", "list"]);
    assert!(ok, "{text}");
    for m in &cluster.members {
        assert!(
            text.contains(&format!(
                ", started, {}, {}, {}, false",
                m.name,
                m.peer_url(),
                m.endpoint()
            )),
            "member list misses {}: {text}",
            m.name
        );
    }
    // `--cluster` makes etcdctl 3.4 dial each listed client URL with the URL as HTTP/2
    // :authority ("http://host:port"); the server must take it as etcd's does.
    let (ok, text) = etcdctl(
        &cluster.etcdctl_endpoints(),
        &["endpoint", "status", "--cluster"],
    );
    assert!(ok, "{text}");
    assert_eq!(
        text.matches(", true, false, ").count(),
        1,
        "one leader: {text}"
    );
    let (ok, text) = etcdctl(
        &cluster.etcdctl_endpoints(),
        &["endpoint", "hashkv", "--cluster"],
    );
    assert!(ok && text.lines().count() == 3, "{text}");
    let (ok, text) = etcdctl(
        &cluster.etcdctl_endpoints(),
        &["endpoint", "health", "--cluster"],
    );
    assert!(ok, "{text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");
    // Hash (all replicated state) agrees across members once they have applied the same log, and
    // Status reports the space in use within the total.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut hashes = Vec::new();
        for m in &cluster.members {
            let mut c = m.client().await;
            hashes.push(c.hash().await.expect("hash").hash());
            let status = c.status().await.expect("status");
            assert!(status.raft_used_db_size() > 0, "{}", m.name);
            assert!(status.raft_used_db_size() <= status.db_size(), "{}", m.name);
        }
        if hashes.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "Hash differs: {hashes:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Leadership moves where etcdctl asks (it sends MoveLeader to the current leader).
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let (_, list) = etcdctl(&cluster.etcdctl_endpoints(), &["member", "list"]);
    let target_id = list
        .lines()
        .find(|l| l.contains(&format!(", {}, ", cluster.members[target].name)))
        .and_then(|l| l.split(',').next())
        .expect("target id")
        .to_string();
    let (ok, text) = etcdctl(&cluster.etcdctl_endpoints(), &["move-leader", &target_id]);
    assert!(ok, "move-leader: {text}");
    assert_eq!(cluster.leader().await, target, "{text}");
    // Asked of a member that does not lead, MoveLeader fails as etcd's does.
    let mut old = cluster.members[leader].client().await;
    let id = u64::from_str_radix(&target_id, 16).expect("hex id");
    let err = old
        .move_leader(id)
        .await
        .expect_err("only the leader moves leadership");
    assert_eq!(
        common::grpc(err),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: not leader".to_string()
        )
    );
    converged_hashes(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_nothing_acknowledged() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.leader().await;
    // key -> (value, revision) of every acknowledged write.
    let acked: Arc<Mutex<BTreeMap<String, (String, i64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let endpoint = cluster.members[w % 3].endpoint();
        let acked = acked.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10));
            let Ok(mut c) = etcd_client::Client::connect([endpoint], Some(opts)).await else {
                return 0;
            };
            let mut errors = 0;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (k, v) = (format!("w{w}-{}", i % 50), format!("v{i}"));
                i += 1;
                match c.put(k.as_str(), v.as_str(), None).await {
                    Ok(r) => {
                        let rev = r.header().expect("header").revision();
                        acked.lock().unwrap().insert(k, (v, rev));
                    }
                    Err(e) if expected_during_leader_loss(&e) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(other) => panic!("a write failed with an unexpected error: {other:?}"),
                }
            }
            errors
        }));
    }
    // Let the writers get going (at least 50 acknowledged writes) before the kill.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 50 {
        assert!(
            Instant::now() < deadline,
            "fewer than 50 writes acknowledged in 20 s before the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.members[leader].kill9();
    let killed_at = Instant::now();
    // Writes resume under a new leader.
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let newest_acked = || {
        acked
            .lock()
            .unwrap()
            .values()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    };
    let count_at_election = newest_acked();
    // A write sent now is acknowledged at once, through the new leader and through the other
    // survivor. (A writer whose put was on its way to the dead leader waits until its member
    // has applied the new leader's first entry: the put may have arrived and be committed by the
    // new leader, and is sent again only once it cannot be. Those writers are not the measure
    // here; `sim/tests/leadership.rs` bounds their wait.)
    let other = (0..3)
        .find(|i| *i != leader && *i != new_leader)
        .expect("a survivor");
    for (i, via) in [new_leader, other].into_iter().enumerate() {
        let mut fresh = cluster.members[via].client().await;
        let put = tokio::time::timeout(
            Duration::from_secs(2),
            fresh.put(format!("after-kill-{i}"), "v", None),
        )
        .await;
        assert!(
            matches!(put, Ok(Ok(_))),
            "a write sent through m{via} after the new leader took over was not acknowledged \
             within 2 s ({:?} after the kill): {put:?}",
            killed_at.elapsed()
        );
    }
    // The old leader comes back, catches up, and agrees.
    cluster.members[leader].restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    // The writers resumed too (each within its request deadline).
    assert!(
        newest_acked() > count_at_election,
        "no writer's put was acknowledged after the new leader took over"
    );
    let hashes = converged_hashes(&cluster).await;
    assert_eq!(hashes.len(), 3);
    // Every acknowledged write is there, on every member, at its acknowledged revision (or
    // overwritten later by the same writer).
    let acked = acked.lock().unwrap().clone();
    for m in &cluster.members {
        let mut c = m.client().await;
        let all = c
            .get(
                "w",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .expect("get all");
        let stored: BTreeMap<String, (String, i64)> = all
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    (kv.value_str().unwrap().to_string(), kv.mod_revision()),
                )
            })
            .collect();
        for (k, (v, rev)) in &acked {
            let (sv, srev) = stored
                .get(k)
                .unwrap_or_else(|| panic!("{}: acknowledged key {k} is missing", m.name));
            assert!(
                srev >= rev,
                "{}: {k} at revision {srev}, acknowledged at {rev}",
                m.name
            );
            if srev == rev {
                assert_eq!(
                    sv, v,
                    "{}: {k} has another value at its acknowledged revision",
                    m.name
                );
            }
        }
    }
}

/// Writes sent to a follower at the same moment travel to the leader together (`ProposeMany`, see
/// `node::forward_batch`), and each is applied exactly once and answered with its own revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_to_a_follower_at_once_go_together_and_each_applies_once() {
    let cluster = TestCluster::start(3);
    let leader = cluster.leader().await;
    let follower = &cluster.members[(leader + 1) % 3];
    put_at_once_and_check(&cluster, follower, "together/").await;
    assert_went_together(
        follower,
        "metastore_forwarded_commands_total",
        "metastore_forwarded_batches_total",
    )
    .await;
}

/// Writes sent to the leader at the same moment reach raft's core together, one message and one
/// log append for many (`node::propose_batch`), and each is applied exactly once and answered with
/// its own revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_to_the_leader_at_once_are_proposed_together_and_each_applies_once() {
    let cluster = TestCluster::start(3);
    let leader = &cluster.members[cluster.leader().await];
    put_at_once_and_check(&cluster, leader, "leader-together/").await;
    assert_went_together(
        leader,
        "metastore_leader_proposals_total",
        "metastore_leader_proposal_batches_total",
    )
    .await;
}

/// `member`'s counter `items` saw every one of the [`AT_ONCE`] puts, and its counter `batches`
/// fewer batches than that: some of them travelled together.
async fn assert_went_together(member: &ClusterMember, items: &str, batches: &str) {
    let endpoint = member.endpoint();
    let sent = common::abuse::metric(&endpoint, items).await;
    let together = common::abuse::metric(&endpoint, batches).await;
    assert!(sent >= AT_ONCE as i64, "{items}: {sent}");
    assert!(
        together < sent,
        "{sent} {items} in {together} {batches}: none went together"
    );
}

/// How many puts `put_at_once_and_check` sends.
const AT_ONCE: usize = 300;

/// Send [`AT_ONCE`] puts under `prefix` through `member` at the same moment; every one must be
/// acknowledged with a revision of its own, in a run of consecutive revisions (nothing else
/// writes), and be applied once.
async fn put_at_once_and_check(cluster: &TestCluster, member: &ClusterMember, prefix: &str) {
    const N: usize = AT_ONCE;
    let client = member.client().await;
    let puts = (0..N).map(|i| {
        let mut c = client.clone();
        async move {
            c.put(format!("{prefix}{i:03}"), format!("v{i}"), None)
                .await
        }
    });
    let mut revisions: Vec<i64> = futures::future::join_all(puts)
        .await
        .into_iter()
        .map(|put| put.expect("put").header().expect("header").revision())
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        N,
        "two puts were answered with one revision"
    );
    // Nothing else wrote meanwhile: N entries applied, N revisions in a row, none twice.
    assert_eq!(revisions[N - 1] - revisions[0] + 1, N as i64);
    let mut reader = cluster.members[cluster.leader().await].client().await;
    let got = reader
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("list");
    assert_eq!(got.kvs().len(), N);
    for kv in got.kvs() {
        assert_eq!(kv.version(), 1, "{:?} applied more than once", kv.key_str());
        assert!(revisions.binary_search(&kv.mod_revision()).is_ok());
    }
}

/// A write sent to a follower while its leader is dead waits for the next leader within the
/// request deadline and succeeds, as a write to etcd does, instead of failing at once with "request
/// timed out, possibly due to previous leader failure". Every write here is sent after the kill,
/// one at a time through each survivor in turn, each allowed 10 s (the server's own deadline is
/// 7 s): none may fail, and their revisions follow one another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_while_the_leader_is_dead_wait_for_the_next() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.leader().await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut clients: Vec<etcd_client::Client> = Vec::new();
    for &i in &survivors {
        let mut c = cluster.members[i].client().await;
        // Each survivor forwards a write to the leader first, so that it holds a connection to it
        // when the leader dies, as a member of a busy cluster does.
        c.put(format!("warm-{i}"), "x", None)
            .await
            .expect("put before the kill");
        clients.push(c);
    }
    cluster.members[leader].kill9();
    let mut last = 0;
    for n in 0..10 {
        let c = &mut clients[n % 2];
        let resp = c
            .put(format!("after-kill-{n}"), "v", None)
            .await
            .unwrap_or_else(|e| panic!("write {n} sent after the leader's death failed: {e:?}"));
        let rev = resp.header().expect("header").revision();
        assert!(rev > last, "write {n} at revision {rev}, after {last}");
        last = rev;
    }
    let new_leader = cluster.leader().await;
    assert!(survivors.contains(&new_leader), "member {new_leader} leads");
}

/// etcd's way to grow a cluster: `member add` a voter, then start it with the member list the
/// answer prints. The answer must come before the new member runs (raft cannot commit the change
/// without it), within etcdctl's default command timeout; the member then catches up, and the
/// cluster, now counting it in its quorum, takes writes. Done twice: one member to two to three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_added_before_they_run_are_answered_and_then_join() {
    let mut cluster = TestCluster::start(1);
    cluster.leader().await;
    let mut c = cluster.members[0].client().await;
    for i in 0..20 {
        c.put(format!("pre-{i}"), "v", None).await.expect("put");
    }
    for name in ["m1", "m2"] {
        let peer_port = common::free_port();
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        // etcd refuses a voter until the others have been connected for a while ("unhealthy
        // cluster"), and so may we: retry that, nothing else.
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            let (ok, text) = common::etcdctl(
                &cluster.etcdctl_endpoints(),
                &[
                    "--command-timeout=5s",
                    "member",
                    "add",
                    name,
                    &format!("--peer-urls={peer_url}"),
                ],
            );
            if ok {
                break text;
            }
            assert!(
                text.contains("unhealthy cluster") && Instant::now() < deadline,
                "member add {name}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(
            text.contains(&format!("{name}={peer_url}")) && text.contains("ETCD_INITIAL_CLUSTER="),
            "the answer names the new member in the cluster it starts from: {text}"
        );
        let joined = cluster.start_joining(name, peer_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut j = cluster.members[joined].client().await;
            let got = j
                .get(
                    "pre-",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await;
            if got.is_ok_and(|g| g.kvs().len() == 20) {
                break;
            }
            assert!(Instant::now() < deadline, "{name} did not catch up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c.put(format!("after-{name}"), "v", None)
            .await
            .expect("the grown cluster takes writes");
    }
    let list = c.member_list().await.expect("member list");
    assert_eq!(list.members().len(), 3);
    assert!(
        list.members().iter().all(|m| !m.is_learner()),
        "{:?}",
        list.members()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_is_promoted_and_members_are_removed() {
    // Snapshots every 50 entries: by the time the learner joins, the log it would need is purged,
    // so it must be sent a snapshot.
    let mut cluster = TestCluster::start_with(3, &["--snapshot-count", "50"]);
    cluster.leader().await;
    let mut c = cluster.members[0].client().await;
    for i in 0..PRE_JOIN_KEYS {
        c.put(format!("pre-{i}"), "v", None).await.expect("put");
    }
    for i in 0..PRE_JOIN_BIG_KEYS {
        let big = vec![b'a' + (i % 26) as u8; 200 * 1024];
        c.put(format!("big-{i}"), big, None).await.expect("put big");
    }
    let peer_port = common::free_port();
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let (ok, text) = etcdctl(
        &cluster.etcdctl_endpoints(),
        &[
            "member",
            "add",
            "m3",
            "--learner",
            &format!("--peer-urls={peer_url}"),
        ],
    );
    assert!(ok, "member add: {text}");
    assert!(
        text.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{text}"
    );
    let (ok, text) = etcdctl(
        &cluster.etcdctl_endpoints(),
        &["member", "add", "again", &format!("--peer-urls={peer_url}")],
    );
    assert!(!ok && text.contains("Peer URLs already exists"), "{text}");

    let joined = cluster.start_joining("m3", peer_port);
    // The learner catches up: it serves the data written before it joined.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut l = cluster.members[joined].client().await;
        let got = l
            .get(
                "pre-",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await;
        if got.is_ok_and(|g| g.kvs().len() == PRE_JOIN_KEYS) {
            break;
        }
        assert!(Instant::now() < deadline, "the learner did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut l = cluster.members[joined].client().await;
    for i in 0..PRE_JOIN_BIG_KEYS {
        let got = l
            .get(
                format!("big-{i}"),
                Some(GetOptions::new().with_serializable()),
            )
            .await
            .expect("big key on the learner");
        assert_eq!(got.kvs().len(), 1, "big-{i}");
        assert!(got.kvs()[0].value() == vec![b'a' + (i % 26) as u8; 200 * 1024]);
    }
    let (ok, text) = etcdctl(&cluster.etcdctl_endpoints(), &["member", "list"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("m3, {peer_url}")) && text.contains(", true\n"),
        "{text}"
    );
    let id = text
        .lines()
        .find(|l| l.contains(&peer_url))
        .and_then(|l| l.split(',').next())
        .expect("learner id")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, text) = etcdctl(&cluster.etcdctl_endpoints(), &["member", "promote", &id]);
        if ok {
            assert!(text.contains("promoted"), "{text}");
            break;
        }
        assert!(text.contains("in sync with leader"), "{text}");
        assert!(
            Instant::now() < deadline,
            "the learner never became promotable"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, text) = etcdctl(&cluster.etcdctl_endpoints(), &["member", "promote", &id]);
    assert!(
        !ok && text.contains("can only promote a learner member"),
        "{text}"
    );
    let (_, text) = etcdctl(&cluster.etcdctl_endpoints(), &["member", "list"]);
    assert_eq!(text.matches(", false").count(), 4, "four voters: {text}");

    // Remove a founding member; the other three carry on and agree.
    let (_, list) = etcdctl(&cluster.members[0].host_port(), &["member", "list"]);
    let victim = list
        .lines()
        .find(|l| l.contains(", m2, "))
        .and_then(|l| l.split(',').next())
        .expect("m2 id")
        .to_string();
    let (ok, text) = etcdctl(
        &cluster.members[0].host_port(),
        &["member", "remove", &victim],
    );
    assert!(ok, "member remove: {text}");
    cluster.members[2].kill9();
    let (ok, text) = etcdctl(&cluster.etcdctl_endpoints(), &["member", "list"]);
    assert!(ok, "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    let (ok, text) = etcdctl(&cluster.etcdctl_endpoints(), &["member", "remove", &victim]);
    assert!(!ok && text.contains("member not found"), "{text}");
    let mut c = cluster.members[joined].client().await;
    c.put("after-remove", "v", None)
        .await
        .expect("put after remove");
    converged_hashes(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfig_keeps_started_voters_a_quorum() {
    let cluster = TestCluster::start(3);
    cluster.leader().await;
    let add = |name: &str| {
        let url = format!("http://127.0.0.1:{}", common::free_port());
        let (ok, text) = etcdctl(
            &cluster.etcdctl_endpoints(),
            &["member", "add", name, &format!("--peer-urls={url}")],
        );
        (ok, text, url)
    };
    // Voters that never start: 3 started of 4, then 3 of 5, are still a quorum...
    let (ok, text, absent_url) = add("absent-1");
    assert!(ok, "{text}");
    let (ok, text, _) = add("absent-2");
    assert!(ok, "{text}");
    // ...3 of 6 would not be.
    let (ok, text, _) = add("absent-3");
    assert!(
        !ok && text
            .contains("etcdserver: re-configuration failed due to not enough started members"),
        "{text}"
    );
    // A learner never counts against the quorum.
    let url = format!("http://127.0.0.1:{}", common::free_port());
    let (ok, text) = etcdctl(
        &cluster.etcdctl_endpoints(),
        &[
            "member",
            "add",
            "learner",
            "--learner",
            &format!("--peer-urls={url}"),
        ],
    );
    assert!(ok, "{text}");
    // Removing a started voter would leave 2 started of 4: refused; an absent one goes.
    let (_, list) = etcdctl(&cluster.etcdctl_endpoints(), &["member", "list"]);
    let id_of = |needle: &str| {
        list.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split(',').next())
            .unwrap_or_else(|| panic!("{needle} in {list}"))
            .to_string()
    };
    let (ok, text) = etcdctl(
        &cluster.etcdctl_endpoints(),
        &["member", "remove", &id_of(", m0, ")],
    );
    assert!(!ok && text.contains("not enough started members"), "{text}");
    let (ok, text) = etcdctl(
        &cluster.etcdctl_endpoints(),
        &["member", "remove", &id_of(&absent_url)],
    );
    assert!(ok, "{text}");
    let mut c = cluster.members[0].client().await;
    c.put("still-writable", "v", None).await.expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_leader_change_and_then_expire() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut f = cluster.members[follower].client().await;
    let lease = f.lease_grant(6, None).await.expect("grant");
    f.put("owned", "x", Some(PutOptions::new().with_lease(lease.id())))
        .await
        .expect("put with lease");
    cluster.members[leader].kill9();
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    // The new leader resumes the lease from its TTL (never checkpointed here) plus one election
    // timeout of grace: not expired early, not kept forever.
    let ttl = f
        .lease_time_to_live(lease.id(), None)
        .await
        .expect("ttl after the leader change");
    // Rounded down as etcd answers: more than 4 s left, at most 8.
    assert!((4..=8).contains(&ttl.ttl()), "remaining TTL {}", ttl.ttl());
    assert_eq!(f.get("owned", None).await.expect("get").kvs().len(), 1);
    let granted_at = Instant::now();
    let deadline = granted_at + Duration::from_secs(20);
    loop {
        if f.get("owned", None).await.expect("get").kvs().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease outlived the leader change by far"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        granted_at.elapsed() >= Duration::from_secs(3),
        "the lease expired early after the leader change ({:?})",
        granted_at.elapsed()
    );
    for m in cluster.members.iter().filter(|m| m.is_running()) {
        let mut c = m.client().await;
        let got = c
            .get("owned", Some(GetOptions::new().with_serializable()))
            .await
            .expect("get");
        assert!(got.kvs().is_empty(), "{} still has the key", m.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_keep_serving_without_two() {
    let mut cluster = TestCluster::start(5);
    let leader = cluster.leader().await;
    let other = (leader + 1) % 5;
    let mut c = cluster.members[(leader + 2) % 5].client().await;
    c.put("before", "v", None).await.expect("put");
    cluster.members[leader].kill9();
    cluster.members[other].kill9();
    let new_leader = cluster.leader().await;
    assert!(new_leader != leader && new_leader != other);
    // Every survivor takes writes and serves linearizable reads.
    for (i, m) in cluster.members.iter().enumerate() {
        if !m.is_running() {
            continue;
        }
        let mut c = m.client().await;
        let key = format!("minority-lost-{i}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.put(key.as_str(), "v", None).await {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "{}: {e}", m.name),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let got = c.get("before", None).await.expect("linearizable get");
        assert_eq!(got.kvs().len(), 1);
    }
    cluster.members[leader].restart();
    cluster.members[other].restart();
    let hashes = converged_hashes(&cluster).await;
    assert_eq!(hashes.len(), 5);
}

/// What one server answers to a sequence of membership changes that never start a member: two
/// learners (etcd 3.5 allows one), a taken peer URL, unknown ids, promoting a learner that is not
/// in sync, removing it and adding one again.
async fn membership_answers(endpoint: &str) -> Vec<String> {
    use etcd_client::MemberAddOptions;
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect");
    // etcd 3.5.1 checks a membership change when it applies it; its raft ignores a change
    // proposed while another is unapplied, and the call then waits without a deadline. So each
    // step waits until the one before is applied (a linearizable read, then a pause), and has a
    // deadline of its own.
    macro_rules! step {
        ($call:expr) => {{
            let _ = c.get("settle", None).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            tokio::time::timeout(Duration::from_secs(10), $call)
                .await
                .expect("a membership answer within 10 s")
        }};
    }
    let learner = || Some(MemberAddOptions::new().with_is_learner());
    let added = |r: Result<etcd_client::MemberAddResponse, etcd_client::Error>| {
        common::etcd::answer_text(r.map(|r| {
            format!(
                "added, learner {:?}, {} members",
                r.member().map(|m| m.is_learner()),
                r.member_list().len()
            )
        }))
    };
    let done = |what: &str| format!("{what}: ok");
    let mut seen = vec![added(
        step!(c.member_add(["http://127.0.0.1:1"], learner())),
    )];
    let id = step!(c.member_list())
        .expect("list")
        .members()
        .iter()
        .find(|m| m.is_learner())
        .expect("the learner")
        .id();
    seen.push(added(
        step!(c.member_add(["http://127.0.0.1:2"], learner())),
    ));
    // (Not the learner's URLs alone: etcd derives a new member's id from its URLs and the second,
    // so within one second the same URLs are a taken id.)
    seen.push(added(step!(
        c.member_add(["http://127.0.0.1:5", "http://127.0.0.1:1"], None)
    )));
    seen.push(common::etcd::answer_text(
        step!(c.member_remove(1)).map(|_| done("remove")),
    ));
    seen.push(common::etcd::answer_text(
        step!(c.member_update(1, ["http://127.0.0.1:3".to_string()])).map(|_| done("update")),
    ));
    seen.push(common::etcd::answer_text(
        step!(c.member_promote(1)).map(|_| done("promote")),
    ));
    seen.push(common::etcd::answer_text(
        step!(c.member_promote(id)).map(|_| done("promote")),
    ));
    seen.push(common::etcd::answer_text(
        step!(c.member_remove(id)).map(|_| done("remove")),
    ));
    seen.push(added(
        step!(c.member_add(["http://127.0.0.1:2"], learner())),
    ));
    seen
}

/// Membership changes are refused as etcd 3.5.1 refuses them (same codes and texts), one learner
/// at a time included (asked side by side; the changes never start a member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_refusals_are_etcds() {
    let data = tempfile::tempdir().expect("tempdir");
    let (etcd, _reference) = common::etcd::start_reference(&data.path().join("e")).await;
    let server = common::Server::start("memory");
    let expected = membership_answers(&format!("http://{}", etcd.endpoint)).await;
    let got = membership_answers(&server.endpoint).await;
    assert_eq!(got, expected);
    assert!(
        expected[1].contains("too many learner members"),
        "{expected:?}"
    );
}

/// A backup of a fresh single member holding `k0..k9` with values `{value}0..{value}9`: the
/// same revisions whatever `value`, a different history for each.
async fn backup_of_ten_puts(value: &str, file: &std::path::Path) {
    let server = Server::start("rocksdb");
    let mut c = server.client().await;
    for i in 0..10 {
        c.put(format!("k{i}"), format!("{value}{i}"), None)
            .await
            .expect("put");
    }
    let (ok, out) = common::etcdctl(
        server.host_port(),
        &["snapshot", "save", file.to_str().expect("utf-8 path")],
    );
    assert!(ok, "{out}");
}

/// etcd's initial corruption check (`--experimental-initial-corrupt-check`): a member whose store
/// agrees with its peers' starts; one whose store differs from theirs at the same revision (its
/// data dir restored from another history of the same length) refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_corruption_check_stops_a_member_whose_store_differs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ours, theirs) = (tmp.path().join("ours.db"), tmp.path().join("theirs.db"));
    backup_of_ten_puts("v", &ours).await;
    backup_of_ten_puts("w", &theirs).await;
    let mut cluster = TestCluster::start_restored(3, &ours);
    cluster.leader().await;

    // The same store as its peers': the check passes and the member serves.
    cluster.members[1].add_flag("--experimental-initial-corrupt-check");
    cluster.members[1].restart();
    // It may have been the leader: a linearizable read waits for the next one to be elected.
    cluster.leader().await;
    let mut c = cluster.members[1].client().await;
    let got = c.get("k3", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"v3");

    // Another history at the same revision: the member stops before it serves.
    let m2 = &mut cluster.members[2];
    m2.kill9();
    std::fs::remove_dir_all(&m2.data_dir).expect("remove the data dir");
    m2.restore(&theirs);
    m2.add_flag("--experimental-initial-corrupt-check");
    let mut child = m2
        .command()
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the member");
    let status = common::exit_within(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("stderr");
    let status =
        status.unwrap_or_else(|| panic!("a member whose store differs kept running:\n{stderr}"));
    assert!(!status.success());
    assert!(
        stderr.contains("found data inconsistency with peers"),
        "{stderr}"
    );
    // Its peers go on serving their history.
    let got = c.get("k3", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"v3");
}
