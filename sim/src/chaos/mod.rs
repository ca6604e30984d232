//! The chaos scenario: a 3- or 5-member cluster under a seed-driven nemesis while concurrent
//! clients run every kind of workload, then a liveness phase; every history is checked.
//!
//! One seed decides everything: the fault mix ([`Mix`], drawn from the seed alone: swarm
//! testing), the nemesis's schedule, the clients' choices and the server's BUGGIFY points (madsim's
//! seeded generator). A run is:
//!
//! 1. **Safety phase** ([`SAFETY_PHASE`] of simulated time): KV clients (put, linearizable get,
//!    delete, compare-and-swap txn), a prefix-range reader, two watchers (one from revision 1, one
//!    from the head), lease clients and a compactor run while the nemesis injects the seed's
//!    faults, overlapping: random-halves partitions, leader isolation, one-way link cuts, packet
//!    loss and latency spikes, power cuts with restarts, slow disks, a disk whose fsyncs fail (the
//!    member must stop, and is later restarted on a new disk), and a leader isolated right after
//!    it received a proposal.
//! 2. **Liveness phase**: every fault is healed and stopped members restart; within
//!    [`LIVENESS_BOUND`] of simulated time a leader is elected, the clients finish, a final write
//!    to every key succeeds and is read (linearizably) through every member, every watcher catches up, every
//!    member's `HashKV` agrees, and a fresh lease with its keep-alives stopped takes its key with
//!    it within its TTL + [`LEASE_EXPIRY_BOUND`].
//! 3. **Checks**: the KV history is linearizable (puts, gets, deletes, CAS, prefix ranges),
//!    no client saw a revision go backwards, every watcher saw exactly the committed events in
//!    order, no key outlived its revoked or expired lease, and no key is attached to a missing
//!    lease.

pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use metastore::pb::etcdserverpb::kv_client::KvClient;
use metastore::pb::etcdserverpb::lease_client::LeaseClient;
use metastore::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use metastore::pb::etcdserverpb::{
    HashKvRequest, LeaseLeasesRequest, PutRequest, RangeRequest, StatusRequest,
};

use crate::cluster::{self, initial_cluster, SimMember};
use crate::leases;
use crate::linearizability::{self, Event, Op, Verdict};
use crate::revisions;
use crate::trace::Trace;
use crate::watches::{self, Change, Committed};
use workload::{random, Recorder, CALL_TIMEOUT, KEYS};

/// Simulated time the nemesis runs while the clients work.
pub const SAFETY_PHASE: Duration = Duration::from_secs(20);

/// Simulated time from healing every fault to a cluster that has a leader, finished every client
/// call, caught every watcher up and converged.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(30);

/// How long after its expiry (TTL after the last keep-alive sent) a key may outlive its lease on a
/// quiet cluster: the leader checks expiries every half second and the revoke is one commit.
pub const LEASE_EXPIRY_BOUND: Duration = Duration::from_secs(2);

/// Search budget of the linearizability checker, per key.
pub const CHECK_BUDGET: u64 = 5_000_000;

/// Every simulated member there can be; a run uses the first 3 or 5.
const MEMBERS: [(&str, &str); 5] = [
    ("m1", "10.0.2.1"),
    ("m2", "10.0.2.2"),
    ("m3", "10.0.2.3"),
    ("m4", "10.0.2.4"),
    ("m5", "10.0.2.5"),
];

/// splitmix64: a fixed function of the seed, independent of the simulator's own randomness.
fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The kinds of fault the nemesis knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The members split in two random groups that cannot talk.
    RandomHalves,
    /// The leader is cut off from everyone.
    IsolateLeader,
    /// One member cannot send to another (asymmetric).
    OneWayLink,
    /// Packet loss and latency on the whole network.
    LossyNetwork,
    /// A member loses power (unsynced writes lost) and restarts later.
    PowerCut,
    /// A member's fsyncs become slow.
    SlowDisk,
    /// A member's fsyncs fail: it must stop; later it restarts on a repaired disk.
    FsyncFailure,
    /// A proposal goes to the leader, which is isolated right after receiving it.
    LeaderLossMidProposal,
}

const ALL_FAULTS: [Fault; 8] = [
    Fault::RandomHalves,
    Fault::IsolateLeader,
    Fault::OneWayLink,
    Fault::LossyNetwork,
    Fault::PowerCut,
    Fault::SlowDisk,
    Fault::FsyncFailure,
    Fault::LeaderLossMidProposal,
];

