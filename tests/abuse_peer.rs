//! Strangers on the peer port, abandoned snapshot transfers and leases across a leader change
//! (issue 15), against the real binary. A stranger's requests are refused before anything of them
//! is decoded or applied; a snapshot receive whose sender stops sending makes way for the next;
//! a lease granted while leadership moves still expires on time once its client is gone.

mod common;

use std::time::{Duration, Instant};

use common::abuse::{
    assert_p99_within, back_to_baseline, one_at_a_time, p99, rss_kib, settled_footprint, Probe,
    CLEANUP_DEADLINE, RSS_BUDGET_KIB,
};
use common::TestCluster;
use metastore::pb::etcdserverpb::PutRequest;
use metastore::pb::metastore::peer_client::PeerClient;
use metastore::pb::metastore::{
    command, Command, LeaseRequest, MembersRequest, ProposeManyRequest, ProposeRequest,
    RaftPayload, ReadIndexRequest, SnapshotChunk,
};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

/// The metadata keys a member names itself with (etcd's rafthttp headers).
const FROM: &str = "x-server-from";
const CLUSTER: &str = "x-etcd-cluster-id";

/// `(member id, cluster id)` of the member `client` talks to.
async fn ids(client: &mut etcd_client::Client) -> (u64, u64) {
    let status = client.status().await.expect("status");
    let h = status.header().expect("header");
    (h.member_id(), h.cluster_id())
}

/// A request claiming to come from `from` of cluster `cluster` (either may be left out).
fn claiming<T>(message: T, from: Option<u64>, cluster: Option<u64>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(from) = from {
        request
            .metadata_mut()
            .insert(FROM, format!("{from:x}").parse().unwrap());
    }
    if let Some(cluster) = cluster {
        request
            .metadata_mut()
            .insert(CLUSTER, format!("{cluster:x}").parse().unwrap());
    }
    request
}

fn put_command(key: &str, proposer_id: u64) -> Vec<u8> {
    Command {
        op: Some(command::Op::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"stranger".to_vec(),
            ..Default::default()
        })),
        proposer_id,
        request_seq: 1,
        requester: None,
        forwarded_to: None,
    }
    .encode_to_vec()
}

async fn peer_client(url: &str) -> PeerClient<Channel> {
    PeerClient::connect(url.to_string())
        .await
        .expect("connect to the peer port")
}

fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) -> String {
    match result {
        Err(status) if status.code() == Code::PermissionDenied => status.message().to_string(),
        other => panic!("{what}: a stranger must be refused, got {other:?}"),
    }
}

