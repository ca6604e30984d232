//! A three- or five-member cluster inside madsim (odd seeds 3, even seeds 5): the leader is
//! partitioned away while a client keeps writing through the other members and another client reads
//! through every member, the partition heals; then the seed's own mix of network faults (swarm
//! testing: packet loss 0-10 %, latency up to 60 ms, up to five one- or two-way link cuts) while
//! writes go on, and the network heals; a member loses power mid-write and restarts, then every
//! member loses power at once and restarts; at the end the read/write history is
//! linearizable (`metastore_sim::linearizability`), every acknowledged write is on every member
//! and all `HashKV`s are equal. Same seed, same trace. The deliberately broken builds
//! (`--features sim-bug-stale-read`, `sim-bug-early-ack`) fail here.
#![cfg(madsim)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, Runtime};
use metastore::pb::etcdserverpb::kv_client::KvClient;
use metastore::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use metastore::pb::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest, StatusRequest};
use metastore_sim::cluster::{connect, initial_cluster, SimMember};
use metastore_sim::linearizability::{check, Event, Op, Verdict};
use metastore_sim::trace::Trace;

/// Seeds each run covers; override with `METASTORE_SIM_SEEDS=a,b,c`.
fn seeds() -> Vec<u64> {
    metastore_sim::trace::seeds(1..=200)
}

/// Simulated time one write may take, retries through other members included.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);

/// Simulated time the members get to agree at the end.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);

/// Every simulated member there can be; a run uses the first 3 or 5 (odd seeds 3, even seeds 5).
const MEMBERS: [(&str, &str); 5] = [
    ("m1", "10.0.1.1"),
    ("m2", "10.0.1.2"),
    ("m3", "10.0.1.3"),
    ("m4", "10.0.1.4"),
    ("m5", "10.0.1.5"),
];