/// One seed's fault mix and rates (swarm testing: each seed explores its own corner).
#[derive(Debug, Clone)]
pub struct Mix {
    pub seed: u64,
    pub members: usize,
    /// The fault kinds this seed uses (at least one).
    pub faults: Vec<Fault>,
    /// Mean pause between two faults.
    pub fault_interval_ms: u64,
    /// Loss rate while the network is lossy: 0-30 %.
    pub loss: f64,
    /// Largest one-way latency while the network is lossy.
    pub latency_ms: u64,
    /// Whether the server's BUGGIFY points are on.
    pub buggify: bool,
    /// Raft snapshot every this many entries (small: members behind get snapshots).
    pub snapshot_count: u64,
    pub kv_clients: usize,
    pub lease_clients: usize,
    pub compaction: bool,
}

impl Mix {
    pub fn draw(seed: u64) -> Self {
        let r = |i: u64| mix64(seed.wrapping_mul(0x2545_f491).wrapping_add(i));
        let mut faults: Vec<Fault> = ALL_FAULTS
            .iter()
            .enumerate()
            .filter(|(i, _)| r(10 + *i as u64) % 2 == 0)
            .map(|(_, f)| *f)
            .collect();
        if faults.is_empty() {
            faults.push(ALL_FAULTS[(r(9) % ALL_FAULTS.len() as u64) as usize]);
        }
        Mix {
            seed,
            members: if r(1) % 3 == 0 { 5 } else { 3 },
            faults,
            fault_interval_ms: 300 + r(2) % 2700,
            loss: (r(3) % 31) as f64 / 100.0,
            latency_ms: 1 + r(4) % 100,
            buggify: r(5) % 4 != 0,
            snapshot_count: 20 + r(6) % 200,
            kv_clients: 1 + (r(7) % 3) as usize,
            lease_clients: (r(8) % 2) as usize + 1,
            compaction: r(20) % 2 == 0,
        }
    }
}

/// The cluster as the nemesis sees it.
struct Cluster {
    handle: Handle,
    members: Vec<SimMember>,
    urls: Vec<String>,
    trace: Trace,
    /// The simulated machine the clients run on.
    clients: NodeHandle,
}

impl Cluster {
    fn name(&self, i: usize) -> &'static str {
        MEMBERS[i].0
    }

    fn id(&self, i: usize) -> madsim::task::NodeId {
        self.members[i].node.id()
    }

    /// The member that says it leads, asked with short deadlines (None if none answers so).
    async fn leader(&self) -> Option<usize> {
        for (i, url) in self.urls.iter().enumerate() {
            let connect = MaintenanceClient::connect(url.clone());
            let Ok(Ok(mut m)) = madsim::time::timeout(Duration::from_millis(500), connect).await
            else {
                continue;
            };
            let status = madsim::time::timeout(Duration::from_secs(1), m.status(StatusRequest {}));
            if let Ok(Ok(s)) = status.await {
                let s = s.into_inner();
                if s.leader != 0 && s.header.map(|h| h.member_id) == Some(s.leader) {
                    return Some(i);
                }
            }
        }
        None
    }
}

/// A fault in force and how to undo it.
enum Active {
    Links(Vec<(usize, usize)>),
    Network,
    Down(usize),
    SlowDisk(usize),
    BrokenDisk(usize),
}

