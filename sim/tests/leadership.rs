//! Leadership changes a client cannot see coming, replayed exactly by seed:
//!
//! - **A founder that starts late** (its peers have already elected a leader) joins that leader
//!   instead of unseating it: the leader and the raft term stay as they were.
//! - **Leases granted while leadership moves** (a leader transfer, or the leader killed and
//!   restarted later), whose clients never keep them alive, are revoked within their TTL plus
//!   the grace a new leader adds plus a stated bound, counted from the later of the grant and the
//!   end of the change.
//! - **Writes through the followers while the leader is killed** are each acknowledged, once,
//!   well within the request deadline: a put that was on its way to the dead leader is sent
//!   again as soon as the follower has applied the new leader's first entry without it (the
//!   leader fence of `metastore::raft::forwards`), instead of waiting out the deadline.
//!
//! The real-binary version of the lease scenario is `tests/abuse_peer.rs`; this one is
//! deterministic: a failing seed replays with `METASTORE_SIM_SEEDS=<seed>`.
#![cfg(madsim)]

use std::time::Duration;

use madsim::runtime::{Handle, Runtime};
use madsim::time::Instant;
use metastore::pb::etcdserverpb::lease_client::LeaseClient;
use metastore::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use metastore::pb::etcdserverpb::{
    LeaseGrantRequest, MoveLeaderRequest, PutRequest, RangeRequest, StatusRequest,
};
use metastore_sim::cluster::{connect, initial_cluster, SimMember};
use metastore_sim::trace::Trace;

/// Seeds each run covers; override with `METASTORE_SIM_SEEDS=a,b,c`.
fn seeds() -> Vec<u64> {
    metastore_sim::trace::seeds(1..=30)
}

const MEMBERS: [(&str, &str); 3] = [("m1", "10.0.2.1"), ("m2", "10.0.2.2"), ("m3", "10.0.2.3")];

/// TTL of the leases granted during the change.
const TTL_SECS: i64 = 3;

/// What a key may outlive its lease by, beyond the TTL and the new leader's grace: the expiry
/// check's period and the revoke's commit (the real-binary test states the same bound).
const EXPIRY_SLACK: Duration = Duration::from_millis(1500);

fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `(member id, leader id, raft term)` as member `url` reports them, if it answers.
async fn status(url: &str) -> Option<(u64, u64, u64)> {
    let mut m = MaintenanceClient::connect(url.to_string()).await.ok()?;
    let s = madsim::time::timeout(Duration::from_secs(2), m.status(StatusRequest {}))
        .await
        .ok()?
        .ok()?
        .into_inner();
    Some((s.header?.member_id, s.leader, s.raft_term))
}