/// Propose, Vote, AppendEntries, InstallSnapshot and every other peer request from someone who is
/// not a member of the cluster are refused (PermissionDenied, before decoding), whatever it claims;
/// nothing is applied. A flood of such requests costs the member no memory to speak of and its
/// clients no latency, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_peer_port_are_refused_and_nothing_is_applied() {
    let _alone = one_at_a_time().await;
    let cluster = TestCluster::start(1);
    let member = &cluster.members[0];
    let mut client = member.client().await;
    client.put("abuse/probe", "v", None).await.expect("put");
    let (me, cluster_id) = ids(&mut client).await;
    let revision_before = client
        .get("abuse/probe", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut peer = peer_client(&member.peer_url()).await;

    // A forwarded write: without ids, with a foreign cluster, with a stranger's member id, and
    // from a member (the member's own id) forwarding another's command.
    let cases: [(Option<u64>, Option<u64>, u64, &str); 4] = [
        (None, None, me, "cluster ID mismatch"),
        (Some(me), Some(cluster_id ^ 1), me, "cluster ID mismatch"),
        (Some(0xdead), Some(cluster_id), 0xdead, "not found"),
        (Some(me), Some(cluster_id), 0xbeef, "forwards a command"),
    ];
    for (from, cluster, proposer, why) in cases {
        let req = ProposeRequest {
            command: put_command("stranger/k", proposer),
        };
        let msg = refused("Propose", peer.propose(claiming(req, from, cluster)).await);
        assert!(msg.contains(why), "{msg:?} should say {why:?}");
        // The same command in a batch, after one the member could take: the whole batch is
        // refused.
        let req = ProposeManyRequest {
            commands: vec![
                put_command("stranger/batch", me),
                put_command("stranger/k", proposer),
            ],
        };
        let msg = refused(
            "ProposeMany",
            peer.propose_many(claiming(req, from, cluster)).await,
        );
        assert!(msg.contains(why), "{msg:?} should say {why:?}");
    }
    // A batch longer than any member sends is refused before anything of it is proposed.
    let too_many = metastore::limits::FORWARD_BATCH_COMMANDS + 1;
    let req = ProposeManyRequest {
        commands: vec![put_command("stranger/many", me); too_many],
    };
    let status = peer
        .propose_many(claiming(req, Some(me), Some(cluster_id)))
        .await
        .expect_err("an over-long batch");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("commands in one batch"),
        "{status:?}"
    );
    // Raft's own messages: refused before their (garbage) payload is even looked at.
    let garbage = || RaftPayload {
        data: vec![0xff; 64],
    };
    let stranger = Some(0xdead);
    refused(
        "Vote",
        peer.vote(claiming(garbage(), stranger, Some(cluster_id)))
            .await,
    );
    refused("Vote", peer.vote(claiming(garbage(), None, None)).await);
    refused(
        "AppendEntries",
        peer.append_entries(claiming(garbage(), stranger, Some(cluster_id)))
            .await,
    );
    refused(
        "ChangeMembers",
        peer.change_members(claiming(garbage(), stranger, Some(cluster_id)))
            .await,
    );
    refused(
        "TransferLeader",
        peer.transfer_leader(claiming(garbage(), stranger, Some(cluster_id)))
            .await,
    );
    refused(
        "ReadIndex",
        peer.read_index(claiming(ReadIndexRequest {}, stranger, Some(cluster_id)))
            .await,
    );
    refused(
        "LeaseKeepAlive",
        peer.lease_keep_alive(claiming(LeaseRequest { id: 1 }, stranger, Some(cluster_id)))
            .await,
    );
    let chunk = SnapshotChunk {
        header: vec![1, 2, 3],
        data: vec![0xff; 1024],
        last: true,
    };
    let snapshot = futures::stream::iter(vec![chunk]);
    refused(
        "InstallSnapshot",
        peer.install_snapshot(claiming(snapshot, stranger, Some(cluster_id)))
            .await,
    );
    let appends = futures::stream::iter(vec![garbage()]);
    refused(
        "AppendStream",
        peer.append_stream(claiming(appends, stranger, Some(cluster_id)))
            .await,
    );
    // The one request anyone may make: a joining member asks for the member list.
    peer.members(MembersRequest {})
        .await
        .expect("Members is served to a member that does not know its id yet");

    // A flood of strangers' proposals while a client works.
    let probe = Probe::start(&member.endpoint());
    let mut quiet = probe.latencies(200).await;
    let quiet = p99(&mut quiet);
    let baseline = settled_footprint(&member.endpoint()).await;
    let pid = member_pid(member);
    let rss_before = rss_kib(pid);
    let mut flood = Vec::new();
    for i in 0..4u64 {
        let mut peer = peer.clone();
        flood.push(tokio::spawn(async move {
            for j in 0..500u64 {
                let req = ProposeRequest {
                    command: put_command(&format!("stranger/{i}/{j}"), 0xdead),
                };
                let result = peer
                    .propose(claiming(req, Some(0xdead), Some(cluster_id)))
                    .await;
                assert_eq!(result.unwrap_err().code(), Code::PermissionDenied);
            }
        }));
    }
    let mut attacked = probe.latencies(100).await;
    for f in flood {
        f.await.expect("flood");
    }
    assert_p99_within(quiet, p99(&mut attacked));
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown <= RSS_BUDGET_KIB, "RSS grew by {grown} KiB");
    drop(peer);
    back_to_baseline(&member.endpoint(), baseline, 2, CLEANUP_DEADLINE).await;

    let found = client
        .get(
            "stranger/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("range");
    assert_eq!(found.count(), 0, "no stranger's write was applied");
    // The probe's puts are the only writes since.
    let probe = client.get("abuse/probe", None).await.unwrap();
    assert_eq!(probe.kvs()[0].value(), b"v");
    assert!(probe.header().unwrap().revision() >= revision_before);
}

/// The process id of a cluster member (from its client port, through /proc).
fn member_pid(member: &common::ClusterMember) -> u32 {
    let port = format!(":{:04X}", member.client_port);
    let inode = std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp")
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].ends_with(&port) && f[3] == "0A").then(|| f[9].to_string())
        })
        .expect("the member's listening socket");
    let target = format!("socket:[{inode}]");
    for proc_dir in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = proc_dir.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                return pid;
            }
        }
    }
    panic!("no process holds the member's client port");
}

/// A snapshot stream that stays open, sending nothing, until the sender returned is dropped.
fn stalled_stream() -> (
    tokio::sync::mpsc::Sender<SnapshotChunk>,
    impl futures::Stream<Item = SnapshotChunk>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(1);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (tx, stream)
}