/// The nemesis: until `stop`, pick one of the mix's faults at random times, hold it a while
/// (faults overlap), undo it when its time comes. Returns what it did, per kind.
async fn nemesis(c: &Cluster, mix: &Mix, rec: &Recorder) -> BTreeMap<String, u64> {
    let net = NetSim::current();
    let calm = {
        let mut calm = None;
        net.update_config(|cfg| calm = Some(cfg.clone()));
        calm.expect("network configuration")
    };
    let n = mix.members;
    let mut active: Vec<(madsim::time::Instant, Active)> = Vec::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let end = madsim::time::Instant::now() + SAFETY_PHASE;
    while madsim::time::Instant::now() < end {
        madsim::time::sleep(Duration::from_millis(
            random(2 * mix.fault_interval_ms) + 50,
        ))
        .await;
        let now = madsim::time::Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) =
            active.into_iter().partition(|(until, _)| *until <= now);
        active = keep;
        for (_, fault) in due {
            undo(c, fault, &calm).await;
        }
        let fault = mix.faults[random(mix.faults.len() as u64) as usize];
        let hold = Duration::from_millis(300 + random(4000));
        let until = madsim::time::Instant::now() + hold;
        let busy: BTreeSet<usize> = active
            .iter()
            .filter_map(|(_, a)| match a {
                Active::Down(i) | Active::SlowDisk(i) | Active::BrokenDisk(i) => Some(*i),
                _ => None,
            })
            .collect();
        let free: Vec<usize> = (0..n).filter(|i| !busy.contains(i)).collect();
        let any_free = || free.get(random(free.len() as u64) as usize).copied();
        let applied = match fault {
            Fault::RandomHalves => {
                let side: Vec<bool> = (0..n).map(|_| random(2) == 0).collect();
                let links: Vec<(usize, usize)> = (0..n)
                    .flat_map(|a| (0..n).map(move |b| (a, b)))
                    .filter(|(a, b)| side[*a] != side[*b])
                    .collect();
                for (a, b) in &links {
                    net.clog_link(c.id(*a), c.id(*b));
                }
                let group: Vec<&str> = (0..n).filter(|i| side[*i]).map(|i| c.name(i)).collect();
                c.trace
                    .record(format!("nemesis: partition {group:?} | rest for {hold:?}"));
                Some(Active::Links(links))
            }
            Fault::IsolateLeader => c
                .leader()
                .await
                .map(|l| isolate(c, l, hold, "isolate leader")),
            Fault::OneWayLink => {
                let a = random(n as u64) as usize;
                let b = (a + 1 + random(n as u64 - 1) as usize) % n;
                net.clog_link(c.id(a), c.id(b));
                c.trace.record(format!(
                    "nemesis: cut {} -> {} one way for {hold:?}",
                    c.name(a),
                    c.name(b)
                ));
                Some(Active::Links(vec![(a, b)]))
            }
            Fault::LossyNetwork => {
                let loss = mix.loss * (1 + random(100)) as f64 / 100.0;
                let latency = 1 + random(mix.latency_ms);
                net.update_config(|cfg| {
                    cfg.packet_loss_rate = loss;
                    cfg.send_latency = Duration::from_millis(1)..Duration::from_millis(latency + 1);
                });
                c.trace.record(format!(
                    "nemesis: network loss {loss:.3}, latency up to {latency} ms for {hold:?}"
                ));
                Some(Active::Network)
            }
            Fault::PowerCut => any_free().map(|i| {
                let lost = c.members[i].crash(&c.handle);
                c.trace.record(format!(
                    "nemesis: power cut {} ({lost} unsynced batches lost) for {hold:?}",
                    c.name(i)
                ));
                Active::Down(i)
            }),
            Fault::SlowDisk => any_free().map(|i| {
                let delay = Duration::from_millis(5 + random(300));
                c.members[i].disk.set_sync_delay(delay);
                c.trace.record(format!(
                    "nemesis: slow disk on {}: fsync +{delay:?} for {hold:?}",
                    c.name(i)
                ));
                Active::SlowDisk(i)
            }),
            Fault::FsyncFailure => any_free().map(|i| {
                c.members[i].disk.fail_syncs();
                c.trace.record(format!(
                    "nemesis: fsyncs fail on {} for {hold:?}",
                    c.name(i)
                ));
                Active::BrokenDisk(i)
            }),
            Fault::LeaderLossMidProposal => match c.leader().await {
                Some(l) => {
                    propose_then_isolate(c, l, rec).await;
                    Some(isolate(c, l, hold, "isolate leader mid-proposal"))
                }
                None => None,
            },
        };
        if let Some(a) = applied {
            *counts.entry(format!("{fault:?}")).or_default() += 1;
            active.push((until, a));
        }
    }
    for (_, fault) in active {
        undo(c, fault, &calm).await;
    }
    counts
}

fn isolate(c: &Cluster, l: usize, hold: Duration, what: &str) -> Active {
    let links: Vec<(usize, usize)> = (0..c.members.len())
        .filter(|o| *o != l)
        .flat_map(|o| [(l, o), (o, l)])
        .collect();
    let net = NetSim::current();
    for (a, b) in &links {
        net.clog_link(c.id(*a), c.id(*b));
    }
    c.trace
        .record(format!("nemesis: {what} {} for {hold:?}", c.name(l)));
    Active::Links(links)
}