/// The index in `urls` of the member that leads (it says so itself), with its id and term
/// (bounded wait).
async fn leader(urls: &[String]) -> (usize, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for (i, url) in urls.iter().enumerate() {
            if let Some((me, leader, term)) = status(url).await {
                if leader != 0 && leader == me {
                    return (i, me, term);
                }
            }
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader within 30 s of simulated time");
}

/// Three founders started together, a client node, and the leader they elected.
struct Three {
    members: Vec<SimMember>,
    urls: Vec<String>,
    client: madsim::runtime::NodeHandle,
    /// Index in `members`, member id, raft term.
    leader: (usize, u64, u64),
}

impl Three {
    async fn start(handle: &Handle) -> Three {
        let cluster = initial_cluster(&MEMBERS);
        let members: Vec<SimMember> = MEMBERS
            .iter()
            .map(|(name, ip)| SimMember::start_in(handle, name, ip, &cluster))
            .collect();
        let urls: Vec<String> = members.iter().map(SimMember::url).collect();
        let client = handle
            .create_node()
            .name("client")
            .ip("10.0.2.100".parse().unwrap())
            .build();
        let u = urls.clone();
        let leader = client
            .spawn(async move { leader(&u).await })
            .await
            .expect("leader");
        Three {
            members,
            urls,
            client,
            leader,
        }
    }
}

/// Two founders start; once they have a leader the third starts. For a while after, every member
/// must report that same leader in that same term.
async fn late_founder(seed: u64, trace: Trace) {
    let handle = Handle::current();
    let cluster = initial_cluster(&MEMBERS);
    let late = (seed % 3) as usize;
    let mut members: Vec<Option<SimMember>> = MEMBERS
        .iter()
        .enumerate()
        .map(|(i, (name, ip))| {
            (i != late).then(|| SimMember::start_in(&handle, name, ip, &cluster))
        })
        .collect();
    let urls: Vec<String> = MEMBERS
        .iter()
        .map(|(_, ip)| format!("http://{ip}:{}", metastore_sim::cluster::CLIENT_PORT))
        .collect();
    let client = handle
        .create_node()
        .name("client")
        .ip("10.0.2.100".parse().unwrap())
        .build();
    let early: Vec<String> = (0..3)
        .filter(|i| *i != late)
        .map(|i| urls[i].clone())
        .collect();
    let (_, leader_id, term) = client
        .spawn(async move { leader(&early).await })
        .await
        .expect("leader");
    trace.record(format!(
        "m{} starts late; leader {leader_id:x} in term {term}",
        late + 1
    ));
    // A moment later than the election, as a slow process start would be.
    let pause = Duration::from_millis(mix64(seed) % 300);
    madsim::time::sleep(pause).await;
    let (name, ip) = MEMBERS[late];
    members[late] = Some(SimMember::start_in(&handle, name, ip, &cluster));
    let t = trace.clone();
    client
        .spawn(async move {
            // Three election timeouts: long enough for a late election to have unseated the
            // leader and for the cluster to have settled again.
            let until =
                Instant::now() + Duration::from_millis(3 * metastore::limits::ELECTION_TIMEOUT_MS);
            let mut late_followed = false;
            while Instant::now() < until {
                for (i, url) in urls.iter().enumerate() {
                    let Some((me, leader, now_term)) = status(url).await else {
                        continue;
                    };
                    if leader == 0 {
                        continue;
                    }
                    assert_eq!(
                        (leader, now_term),
                        (leader_id, term),
                        "seed {seed}: m{} (id {me:x}) reports leader {leader:x} in term \
                         {now_term}; the leader before the late start was {leader_id:x} in term \
                         {term}",
                        i + 1
                    );
                    late_followed |= i == late;
                }
                madsim::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                late_followed,
                "seed {seed}: the late founder never found the leader"
            );
            t.record("leader and term unchanged");
        })
        .await
        .expect("checks");
    drop(members);
}

/// Grant leases through every member while leadership moves (a transfer, or a kill of the
/// leader with a restart later, by seed); the clients never keep them alive. Every leased key
/// must be gone within the bound.
async fn leases_across_a_change(seed: u64, trace: Trace) {
    let handle = Handle::current();
    let Three {
        members,
        urls,
        client,
        leader: (old, old_id, term),
    } = Three::start(&handle).await;
    let kill = seed % 2 == 0;
    trace.record(format!(
        "leader m{} ({old_id:x}) in term {term}; the change: {}",
        old + 1,
        if kill { "kill" } else { "transfer" }
    ));
    let change_at = Duration::from_millis(100 + mix64(seed) % 400);
    let target = (old + 1 + (mix64(seed ^ 1) % 2) as usize) % 3;

    // The granter: a lease and a key every 60 ms through the members in turn.
    let u = urls.clone();
    let granter = client.spawn(async move {
        let mut granted = Vec::new();
        for i in 0..20u64 {
            let url = &u[(mix64(seed ^ (i << 8)) % 3) as usize];
            let attempt = async {
                let mut lease = LeaseClient::connect(url.clone()).await.ok()?;
                let id = lease
                    .lease_grant(LeaseGrantRequest {
                        ttl: TTL_SECS,
                        id: 0,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .id;
                let key = format!("lease/{seed}/{i}");
                let mut kv = connect(url).await;
                kv.put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: b"v".to_vec(),
                    lease: id,
                    ..Default::default()
                })
                .await
                .ok()?;
                Some(key)
            };
            // A grant or put refused (no leader) or unanswered leaves nothing to expire, or
            // a lease whose key was never attached.
            if let Ok(Some(key)) = madsim::time::timeout(Duration::from_secs(2), attempt).await {
                granted.push((key, Instant::now()));
            }
            madsim::time::sleep(Duration::from_millis(60)).await;
        }
        granted
    });

    // The change.
    madsim::time::sleep(change_at).await;
    if kill {
        members[old].crash(&handle);
        trace.record(format!("killed m{}", old + 1));
    } else {
        let old_url = urls[old].clone();
        let target_id = client
            .spawn({
                let url = urls[target].clone();
                async move { status(&url).await.expect("target status").0 }
            })
            .await
            .expect("target id");
        client
            .spawn(async move {
                let mut m = MaintenanceClient::connect(old_url).await.expect("connect");
                m.move_leader(MoveLeaderRequest { target_id })
                    .await
                    .expect("move leader");
            })
            .await
            .expect("mover");
        trace.record(format!("moved leadership to m{}", target + 1));
    }
    let survivors: Vec<String> = (0..3)
        .filter(|i| !kill || *i != old)
        .map(|i| urls[i].clone())
        .collect();
    let s = survivors.clone();
    let (_, new_id, new_term) = client
        .spawn(async move { leader(&s).await })
        .await
        .expect("new leader");
    let changed = Instant::now();
    trace.record(format!("leader {new_id:x} in term {new_term}"));
    if kill {
        // The old leader comes back later, a follower with leases in its state.
        madsim::time::sleep(Duration::from_millis(500 + mix64(seed ^ 2) % 1500)).await;
        members[old].restart(&handle);
        trace.record(format!("restarted m{}", old + 1));
    }
    let granted = granter.await.expect("granter");
    assert!(
        granted.len() >= 8,
        "seed {seed}: most grants went through: {granted:?}"
    );
    trace.record(format!("{} leases granted", granted.len()));

    let grace = Duration::from_millis(metastore::limits::ELECTION_TIMEOUT_MS);
    let reader = survivors[0].clone();
    let t = trace.clone();
    client
        .spawn(async move {
            let mut kv = connect(&reader).await;
            for (key, at) in granted {
                let due =
                    at.max(changed) + Duration::from_secs(TTL_SECS as u64) + grace + EXPIRY_SLACK;
                loop {
                    let read = kv.range(RangeRequest {
                        key: key.clone().into_bytes(),
                        ..Default::default()
                    });
                    if let Ok(Ok(r)) = madsim::time::timeout(Duration::from_secs(2), read).await {
                        if r.into_inner().count == 0 {
                            break;
                        }
                    }
                    assert!(
                        Instant::now() < due,
                        "seed {seed}: {key} outlived its lease: TTL {TTL_SECS} s + {grace:?} + \
                         {EXPIRY_SLACK:?} after the later of its grant and the leader change"
                    );
                    madsim::time::sleep(Duration::from_millis(100)).await;
                }
            }
            t.record("every leased key gone in time");
        })
        .await
        .expect("checks");
}

/// How long after the new leader is known a put through a follower may still be unanswered:
/// the follower learns the leader from its first heartbeat, applies its first entry, and sends
/// the put again. The election itself may take several rounds (raft's timeouts, a split vote),
/// so the bound counts from when a survivor first reports the new leader, not from the kill.
const RESEND_BOUND: Duration = Duration::from_secs(1);

/// Two writers put fresh keys back to back, each through one follower, while the leader is
/// killed (and not restarted). Every put must be acknowledged (none fails at the request
/// deadline, as a put on its way to the dead leader used to), no later than [`RESEND_BOUND`]
/// after the later of its sending and the new leader's election, and every key must have been
/// written exactly once (version 1).
async fn writes_through_followers_across_a_kill(seed: u64, trace: Trace) {
    let handle = Handle::current();
    let Three {
        members,
        urls,
        client,
        leader: (old, old_id, term),
    } = Three::start(&handle).await;
    trace.record(format!("leader m{} ({old_id:x}) in term {term}", old + 1));
    let followers: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let writers: Vec<_> = followers
        .iter()
        .map(|&f| {
            let url = urls[f].clone();
            client.spawn(async move {
                let mut kv = connect(&url).await;
                let mut done = Vec::new();
                let until = Instant::now() + Duration::from_secs(3);
                let mut i = 0u64;
                while Instant::now() < until {
                    let key = format!("w/{seed}/m{}/{i}", f + 1);
                    let sent = Instant::now();
                    let put = kv.put(PutRequest {
                        key: key.clone().into_bytes(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    });
                    let answer = madsim::time::timeout(Duration::from_secs(20), put).await;
                    assert!(
                        matches!(answer, Ok(Ok(_))),
                        "seed {seed}: put {key} through m{} failed after {:?}: {answer:?}",
                        f + 1,
                        sent.elapsed()
                    );
                    done.push((key, sent, Instant::now()));
                    i += 1;
                }
                done
            })
        })
        .collect();
    madsim::time::sleep(Duration::from_millis(200 + mix64(seed) % 600)).await;
    members[old].crash(&handle);
    trace.record(format!("killed m{}", old + 1));
    let survivors: Vec<String> = followers.iter().map(|&f| urls[f].clone()).collect();
    let (next, next_id, next_term) = client
        .spawn(async move { leader(&survivors).await })
        .await
        .expect("new leader");
    trace.record(format!(
        "new leader m{} ({next_id:x}) in term {next_term}",
        followers[next] + 1
    ));
    let elected = Instant::now();
    let (mut keys, mut slowest) = (Vec::new(), Duration::ZERO);
    for w in writers {
        for (key, sent, done) in w.await.expect("writer") {
            let late = done.saturating_duration_since(sent.max(elected));
            assert!(
                late <= RESEND_BOUND,
                "seed {seed}: put {key} was answered {late:?} after the later of its sending and \
                 the new leader's election (bound {RESEND_BOUND:?})"
            );
            slowest = slowest.max(done - sent);
            keys.push(key);
        }
    }
    trace.record(format!(
        "{} puts acknowledged, the slowest in {} ms",
        keys.len(),
        slowest.as_millis()
    ));
    let reader = urls[followers[0]].clone();
    let t = trace.clone();
    client
        .spawn(async move {
            let mut kv = connect(&reader).await;
            for key in keys {
                let r = kv
                    .range(RangeRequest {
                        key: key.clone().into_bytes(),
                        ..Default::default()
                    })
                    .await
                    .expect("read")
                    .into_inner();
                let versions: Vec<i64> = r.kvs.iter().map(|kv| kv.version).collect();
                assert_eq!(
                    versions,
                    vec![1],
                    "seed {seed}: {key} must have been written exactly once"
                );
            }
            t.record("every put applied exactly once");
        })
        .await
        .expect("checks");
}

/// Run `scenario` for `seed` in a fresh simulation; its trace's digest and lines.
fn simulate<F: std::future::Future<Output = ()>>(
    seed: u64,
    scenario: impl FnOnce(u64, Trace) -> F,
) -> (u64, Vec<String>) {
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async move {
        let trace = Trace::new();
        scenario(seed, trace.clone()).await;
        (trace.digest(), trace.lines())
    })
}

#[test]
fn a_late_founder_joins_the_leader_instead_of_unseating_it() {
    for seed in seeds() {
        metastore_sim::trace::run_twice(seed, |s| simulate(s, late_founder));
    }
}

#[test]
fn leases_granted_while_leadership_moves_expire_on_time() {
    for seed in seeds() {
        metastore_sim::trace::run_twice(seed, |s| simulate(s, leases_across_a_change));
    }
}

#[test]
fn writes_through_followers_survive_a_leader_kill_once_and_in_time() {
    for seed in seeds() {
        metastore_sim::trace::run_twice(seed, |s| {
            simulate(s, writes_through_followers_across_a_kill)
        });
    }
}