/// Everything clients saw, for the linearizability checker: times are simulated microseconds.
#[derive(Clone)]
struct History {
    start: madsim::time::Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl History {
    fn new() -> Self {
        Self {
            start: madsim::time::Instant::now(),
            events: Arc::default(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn push(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

/// Budget of the linearizability search per key (the histories here need a few thousand steps).
const CHECK_BUDGET: u64 = 2_000_000;

/// The network faults one seed draws (swarm testing: every seed its own mix and rates).
#[derive(Debug, Clone, Copy)]
struct FaultMix {
    /// Share of packets lost, 0 to 10 %.
    loss: f64,
    /// Largest one-way delay, 1 to 60 ms.
    latency_ms: u64,
    /// How many link cuts, one after another.
    flaps: u64,
    /// Whether a cut is both ways or one way (asymmetric).
    two_way: bool,
    /// Writes during the faults.
    writes: u64,
    seed: u64,
}

/// splitmix64: a fixed function of the seed, independent of the simulator's own randomness.
fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl FaultMix {
    fn draw(seed: u64) -> Self {
        let r = |i: u64| mix64(seed.wrapping_mul(31).wrapping_add(i));
        FaultMix {
            loss: (r(1) % 11) as f64 / 100.0,
            latency_ms: 1 + r(2) % 60,
            flaps: r(3) % 6,
            two_way: r(4) % 2 == 0,
            writes: 10 + r(5) % 20,
            seed,
        }
    }

    /// The `i`th cut: from member `a` to member `b` (never the same), held for a while.
    fn cut(&self, i: u64, size: usize) -> (usize, usize, Duration) {
        let r = mix64(self.seed ^ (0x5eed << 8) ^ i);
        let a = (r % size as u64) as usize;
        let b = (a + 1 + ((r >> 16) % (size as u64 - 1)) as usize) % size;
        (a, b, Duration::from_millis(200 + (r >> 32) % 3000))
    }
}

/// How many members seed `seed` runs with.
fn cluster_size(seed: u64) -> usize {
    if seed % 2 == 0 {
        5
    } else {
        3
    }
}

/// Put `key=value` through member `first` (then the others, round robin) until one acknowledges
/// it; returns the revision. Failed attempts may or may not have happened; a later attempt of the
/// same value is harmless for the checks below (they compare the newest value per key).
async fn write(
    urls: &[String],
    first: usize,
    key: &str,
    value: &str,
    trace: &Trace,
    history: &History,
) -> i64 {
    let deadline = madsim::time::Instant::now() + WRITE_DEADLINE;
    let mut attempt = 0;
    loop {
        assert!(
            madsim::time::Instant::now() < deadline,
            "write {key} not acknowledged within {WRITE_DEADLINE:?}"
        );
        let url = &urls[(first + attempt) % urls.len()];
        attempt += 1;
        let mut c = connect(url).await;
        let put = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        let invoke = history.now();
        let outcome = madsim::time::timeout(Duration::from_secs(10), c.put(put)).await;
        let ok = matches!(outcome, Ok(Ok(_)));
        history.push(Event {
            key: key.to_string(),
            op: Op::Write {
                value: value.to_string(),
                ok,
            },
            invoke,
            complete: ok.then(|| history.now()),
        });
        match outcome {
            Ok(Ok(resp)) => {
                let rev = resp.into_inner().header.expect("header").revision;
                trace.record(format!("ack {key}={value} rev {rev} via {url}"));
                return rev;
            }
            Ok(Err(status)) => trace.record(format!("put {key} via {url}: {}", status.message())),
            Err(_) => trace.record(format!("put {key} via {url}: client timeout")),
        }
        madsim::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Linearizable reads of the written keys through every member in turn until `stop`; each one
/// that completes goes into the history (failed ones tell nothing).
async fn read_loop(urls: Vec<String>, history: History, stop: Arc<AtomicBool>) -> usize {
    let mut done = 0;
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("k{}", i % 25);
        let url = &urls[i % urls.len()];
        i += 1;
        let invoke = history.now();
        let Ok(mut c) = KvClient::connect(url.clone()).await else {
            madsim::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let req = RangeRequest {
            key: key.clone().into_bytes(),
            ..Default::default()
        };
        if let Ok(Ok(resp)) = madsim::time::timeout(Duration::from_secs(5), c.range(req)).await {
            let value = resp
                .into_inner()
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            history.push(Event {
                key,
                op: Op::Read {
                    result: Some(value),
                },
                invoke,
                complete: Some(history.now()),
            });
            done += 1;
        }
        madsim::time::sleep(Duration::from_millis(20)).await;
    }
    done
}

/// The index of the member that reports itself leader (bounded wait).
async fn leader(urls: &[String]) -> usize {
    let deadline = madsim::time::Instant::now() + Duration::from_secs(30);
    while madsim::time::Instant::now() < deadline {
        for (i, url) in urls.iter().enumerate() {
            let Ok(mut m) = MaintenanceClient::connect(url.clone()).await else {
                continue;
            };
            let status = madsim::time::timeout(Duration::from_secs(2), m.status(StatusRequest {}));
            if let Ok(Ok(s)) = status.await {
                let s = s.into_inner();
                if s.leader != 0 && s.header.map(|h| h.member_id) == Some(s.leader) {
                    return i;
                }
            }
        }
        madsim::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no leader within 30 s of simulated time");
}

/// Every member's `(revision, hash)` once all agree (bounded wait).
async fn converge(urls: &[String], trace: &Trace) -> (i64, u32) {
    let deadline = madsim::time::Instant::now() + CONVERGE_DEADLINE;
    loop {
        let mut seen = Vec::new();
        for url in urls {
            let mut kv = connect(url).await;
            let probe = RangeRequest {
                key: b"probe".to_vec(),
                ..Default::default()
            };
            let Ok(Ok(r)) = madsim::time::timeout(Duration::from_secs(5), kv.range(probe)).await
            else {
                continue;
            };
            let rev = r.into_inner().header.expect("header").revision;
            let Ok(mut m) = MaintenanceClient::connect(url.clone()).await else {
                continue;
            };
            if let Ok(h) = m.hash_kv(HashKvRequest { revision: rev }).await {
                seen.push((rev, h.into_inner().hash));
            }
        }
        if seen.len() == urls.len() && seen.windows(2).all(|w| w[0] == w[1]) {
            trace.record(format!("converged at {:?}", seen[0]));
            return seen[0];
        }
        assert!(
            madsim::time::Instant::now() < deadline,
            "members did not converge: {seen:?}"
        );
        madsim::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn scenario(seed: u64, trace: Trace) {
    let handle = Handle::current();
    let size = cluster_size(seed);
    let cluster = initial_cluster(&MEMBERS[..size]);
    trace.record(format!("{size} members"));
    let members: Vec<SimMember> = MEMBERS[..size]
        .iter()
        .map(|(name, ip)| SimMember::start_in(&handle, name, ip, &cluster))
        .collect();
    let urls: Vec<String> = members.iter().map(SimMember::url).collect();
    let client = handle
        .create_node()
        .name("client")
        .ip("10.0.1.100".parse().unwrap())
        .build();
    let node_ids: Vec<_> = members.iter().map(|m| m.node.id()).collect();
    let history = History::new();
    let stop_reads = Arc::new(AtomicBool::new(false));
    let reader = client.spawn(read_loop(urls.clone(), history.clone(), stop_reads.clone()));
    let t = trace.clone();
    let h = history.clone();
    let run = client.spawn(async move {
        let mut acked: BTreeMap<String, String> = BTreeMap::new();
        let mut n = 0usize;
        let put = |acked: &mut BTreeMap<String, String>, n: &mut usize| {
            let key = format!("k{}", *n % 25);
            let value = format!("v{n}");
            *n += 1;
            acked.insert(key.clone(), value.clone());
            (key, value, *n)
        };
        for _ in 0..20 {
            let (k, v, i) = put(&mut acked, &mut n);
            write(&urls, i, &k, &v, &t, &h).await;
        }
        // The leader loses the network; the majority elects another and keeps taking writes.
        let old = leader(&urls).await;
        t.record(format!("partition leader {}", MEMBERS[old].0));
        NetSim::current().clog_node(node_ids[old]);
        for _ in 0..20 {
            let (k, v, i) = put(&mut acked, &mut n);
            let others: Vec<String> = (0..size)
                .filter(|j| *j != old)
                .map(|j| urls[j].clone())
                .collect();
            write(&others, i, &k, &v, &t, &h).await;
        }
        let new = leader(&urls).await;
        assert_ne!(new, old, "the majority elected a new leader");
        NetSim::current().unclog_node(node_ids[old]);
        t.record("healed");
        (acked, n)
    });
    let (mut acked, mut n) = run.await.expect("client phase 1");

    // Swarm: this seed's own mix of network faults (loss, latency, one- or two-way link cuts)
    // while the client keeps writing; then the network heals and every write must complete.
    let mix = FaultMix::draw(seed);
    trace.record(format!("fault mix {mix:?}"));
    let urls: Vec<String> = members.iter().map(SimMember::url).collect();
    let node_ids: Vec<_> = members.iter().map(|m| m.node.id()).collect();
    let (t, h, swarm_urls) = (trace.clone(), history.clone(), urls.clone());
    let writes = mix.writes;
    let swarm_writes = client.spawn(async move {
        let mut more = BTreeMap::new();
        for _ in 0..writes {
            let (key, value) = (format!("k{}", n % 25), format!("v{n}"));
            n += 1;
            write(&swarm_urls, n, &key, &value, &t, &h).await;
            more.insert(key, value);
        }
        (more, n)
    });
    let net = NetSim::current();
    let mut calm = None;
    net.update_config(|c| {
        calm = Some(c.clone());
        c.packet_loss_rate = mix.loss;
        c.send_latency = Duration::from_millis(1)..Duration::from_millis(mix.latency_ms + 1);
    });
    trace.record(format!(
        "network: loss {:.2}, latency up to {} ms",
        mix.loss, mix.latency_ms
    ));
    for flap in 0..mix.flaps {
        let (a, b, hold) = mix.cut(flap, size);
        net.clog_link(node_ids[a], node_ids[b]);
        if mix.two_way {
            net.clog_link(node_ids[b], node_ids[a]);
        }
        trace.record(format!(
            "cut {} -> {}{} for {hold:?}",
            MEMBERS[a].0,
            MEMBERS[b].0,
            if mix.two_way { " both ways" } else { "" }
        ));
        madsim::time::sleep(hold).await;
        net.unclog_link(node_ids[a], node_ids[b]);
        net.unclog_link(node_ids[b], node_ids[a]);
        trace.record(format!("restore {} <-> {}", MEMBERS[a].0, MEMBERS[b].0));
    }
    let calm = calm.expect("the network had a configuration");
    net.update_config(|c| *c = calm);
    trace.record("network healed");
    let (more, written) = swarm_writes.await.expect("swarm writes");
    acked.extend(more);
    n = written;

    // A member loses power between writes and comes back on its disk.
    let victim = (seed as usize / 2) % size;
    let urls: Vec<String> = members.iter().map(SimMember::url).collect();
    let t = trace.clone();
    let h = history.clone();
    let phase2_urls = urls.clone();
    let writes = client.spawn(async move {
        let mut more = BTreeMap::new();
        for _ in 0..20 {
            let (key, value) = (format!("k{}", n % 25), format!("v{n}"));
            n += 1;
            write(&phase2_urls, n, &key, &value, &t, &h).await;
            more.insert(key, value);
            madsim::time::sleep(Duration::from_millis(50)).await;
        }
        more
    });
    madsim::time::sleep(Duration::from_millis(300)).await;
    let lost = members[victim].crash(&handle);
    trace.record(format!(
        "power cut {}: {lost} unsynced batches lost",
        MEMBERS[victim].0
    ));
    madsim::time::sleep(Duration::from_secs(2)).await;
    members[victim].restart(&handle);
    trace.record(format!("restart {}", MEMBERS[victim].0));
    acked.extend(writes.await.expect("client phase 2"));

    // Every member loses power at the same instant, right after the last acknowledged write:
    // whatever was acknowledged was fsynced on a quorum, so it must all come back.
    let lost: Vec<usize> = members.iter().map(|m| m.crash(&handle)).collect();
    trace.record(format!(
        "power cut, whole cluster: {lost:?} unsynced batches lost"
    ));
    madsim::time::sleep(Duration::from_secs(1)).await;
    for m in &members {
        m.restart(&handle);
    }
    trace.record("restart all");
    stop_reads.store(true, Ordering::SeqCst);
    let reads = reader.await.expect("reader");
    let events = history.events.lock().unwrap().clone();
    let verdict = check(&events, CHECK_BUDGET);
    trace.record(format!(
        "{reads} reads and {} events checked: {verdict:?}",
        events.len()
    ));
    assert!(reads > 20, "the reader got answers ({reads})");
    assert_eq!(
        verdict,
        Verdict::Linearizable,
        "seed {seed}: the history of {} events is not linearizable",
        events.len()
    );

    let t = trace.clone();
    let check = client.spawn(async move {
        converge(&urls, &t).await;
        for url in &urls {
            let mut kv = connect(url).await;
            let all = kv
                .range(RangeRequest {
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                    serializable: true,
                    ..Default::default()
                })
                .await
                .expect("range")
                .into_inner();
            let stored: BTreeMap<String, String> = all
                .kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    )
                })
                .collect();
            assert_eq!(
                stored, acked,
                "seed {seed}: acknowledged writes lost: {url} must hold the newest acknowledged \
                 value of every key"
            );
        }
    });
    check.await.expect("checks");
}

fn run(seed: u64) -> (u64, Vec<String>) {
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async move {
        let trace = Trace::new();
        scenario(seed, trace.clone()).await;
        (trace.digest(), trace.lines())
    })
}

#[test]
fn partition_and_power_cut_lose_nothing_and_members_agree() {
    for seed in seeds() {
        metastore_sim::trace::run_twice(seed, run);
    }
}

#[test]
fn madsim_determinism_check() {
    Runtime::check_determinism(seeds()[0], madsim::Config::default(), || async {
        scenario(seeds()[0], Trace::new()).await;
    });
}