/// Send a put to the leader and cut the leader off a moment later, while it is replicating it.
/// The put's outcome is unknown to its client (unless the answer beats the cut).
async fn propose_then_isolate(c: &Cluster, l: usize, rec: &Recorder) {
    let url = c.urls[l].clone();
    let key = format!("k{}", random(KEYS));
    let value = format!("nemesis-{}", rec.now());
    let invoke = rec.now();
    let rec2 = rec.clone();
    let (k2, v2) = (key.clone(), value.clone());
    let task = c.clients.spawn(async move {
        let Ok(Ok(mut kv)) =
            madsim::time::timeout(Duration::from_millis(500), KvClient::connect(url)).await
        else {
            return None;
        };
        let put = PutRequest {
            key: k2.into_bytes(),
            value: v2.into_bytes(),
            ..Default::default()
        };
        match madsim::time::timeout(CALL_TIMEOUT, kv.put(put)).await {
            Ok(Ok(r)) => Some((r.into_inner().header.map_or(0, |h| h.revision), rec2.now())),
            _ => None,
        }
    });
    madsim::time::sleep(Duration::from_millis(1 + random(5))).await;
    // The cut happens now, before the answer is awaited; the put's fate is raft's business.
    let outcome = {
        let l_id = c.id(l);
        let net = NetSim::current();
        net.clog_node(l_id);
        let outcome = task.await.ok().flatten();
        net.unclog_node(l_id);
        outcome
    };
    rec.with(|r| {
        r.kv.push(Event {
            key: key.clone(),
            op: Op::Write {
                value: value.clone(),
                ok: outcome.is_some(),
            },
            invoke,
            complete: outcome.map(|(_, at)| at),
        });
        if let Some((revision, _)) = outcome {
            r.committed.push(Committed {
                revision,
                key,
                change: Change::Put(value),
            });
        }
    });
}

async fn undo(c: &Cluster, fault: Active, calm: &madsim::net::Config) {
    let net = NetSim::current();
    match fault {
        Active::Links(links) => {
            for (a, b) in links {
                net.unclog_link(c.id(a), c.id(b));
            }
            c.trace.record("nemesis: links restored");
        }
        Active::Network => {
            let calm = calm.clone();
            net.update_config(|cfg| *cfg = calm);
            c.trace.record("nemesis: network calm");
        }
        Active::Down(i) => {
            c.members[i].restart(&c.handle);
            c.trace.record(format!("nemesis: restart {}", c.name(i)));
        }
        Active::SlowDisk(i) => {
            c.members[i].disk.set_sync_delay(Duration::ZERO);
            c.trace
                .record(format!("nemesis: disk of {} fast again", c.name(i)));
        }
        Active::BrokenDisk(i) => {
            // A member whose fsync failed must have stopped rather than carried on.
            let failed = c.members[i].disk.failed_syncs();
            madsim::time::sleep(Duration::from_millis(200)).await;
            let stopped = cluster::stopped_on_fatal(c.name(i));
            assert!(
                failed == 0 || stopped,
                "{} kept running after {failed} failed fsyncs",
                c.name(i)
            );
            // Replace the disk: power off (what the failed fsyncs held is gone), repair, boot.
            let lost = c.members[i].crash(&c.handle);
            c.members[i].disk.repair_disk();
            cluster::forget_stops(Some(c.name(i)));
            c.members[i].restart(&c.handle);
            c.trace.record(format!(
                "nemesis: {} had {failed} failed fsyncs (stopped: {stopped}); new disk \
                 ({lost} unsynced batches lost), restart",
                c.name(i)
            ));
        }
    }
}

/// What one run did, for the report and the soak command.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub simulated: Duration,
    pub faults: BTreeMap<String, u64>,
    pub calls_ok: u64,
    pub calls_unknown: u64,
    pub watch_events: usize,
    pub liveness: Duration,
}