/// A snapshot transfer whose sender stops sending (without closing the stream) does not hold the
/// receive: a newer transfer takes its place at once, and one left alone is dropped after the
/// chunk deadline (10 s), after which the next is accepted. Sent as the member itself: only a
/// member may send snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_snapshot_receive_makes_way_for_the_next() {
    let _alone = one_at_a_time().await;
    let chunk_deadline = metastore::limits::SNAPSHOT_CHUNK_RECEIVE_TIMEOUT;
    let cluster = TestCluster::start(1);
    let member = &cluster.members[0];
    let mut client = member.client().await;
    let (me, cluster_id) = ids(&mut client).await;
    let peer = peer_client(&member.peer_url()).await;
    let ours = (Some(me), Some(cluster_id));
    // A chunk whose header is no snapshot header: a receive that took it answers InvalidArgument
    // (and installs nothing); one refused for a transfer in progress answers Unavailable.
    let bad = || SnapshotChunk {
        header: vec![0xff; 16],
        data: Vec::new(),
        last: true,
    };

    // A: opens a transfer and stalls.
    let (hold_a, stream_a) = stalled_stream();
    let mut p = peer.clone();
    let request_a = claiming(stream_a, ours.0, ours.1);
    let a = tokio::spawn(async move { p.install_snapshot(request_a).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!a.is_finished(), "A holds the receive");

    // B: a newer transfer is accepted at once; A is told to make way.
    let started = Instant::now();
    let mut p = peer.clone();
    let b = p
        .install_snapshot(claiming(futures::stream::iter(vec![bad()]), ours.0, ours.1))
        .await;
    assert_eq!(
        b.as_ref().map(|_| ()).unwrap_err().code(),
        Code::InvalidArgument,
        "B was taken: {b:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let a = tokio::time::timeout(Duration::from_secs(2), a)
        .await
        .expect("A ends once superseded")
        .expect("join");
    assert_eq!(a.unwrap_err().code(), Code::Aborted);
    drop(hold_a);

    // C: stalls and nobody comes after it: dropped after the chunk deadline.
    let (hold_c, stream_c) = stalled_stream();
    let mut p = peer.clone();
    let started = Instant::now();
    let c = p.install_snapshot(claiming(stream_c, ours.0, ours.1)).await;
    let waited = started.elapsed();
    assert_eq!(c.unwrap_err().code(), Code::DeadlineExceeded);
    assert!(
        waited >= chunk_deadline - Duration::from_millis(500)
            && waited <= chunk_deadline + Duration::from_secs(3),
        "dropped after {waited:?}, the chunk deadline is {chunk_deadline:?}"
    );
    drop(hold_c);

    // D: the next transfer is accepted.
    let mut p = peer.clone();
    let d = p
        .install_snapshot(claiming(futures::stream::iter(vec![bad()]), ours.0, ours.1))
        .await;
    assert_eq!(d.unwrap_err().code(), Code::InvalidArgument);
    // The member still serves.
    client.put("after", "v", None).await.expect("put");
}

/// Leases granted while leadership moves expire on time once their client is gone: the new
/// leader takes up every lease of the applied state once it has applied its own term's first
/// entry. Bound: a lease is revoked at most its TTL plus one election timeout of grace (what a new
/// leader adds, as etcd's lessor does on promotion) plus 1.5 s (expiry check and revoke commit)
/// after the later of its grant and the end of the leader change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_granted_during_a_leader_change_expire_on_time() {
    let _alone = one_at_a_time().await;
    const TTL_SECS: i64 = 3;
    let grace = Duration::from_millis(metastore::limits::ELECTION_TIMEOUT_MS);
    let slack = Duration::from_millis(1500);
    let cluster = TestCluster::start(3);
    for round in 0..3 {
        let leader = cluster.leader().await;
        let target = (leader + 1) % 3;
        let grantor = (leader + 2) % 3;
        let mut to_target = cluster.members[target].client().await;
        let (target_id, _) = ids(&mut to_target).await;
        let mut members = Vec::new();
        for m in &cluster.members {
            members.push(m.client().await);
        }
        let mover = tokio::spawn(async move {
            // Grants go out while this runs.
            tokio::time::sleep(Duration::from_millis(200)).await;
            // MoveLeader must reach the leader. Leadership may already have moved since it was
            // asked (a member of a fresh cluster that starts its first election late can
            // unseat the first leader): ask whoever leads now, until one takes it.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                for c in &mut members {
                    match c.move_leader(target_id).await {
                        Ok(_) => return Instant::now(),
                        Err(e) if e.to_string().contains("etcdserver: not leader") => {}
                        Err(e) => panic!("move leader: {e:?}"),
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "no leader took MoveLeader in 10 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        // Grants through a follower and through the old leader, before, during and after the
        // change; the clients never keep them alive.
        let mut granted = Vec::new();
        for i in 0..12 {
            let via = if i % 2 == 0 { grantor } else { leader };
            let mut c = cluster.members[via].client().await;
            let Ok(lease) = c.lease_grant(TTL_SECS, None).await else {
                // Refused while there is no leader: nothing to expire.
                continue;
            };
            let key = format!("lease-change/{round}/{i}");
            let opts = etcd_client::PutOptions::new().with_lease(lease.id());
            if c.put(key.clone(), "v", Some(opts)).await.is_ok() {
                granted.push((key, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let changed = mover.await.expect("mover");
        assert!(granted.len() >= 6, "most grants went through: {granted:?}");
        let mut c = cluster.members[grantor].client().await;
        for (key, at) in granted {
            let due = at.max(changed) + Duration::from_secs(TTL_SECS as u64) + grace + slack;
            loop {
                let left = c.get(key.clone(), None).await.expect("get").count();
                if left == 0 {
                    break;
                }
                assert!(
                    Instant::now() < due,
                    "round {round}: {key} outlived its lease (TTL {TTL_SECS} s + {grace:?} + \
                     {slack:?} after the grant or the leader change)"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