/// Run the chaos scenario for `seed`; panics naming the violated property and the seed.
pub async fn run(seed: u64, trace: Trace) -> Outcome {
    let began = madsim::time::Instant::now();
    let handle = Handle::current();
    let mix = Mix::draw(seed);
    trace.record(format!("mix {mix:?}"));
    metastore::rt::buggify::enable(
        mix.buggify && std::env::var_os("METASTORE_SIM_NO_BUGGIFY").is_none(),
    );
    cluster::forget_stops(None);
    let size = mix.members;
    let initial = initial_cluster(&MEMBERS[..size]);
    let members: Vec<SimMember> = MEMBERS[..size]
        .iter()
        .map(|(name, ip)| SimMember::start_with(&handle, name, ip, &initial, mix.snapshot_count))
        .collect();
    let urls: Vec<String> = members.iter().map(SimMember::url).collect();
    let clients = handle
        .create_node()
        .name("clients")
        .ip("10.0.2.100".parse().unwrap())
        .build();
    let c = Arc::new(Cluster {
        handle: handle.clone(),
        members,
        urls: urls.clone(),
        trace: trace.clone(),
        clients: clients.clone(),
    });
    let nemesis_node = handle
        .create_node()
        .name("nemesis")
        .ip("10.0.2.200".parse().unwrap())
        .build();
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    // Watchers stop last: after the final writes, which they must have seen.
    let stop_watching = Arc::new(AtomicBool::new(false));
    let mut watchers = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..mix.kv_clients {
        tasks.push(clients.spawn(workload::kv_client(
            i,
            urls.clone(),
            rec.clone(),
            stop.clone(),
            trace.clone(),
        )));
    }
    tasks.push(clients.spawn(workload::range_reader(
        urls.clone(),
        rec.clone(),
        stop.clone(),
        trace.clone(),
    )));
    for i in 0..mix.lease_clients {
        tasks.push(clients.spawn(workload::lease_client(
            i,
            urls.clone(),
            rec.clone(),
            stop.clone(),
        )));
    }
    if mix.compaction {
        tasks.push(clients.spawn(workload::compactor(
            urls.clone(),
            trace.clone(),
            stop.clone(),
        )));
    }
    watchers.push(clients.spawn(workload::watcher(
        "w-from-1".into(),
        urls.clone(),
        1,
        rec.clone(),
        stop_watching.clone(),
        trace.clone(),
    )));
    // The second watcher joins late, from whatever the head is then.
    watchers.push(clients.spawn({
        let (urls, rec, trace) = (urls.clone(), rec.clone(), trace.clone());
        let stop = stop_watching.clone();
        async move {
            madsim::time::sleep(Duration::from_secs(3)).await;
            let head = head_revision(&urls).await.unwrap_or(1);
            workload::watcher("w-late".into(), urls, head, rec, stop, trace).await
        }
    }));

    // 1. Safety phase.
    let faults = nemesis_node
        .spawn({
            let (c, mix, rec) = (c.clone(), mix.clone(), rec.clone());
            async move { nemesis(&c, &mix, &rec).await }
        })
        .await
        .expect("nemesis");
    trace.record(format!("safety phase over: faults {faults:?}"));
    trace.record(format!(
        "buggify points {:?}",
        metastore::rt::buggify::active_points()
    ));

    // 2. Liveness phase: everything healed (the nemesis undid its faults); the bound starts now.
    metastore::rt::buggify::enable(false);
    let healed = madsim::time::Instant::now();
    let deadline = healed + LIVENESS_BOUND;
    let within = |what: &str| {
        assert!(
            madsim::time::Instant::now() <= deadline,
            "seed {seed}: liveness: {what} not done within {LIVENESS_BOUND:?} of healing"
        );
    };
    stop.store(true, Ordering::SeqCst);
    let rec2 = rec.clone();
    let urls2 = urls.clone();
    let trace2 = trace.clone();
    let liveness = clients.spawn(async move {
        let rec = rec2;
        let urls = urls2;
        for t in tasks {
            t.await.expect("client task");
        }
        let last = final_writes(&urls, &rec, &trace2).await;
        stop_watching.store(true, Ordering::SeqCst);
        for w in watchers {
            w.await.expect("watcher");
        }
        (last, rec)
    });
    let leader = nemesis_node
        .spawn({
            let c = c.clone();
            async move {
                loop {
                    if let Some(l) = c.leader().await {
                        break l;
                    }
                    assert!(
                        madsim::time::Instant::now() <= deadline,
                        "seed {seed}: liveness: no leader within {LIVENESS_BOUND:?} of healing"
                    );
                    madsim::time::sleep(Duration::from_millis(200)).await;
                }
            }
        })
        .await
        .expect("leader");
    trace.record(format!("liveness: leader {}", c.name(leader)));
    let (final_rev, rec) = liveness.await.expect("liveness clients");
    within("finishing every client call and a final write to every key");
    trace.record(format!("liveness: final writes at revision {final_rev}"));
    let converged = clients
        .spawn({
            let urls = urls.clone();
            let trace = trace.clone();
            async move { converge(&urls, final_rev, deadline, &trace).await }
        })
        .await
        .expect("converge");
    within("converging");
    let lease_check = clients
        .spawn({
            let urls = urls.clone();
            let rec = Recorder::new();
            async move { expiry_on_a_quiet_cluster(&urls, &rec, deadline).await }
        })
        .await
        .expect("lease expiry");
    within("expiring a lease");
    let liveness_took = healed.elapsed();
    trace.record(format!("liveness phase took {liveness_took:?}"));

    // 3. Checks.
    let records = std::mem::take(&mut *rec.records.lock().unwrap());
    let verdict = linearizability::check(&records.kv, CHECK_BUDGET);
    trace.record(format!("{} kv events: {verdict:?}", records.kv.len()));
    if verdict != Verdict::Linearizable {
        let key = match &verdict {
            Verdict::NotLinearizable { key } | Verdict::Unknown { key } => key.clone(),
            Verdict::Linearizable => unreachable!(),
        };
        let of_key: Vec<&Event> = records.kv.iter().filter(|e| e.key == key).collect();
        panic!(
            "seed {seed}: the history of {} events is not linearizable: {verdict:?}; {key} \
             had {} events:\n{of_key:#?}",
            records.kv.len(),
            of_key.len()
        );
    }
    assert!(
        records.wrongly_accepted.is_empty(),
        "seed {seed}: a txn that must be refused whole was applied: {:#?}",
        records.wrongly_accepted
    );
    if let Err(b) = revisions::check(&records.revisions) {
        panic!("seed {seed}: a client saw the revision go backwards: {b:?}");
    }
    let watch_events: usize = records.segments.iter().map(|s| s.events.len()).sum();
    for w in ["w-from-1", "w-late"] {
        let through = records
            .segments
            .iter()
            .filter(|s| s.watcher.starts_with(w))
            .map(|s| s.complete_through)
            .max()
            .unwrap_or(0);
        assert!(
            through >= final_rev,
            "seed {seed}: liveness: watcher {w} is complete only through {through}, the final \
             write is at {final_rev}"
        );
    }
    if let Err(v) = watches::check(&records.segments, &records.committed, &converged.kvs) {
        panic!("seed {seed}: watch history violated: {v:?}");
    }
    trace.record(format!(
        "{} watch segments, {watch_events} events: ok",
        records.segments.len()
    ));
    if let Err(v) = leases::check(&records.leases, None) {
        let lease = match &v {
            leases::Violation::KeyOutlivedLease { lease, .. }
            | leases::Violation::ExpiryLate { lease, .. } => *lease,
        };
        let seen: Vec<_> = records
            .leases
            .iter()
            .filter(|o| format!("{o:?}").contains(&format!("lease: {lease},")))
            .collect();
        panic!("seed {seed}: lease history violated: {v:?}; what clients saw of it: {seen:#?}");
    }
    if let Err(v) = leases::check(&lease_check, Some(LEASE_EXPIRY_BOUND.as_micros() as u64)) {
        panic!("seed {seed}: lease expiry on a quiet cluster: {v:?}");
    }
    for (key, lease) in &converged.leased_keys {
        assert!(
            converged.leases.contains(lease),
            "seed {seed}: {key} is attached to lease {lease}, which does not exist"
        );
    }
    trace.record(format!(
        "{} lease observations, {} leased keys left: ok",
        records.leases.len(),
        converged.leased_keys.len()
    ));
    let simulated = began.elapsed();
    // Stop every node before the runtime goes. madsim drops the tasks of a killed node; dropping
    // the runtime alone left each run's tasks (whose futures hold one another's wakers) and so
    // its members in memory: 3.3 MB per seed, and a soak was killed for 24 GB after 7,470 seeds.
    for node in c
        .members
        .iter()
        .map(|m| m.node.id())
        .chain([clients.id(), nemesis_node.id()])
    {
        c.handle.kill(node);
    }
    madsim::time::sleep(Duration::from_millis(1)).await;
    Outcome {
        simulated,
        faults,
        calls_ok: records.calls_ok,
        calls_unknown: records.calls_unknown,
        watch_events,
        liveness: liveness_took,
    }
}

/// The head revision as one member answers it.
async fn head_revision(urls: &[String]) -> Option<i64> {
    for url in urls {
        let Ok(Ok(mut kv)) =
            madsim::time::timeout(Duration::from_secs(1), KvClient::connect(url.clone())).await
        else {
            continue;
        };
        let probe = RangeRequest {
            key: b"k".to_vec(),
            count_only: true,
            ..Default::default()
        };
        if let Ok(Ok(r)) = madsim::time::timeout(CALL_TIMEOUT, kv.range(probe)).await {
            return r.into_inner().header.map(|h| h.revision);
        }
    }
    None
}

/// Write a final value to every key (retrying through the members until acknowledged) and read
/// each back through every member; returns the last write's revision.
async fn final_writes(urls: &[String], rec: &Recorder, trace: &Trace) -> i64 {
    let mut last = 0;
    for i in 0..KEYS {
        let key = format!("k{i}");
        let value = format!("final-{i}");
        let mut attempt = 0;
        last = loop {
            let url = &urls[attempt % urls.len()];
            attempt += 1;
            let invoke = rec.now();
            let Ok(Ok(mut kv)) =
                madsim::time::timeout(Duration::from_secs(1), KvClient::connect(url.clone())).await
            else {
                madsim::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let put = PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..Default::default()
            };
            let outcome = madsim::time::timeout(CALL_TIMEOUT, kv.put(put)).await;
            let ok = matches!(outcome, Ok(Ok(_)));
            rec.with(|r| {
                r.kv.push(Event {
                    key: key.clone(),
                    op: Op::Write {
                        value: value.clone(),
                        ok,
                    },
                    invoke,
                    complete: ok.then(|| rec.now()),
                })
            });
            if let Ok(Ok(resp)) = outcome {
                let header = resp.into_inner().header.unwrap_or_default();
                let rev = header.revision;
                trace.record(format!(
                    "final: {key}={value} at {rev} via {url} (term {})",
                    header.raft_term
                ));
                rec.with(|r| {
                    r.committed.push(Committed {
                        revision: rev,
                        key: key.clone(),
                        change: Change::Put(value.clone()),
                    })
                });
                break rev;
            }
            madsim::time::sleep(Duration::from_millis(100)).await;
        };
    }
    for url in urls {
        let mut kv = cluster::connect(url).await;
        for i in 0..KEYS {
            let key = format!("k{i}");
            let invoke = rec.now();
            let req = RangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            };
            let resp = madsim::time::timeout(CALL_TIMEOUT, kv.range(req))
                .await
                .unwrap_or_else(|_| panic!("liveness: a read through {url} timed out"))
                .unwrap_or_else(|e| panic!("liveness: a read through {url} failed: {e}"))
                .into_inner();
            let value = resp
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            // Usually `final-{i}`; but a write whose client gave up during the safety phase may
            // still commit later, after the final one: whether the value read is allowed is the
            // linearizability checker's call, with the whole history.
            rec.with(|r| {
                r.kv.push(Event {
                    key,
                    op: Op::Read {
                        result: Some(value),
                    },
                    invoke,
                    complete: Some(rec.now()),
                })
            });
        }
    }
    last
}

/// The converged state: every member's hash agrees at a revision at or past `min_revision`.
struct Converged {
    /// Every live `k` key as a put at its mod revision (the watch checker's final state).
    kvs: Vec<Committed>,
    /// Every live key with a lease, and the lease.
    leased_keys: Vec<(String, i64)>,
    /// Every lease that exists.
    leases: BTreeSet<i64>,
}

async fn converge(
    urls: &[String],
    min_revision: i64,
    deadline: madsim::time::Instant,
    trace: &Trace,
) -> Converged {
    loop {
        let mut seen = Vec::new();
        for url in urls {
            let mut kv = cluster::connect(url).await;
            let probe = RangeRequest {
                key: b"probe".to_vec(),
                ..Default::default()
            };
            let Ok(Ok(r)) = madsim::time::timeout(CALL_TIMEOUT, kv.range(probe)).await else {
                continue;
            };
            let rev = r.into_inner().header.map_or(0, |h| h.revision);
            let Ok(mut m) = MaintenanceClient::connect(url.clone()).await else {
                continue;
            };
            let hash = m.hash_kv(HashKvRequest { revision: rev });
            if let Ok(Ok(h)) = madsim::time::timeout(CALL_TIMEOUT, hash).await {
                seen.push((rev, h.into_inner().hash));
            }
        }
        if seen.len() == urls.len()
            && seen.windows(2).all(|w| w[0] == w[1])
            && seen[0].0 >= min_revision
        {
            trace.record(format!("liveness: converged at {:?}", seen[0]));
            break;
        }
        if madsim::time::Instant::now() >= deadline {
            let mut states = Vec::new();
            for url in urls {
                states.push(format!("{url}: {}", dump(url).await));
            }
            panic!(
                "liveness: members did not converge within the bound: {seen:?}\n{}",
                states.join("\n")
            );
        }
        madsim::time::sleep(Duration::from_millis(300)).await;
    }
    // Leases first, keys second: a lease gone from the list never comes back, so a key read
    // afterwards that still names it outlived its lease (the other order races with expiry).
    let mut l = LeaseClient::connect(urls[0].clone())
        .await
        .expect("lease client");
    let leases = l
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("lease list")
        .into_inner();
    let live_leases: BTreeSet<i64> = leases.leases.iter().map(|s| s.id).collect();
    let mut kv = cluster::connect(&urls[0]).await;
    let all = kv
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .expect("final range")
        .into_inner();
    let mut out = Converged {
        kvs: Vec::new(),
        leased_keys: Vec::new(),
        leases: live_leases,
    };
    for kv in all.kvs {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        if kv.lease != 0 {
            out.leased_keys.push((key.clone(), kv.lease));
        }
        if key.starts_with('k') {
            out.kvs.push(Committed {
                revision: kv.mod_revision,
                key,
                change: Change::Put(String::from_utf8_lossy(&kv.value).into_owned()),
            });
        }
    }
    out
}

/// A member's view for a failure report: its status and every key it holds (serializable).
async fn dump(url: &str) -> String {
    let mut out = String::new();
    if let Ok(mut m) = MaintenanceClient::connect(url.to_string()).await {
        if let Ok(Ok(s)) = madsim::time::timeout(CALL_TIMEOUT, m.status(StatusRequest {})).await {
            let s = s.into_inner();
            out += &format!(
                "raft index {} applied {} term {} leader {:x}; ",
                s.raft_index, s.raft_applied_index, s.raft_term, s.leader
            );
        }
    }
    if let Ok(mut kv) = KvClient::connect(url.to_string()).await {
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            serializable: true,
            ..Default::default()
        };
        if let Ok(Ok(r)) = madsim::time::timeout(CALL_TIMEOUT, kv.range(all)).await {
            let r = r.into_inner();
            let head = r.header.map_or(0, |h| h.revision);
            out += &format!("revision {head}: ");
            out += &history_of(url, head).await;
            out += "\n   final: ";
            for kv in r.kvs {
                out += &format!(
                    "{}={}@{}/{} ",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value),
                    kv.mod_revision,
                    kv.version
                );
            }
        }
    }
    out
}

/// Every event a member still has, from revision 1 to `head`, by watching (failure reports).
async fn history_of(url: &str, head: i64) -> String {
    use futures::StreamExt;
    use metastore::pb::etcdserverpb::watch_client::WatchClient;
    use metastore::pb::etcdserverpb::watch_request::RequestUnion;
    use metastore::pb::etcdserverpb::{WatchCreateRequest, WatchRequest};
    let Ok(mut w) = WatchClient::connect(url.to_string()).await else {
        return "(no watch)".into();
    };
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            start_revision: 1,
            ..Default::default()
        })),
    };
    let _ = tx.unbounded_send(create);
    let Ok(Ok(resp)) = madsim::time::timeout(CALL_TIMEOUT, w.watch(rx)).await else {
        return "(no watch)".into();
    };
    let mut stream = resp.into_inner();
    let mut out = String::new();
    let mut last = 0;
    while last < head {
        let Ok(Some(Ok(msg))) = madsim::time::timeout(CALL_TIMEOUT, stream.next()).await else {
            break;
        };
        for ev in msg.events {
            let Some(kv) = ev.kv else { continue };
            last = kv.mod_revision;
            out += &format!(
                "{}{}={}@{} ",
                if ev.r#type == 1 { "DEL " } else { "" },
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value),
                kv.mod_revision
            );
        }
    }
    drop(tx);
    out
}

/// On the healed cluster: a lease with a key, two keep-alives, then none; the key must be gone
/// within TTL + [`LEASE_EXPIRY_BOUND`] of the last keep-alive sent. Returns the observations.
async fn expiry_on_a_quiet_cluster(
    urls: &[String],
    rec: &Recorder,
    deadline: madsim::time::Instant,
) -> Vec<leases::Observation> {
    const TTL: i64 = 3;
    let lease = loop {
        if let Some(lease) = workload::grant(urls, TTL, rec).await {
            break lease;
        }
        assert!(
            madsim::time::Instant::now() < deadline,
            "liveness: no lease granted"
        );
        madsim::time::sleep(Duration::from_millis(100)).await;
    };
    let key = format!("lease/quiet/{lease}");
    loop {
        let mut kv = cluster::connect(&urls[0]).await;
        let put = PutRequest {
            key: key.clone().into_bytes(),
            value: b"quiet".to_vec(),
            lease,
            ..Default::default()
        };
        if let Ok(Ok(_)) = madsim::time::timeout(CALL_TIMEOUT, kv.put(put)).await {
            break;
        }
        assert!(
            madsim::time::Instant::now() < deadline,
            "liveness: no leased put"
        );
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..2 {
        madsim::time::sleep(Duration::from_secs(1)).await;
        workload::keep_alive(urls, lease, rec).await;
    }
    // Poll until the key is gone (the checker judges how late that was).
    loop {
        madsim::time::sleep(Duration::from_millis(250)).await;
        if workload::read_leased(urls, &key, lease, rec).await == Some(false) {
            break;
        }
        assert!(
            madsim::time::Instant::now() < deadline,
            "liveness: the key of an unrenewed lease is still there"
        );
    }
    std::mem::take(&mut rec.records.lock().unwrap().leases)
}
