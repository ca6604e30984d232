//! `metastore bench k8s`: a Kubernetes-shaped workload, modelled on how kube-apiserver uses etcd
//! (etcd's `client/v3/kubernetes` interface and its robustness traffic `kubernetesTraffic`).
//!
//! Objects live under `/registry/<resource>/ns-<n>/obj-<slot>`. Before timing starts, `--objects`
//! of them exist (created if missing), and every resource is listed page by page, as a reflector
//! does when it starts; one watch per resource prefix (and one on `/registry/events/`) then starts
//! from the revision after that list, each on its own gRPC stream as kube-apiserver opens them,
//! with a `WatchProgressRequest` on each every `--progress-interval-ms`. The timed phase runs `--clients` loops,
//! each picking operations by the weights of `--mix`:
//!
//! | op | requests |
//! |---|---|
//! | create | Txn: `mod_revision(key) == 0` → put, else range the key |
//! | update | Txn: `mod_revision(key) ==` the revision last seen → put, else range the key |
//! | delete | Txn: `mod_revision(key) ==` the revision last seen → delete, else range the key |
//! | get | range of one key, limit 1 |
//! | list | the objects of one resource in one namespace, pages of `--list-limit` |
//! | list-all | the objects of one resource in every namespace, pages of `--list-limit` |
//! | count | count-only range of one resource's prefix |
//! | event | create of `/registry/events/...` attached to a lease of `--event-ttl-secs` |
//!
//! Pages after the first are read at the first page's revision, from the last key + `\0`, as the
//! apiserver's pager does. An event reuses the current lease for up to `--events-per-lease`
//! objects and [`LEASE_REUSE`], like the apiserver's lease manager. A compactor compacts every
//! `--compact-interval-secs` to the revision it saw one interval earlier, through the Txn on
//! `compact_rev_key` that lets several apiservers share one compaction schedule.
//!
//! A failed compare is an expected outcome (another writer got there first), counted as a
//! conflict, apart from errors; so is a compaction another compactor already did. Checks: a
//! list's pages come in key order and add up to the first page's count; each watcher sees events in
//! revision order, none at or below a progress notification it already received, and every write
//! the workload had acknowledged on its prefix (the watch drains until a progress notification
//! covers the last one). Any violation fails the run.
//!
//! This module imports nothing from `bench.rs` (which calls it), so the two form no cycle.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Args;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::Channel;

use crate::keys::prefix_end;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::etcdserverpb::watch_client::WatchClient;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{
    request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use crate::rt;

mod check;
mod ops;
mod report;
mod watches;

use check::{Violations, WatchCheck};
use ops::{client_loop, compactor, list, optimistic};
use report::print_report;
use watches::{watch_loop, WatchReport};

/// How long the apiserver's lease manager reuses a lease for new objects.
pub const LEASE_REUSE: Duration = Duration::from_secs(60);

/// How long the watch may take, once the writers stopped, to deliver their last acknowledged write.
const WATCH_DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Progress requests while draining come this often, so the drain ends soon after it can.
const DRAIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// How long creating the watchers may take.
const WATCH_START_DEADLINE: Duration = Duration::from_secs(10);

/// The key kube-apiserver's compactors agree on the next compaction through.
const COMPACT_REV_KEY: &[u8] = b"compact_rev_key";

/// How many violations of each check are kept for the report (the rest are only counted).
const VIOLATIONS_KEPT: usize = 10;

/// Values are slices of this much random data (incompressible, like encoded objects).
const VALUE_POOL_BYTES: usize = 256 * 1024;

/// Weights per thousand: mostly updates (status writes), then events and gets; lists mostly of one
/// namespace, a whole resource rarely (each is every object of it).
const DEFAULT_MIX: &str =
    "create=50,update=500,delete=50,get=150,list=40,list-all=1,count=50,event=159";

/// Flags of the k8s workload (shown with every workload's; the others ignore them).
#[derive(Debug, Clone, Args)]
pub struct K8sArgs {
    /// k8s: objects that exist before timing starts (created if missing).
    #[arg(long, default_value_t = 10_000)]
    pub objects: u64,
    /// k8s: comma-separated resources, each a prefix `/registry/<resource>/` (events are extra).
    #[arg(long, default_value = "pods,configmaps,secrets,services,deployments")]
    pub resources: String,
    /// k8s: namespaces the objects are spread over.
    #[arg(long, default_value_t = 20)]
    pub namespaces: u64,
    /// k8s: mean value size in bytes; each value is 2/3 to 4/3 of it.
    #[arg(long, default_value_t = 1536)]
    pub object_size: usize,
    /// k8s: relative weights of the operations the clients pick from.
    #[arg(long, default_value = DEFAULT_MIX)]
    pub mix: String,
    /// k8s: keys per list page.
    #[arg(long, default_value_t = 500)]
    pub list_limit: i64,
    /// k8s: run this many seconds instead of `--total` operations (0: `--total`).
    #[arg(long, default_value_t = 0)]
    pub duration_secs: u64,
    /// k8s: seconds between compactions (kube-apiserver's default is 300; 0: none).
    #[arg(long, default_value_t = 10)]
    pub compact_interval_secs: u64,
    /// k8s: milliseconds between watch progress requests.
    #[arg(long, default_value_t = 1000)]
    pub progress_interval_ms: u64,
    /// k8s: TTL of the events' leases (kube-apiserver: 3600 + 60 s of reuse).
    #[arg(long, default_value_t = 3660)]
    pub event_ttl_secs: i64,
    /// k8s: events attached to one lease before a new one is granted.
    #[arg(long, default_value_t = 1000)]
    pub events_per_lease: u64,
}

/// The load flags `bench` shares with every workload.
#[derive(Debug, Clone)]
pub struct Load {
    pub clients: usize,
    pub conns: usize,
    pub total: u64,
    pub timeout: Duration,
}

/// Operation kinds, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Update,
    Delete,
    Get,
    List,
    ListAll,
    Count,
    Event,
    LeaseGrant,
    Compact,
}

const OPS: [Op; 10] = [
    Op::Create,
    Op::Update,
    Op::Delete,
    Op::Get,
    Op::List,
    Op::ListAll,
    Op::Count,
    Op::Event,
    Op::LeaseGrant,
    Op::Compact,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Get => "get",
            Op::List => "list",
            Op::ListAll => "list-all",
            Op::Count => "count",
            Op::Event => "event",
            Op::LeaseGrant => "lease-grant",
            Op::Compact => "compact",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }

    /// Whether clients pick it from `--mix` (the others come with events and the compactor).
    fn pickable(self) -> bool {
        !matches!(self, Op::LeaseGrant | Op::Compact)
    }
}

/// `--mix` parsed: cumulative weights.
#[derive(Debug, Clone)]
struct Mix {
    ops: Vec<(Op, u64)>,
    total: u64,
}

impl Mix {
    fn parse(s: &str) -> Result<Mix, String> {
        let mut ops = Vec::new();
        let mut total = 0u64;
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix: {part:?} is not name=weight"))?;
            let op = OPS
                .into_iter()
                .find(|o| o.pickable() && o.name() == name.trim())
                .ok_or_else(|| format!("--mix: unknown operation {name:?}"))?;
            let weight: u64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("--mix: weight of {name} is not a number"))?;
            if weight > 0 {
                total += weight;
                ops.push((op, total));
            }
        }
        if total == 0 {
            return Err("--mix: every weight is zero".into());
        }
        Ok(Mix { ops, total })
    }

    fn pick(&self, random: u64) -> Op {
        let r = random % self.total;
        self.ops
            .iter()
            .find(|(_, upto)| r < *upto)
            .map(|(op, _)| *op)
            .unwrap_or(self.ops[0].0)
    }
}

/// The object slots and the mod revision each was last seen at (0: absent). Slots beyond
/// `--objects` are room for creates; the population stays around `--objects` while creates and
/// deletes are equally likely.
struct Objects {
    resources: Vec<String>,
    namespaces: u64,
    revs: Vec<AtomicI64>,
}

impl Objects {
    fn new(resources: Vec<String>, namespaces: u64, objects: u64) -> Objects {
        let capacity = (objects * 2).max(1024);
        Objects {
            resources,
            namespaces: namespaces.max(1),
            revs: (0..capacity).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    fn resource_of(&self, slot: u64) -> usize {
        (slot % self.resources.len() as u64) as usize
    }

    fn key(&self, slot: u64) -> Vec<u8> {
        let resource = &self.resources[self.resource_of(slot)];
        let ns = (slot / self.resources.len() as u64) % self.namespaces;
        format!("/registry/{resource}/ns-{ns}/obj-{slot}").into_bytes()
    }

    /// The slot a key of [`Objects::key`] names.
    fn slot_of(&self, key: &[u8]) -> Option<u64> {
        let key = std::str::from_utf8(key).ok()?;
        let slot: u64 = key.rsplit_once("/obj-")?.1.parse().ok()?;
        (slot < self.revs.len() as u64 && self.key(slot) == key.as_bytes()).then_some(slot)
    }

    fn rev(&self, slot: u64) -> i64 {
        self.revs[slot as usize].load(Ordering::Relaxed)
    }

    fn set(&self, slot: u64, rev: i64) {
        self.revs[slot as usize].store(rev, Ordering::Relaxed);
    }

    /// A random slot that was last seen present (or absent), after a few tries any slot.
    fn pick(&self, present: bool) -> u64 {
        let n = self.revs.len() as u64;
        let mut slot = rt::random_u64() % n;
        for _ in 0..16 {
            if (self.rev(slot) != 0) == present {
                break;
            }
            slot = rt::random_u64() % n;
        }
        slot
    }
}

fn resource_prefix(resource: &str) -> Vec<u8> {
    format!("/registry/{resource}/").into_bytes()
}

/// What one request came to.
enum Outcome {
    Ok,
    /// An expected refusal: a failed compare, or a compaction already done.
    Conflict,
    Error(String),
}

/// A write the workload saw acknowledged: its revision, the watched prefix it falls in, when it
/// was sent.
#[derive(Debug, Clone, Copy)]
struct Ack {
    rev: i64,
    prefix: usize,
    sent: rt::Instant,
}

/// What one client (or the compactor) measured.
#[derive(Default)]
struct Stats {
    lat_us: [Vec<u64>; OPS.len()],
    conflicts: [u64; OPS.len()],
    errors: [u64; OPS.len()],
    first_error: Option<String>,
    acked: Vec<Ack>,
    list_violations: Violations,
}

impl Stats {
    fn record(&mut self, op: Op, t0: rt::Instant, outcome: Outcome) {
        let i = op.idx();
        match outcome {
            Outcome::Ok => self.lat_us[i].push(t0.elapsed().as_micros() as u64),
            Outcome::Conflict => {
                self.lat_us[i].push(t0.elapsed().as_micros() as u64);
                self.conflicts[i] += 1;
            }
            Outcome::Error(e) => {
                self.errors[i] += 1;
                self.first_error
                    .get_or_insert_with(|| format!("{}: {e}", op.name()));
            }
        }
    }

    fn merge(&mut self, other: Stats) {
        for i in 0..OPS.len() {
            self.lat_us[i].extend_from_slice(&other.lat_us[i]);
            self.conflicts[i] += other.conflicts[i];
            self.errors[i] += other.errors[i];
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.acked.extend(other.acked);
        self.list_violations.merge(other.list_violations);
    }
}

/// The lease events are attached to, shared by the clients like the apiserver's lease manager.
#[derive(Default)]
struct LeaseSlot {
    id: i64,
    attached: u64,
    granted: Option<rt::Instant>,
}

/// Everything the client loops share.
struct Ctx {
    args: K8sArgs,
    timeout: Duration,
    objects: Objects,
    mix: Mix,
    lease: tokio::sync::Mutex<LeaseSlot>,
    remaining: AtomicU64,
    /// Set when timing starts, if the run is timed by `--duration-secs`.
    deadline: OnceLock<rt::Instant>,
    values: Vec<u8>,
    event_seq: AtomicU64,
    /// Names this run's events apart from earlier runs' (still alive on their leases).
    run_id: u32,
}

impl Ctx {
    fn value(&self) -> Vec<u8> {
        let mean = self.args.object_size.max(3);
        let len = (mean * 2 / 3 + (rt::random_u64() as usize) % (mean * 2 / 3 + 1))
            .min(self.values.len());
        let off = (rt::random_u64() as usize) % (self.values.len() - len + 1);
        self.values[off..off + len].to_vec()
    }

    fn events_prefix(&self) -> usize {
        self.objects.resources.len()
    }

    /// Whether the timed phase goes on for one more operation.
    fn one_more(&self) -> bool {
        match self.deadline.get() {
            Some(d) => rt::now() < *d,
            None => self
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// A paginated list of every resource (a reflector's start): learns each object's mod revision
/// and returns each resource's list revision. Lists at startup may be long: a longer deadline.
async fn learn(
    ctx: &Ctx,
    kv: &mut KvClient<Channel>,
    violations: &mut Violations,
) -> Result<Vec<i64>, String> {
    let mut revs = Vec::new();
    for resource in &ctx.objects.resources {
        let rev = list(
            kv,
            ctx.timeout * 10,
            &resource_prefix(resource),
            ctx.args.list_limit,
            violations,
            |item| {
                if let Some(slot) = ctx.objects.slot_of(&item.key) {
                    ctx.objects.set(slot, item.mod_revision);
                }
            },
        )
        .await?;
        revs.push(rev);
    }
    Ok(revs)
}

/// Make sure `--objects` objects exist (created as the apiserver creates them), and learn every
/// object's mod revision from a paginated list of each resource. Returns each resource's list
/// revision.
async fn preload(ctx: &Arc<Ctx>, channels: &[Channel], clients: usize) -> Result<Vec<i64>, String> {
    let mut kv = KvClient::new(channels[0].clone()).max_decoding_message_size(usize::MAX);
    let mut violations = Violations::default();
    learn(ctx, &mut kv, &mut violations).await?;
    let missing: Vec<u64> = (0..ctx.args.objects)
        .filter(|s| ctx.objects.rev(*s) == 0)
        .collect();
    let t0 = rt::now();
    let missing = Arc::new(missing);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients.max(16) {
        let (ctx, missing, next) = (ctx.clone(), missing.clone(), next.clone());
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        tasks.push(rt::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&slot) = missing.get(i) else {
                    return Ok::<(), String>(());
                };
                let key = ctx.objects.key(slot);
                let write = request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: ctx.value(),
                    ..Default::default()
                });
                let (_, _, rev) = optimistic(&mut kv, ctx.timeout, &key, 0, write).await?;
                ctx.objects.set(slot, rev);
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| format!("preload task failed: {e}"))?
            .map_err(|e| format!("preload failed: {e}"))?;
    }
    if !missing.is_empty() {
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "Preload: {} objects created in {secs:.2} secs ({:.0}/s)",
            missing.len(),
            missing.len() as f64 / secs.max(1e-9)
        );
    }
    // Listed again, as a reflector starts: the watches start right after these revisions.
    let revs = learn(ctx, &mut kv, &mut violations).await?;
    if violations.count > 0 {
        return Err(format!(
            "the initial lists are inconsistent: {:?}",
            violations.first
        ));
    }
    let present = (0..ctx.objects.revs.len() as u64)
        .filter(|s| ctx.objects.rev(*s) != 0)
        .count();
    println!("Listed: {present} objects before timing");
    Ok(revs)
}

/// Run the k8s workload and print its report; fails on errors or a failed consistency check.
pub async fn run(args: &K8sArgs, load: Load, channels: &[Channel]) -> Result<(), String> {
    let resources: Vec<String> = args
        .resources
        .split(',')
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .collect();
    if resources.is_empty() {
        return Err("--resources is empty".into());
    }
    if resources.iter().any(|r| r == "events") {
        return Err("--resources: events are always written (with leases)".into());
    }
    if args.list_limit <= 0 {
        return Err("--list-limit must be positive".into());
    }
    let mix = Mix::parse(&args.mix)?;
    let values: Vec<u8> = (0..VALUE_POOL_BYTES.div_ceil(8))
        .flat_map(|_| rt::random_u64().to_le_bytes())
        .collect();
    if args.object_size * 4 / 3 > values.len() {
        return Err(format!("--object-size is at most {}", values.len() * 3 / 4));
    }
    let ctx = Arc::new(Ctx {
        args: args.clone(),
        timeout: load.timeout,
        objects: Objects::new(resources.clone(), args.namespaces, args.objects),
        mix,
        lease: tokio::sync::Mutex::new(LeaseSlot::default()),
        remaining: AtomicU64::new(load.total),
        deadline: OnceLock::new(),
        values,
        event_seq: AtomicU64::new(0),
        run_id: rt::random_u64() as u32,
    });
    let list_revs = preload(&ctx, channels, load.clients).await?;

    // The watches: one per resource and one on the events, from the revision after the lists.
    let events_start = list_revs.iter().copied().max().unwrap_or(0) + 1;
    let mut prefixes: Vec<(Vec<u8>, i64)> = resources
        .iter()
        .zip(&list_revs)
        .map(|(r, rev)| (resource_prefix(r), rev + 1))
        .collect();
    prefixes.push((resource_prefix("events"), events_start));
    let (drain_tx, drain_rx) = watch::channel(None);
    let every = Duration::from_millis(args.progress_interval_ms.max(1));
    let mut watchers = Vec::new();
    for (i, (prefix, start)) in prefixes.iter().enumerate() {
        let (ready_tx, ready_rx) = oneshot::channel();
        watchers.push(rt::spawn(watch_loop(
            channels[i % channels.len()].clone(),
            prefix.clone(),
            *start,
            every,
            ready_tx,
            drain_rx.clone(),
        )));
        ready_rx
            .await
            .map_err(|_| "a watch task ended".to_string())??;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let compactor = (args.compact_interval_secs > 0).then(|| {
        rt::spawn(compactor(
            channels[channels.len() - 1].clone(),
            Duration::from_secs(args.compact_interval_secs),
            load.timeout,
            stop_rx,
        ))
    });

    // Scripts sample the server's CPU time between these two lines.
    println!("Timed phase: started");
    let start = rt::now();
    if args.duration_secs > 0 {
        let _ = ctx
            .deadline
            .set(start + Duration::from_secs(args.duration_secs));
    }
    let mut tasks = Vec::new();
    for c in 0..load.clients.max(1) {
        tasks.push(rt::spawn(client_loop(
            ctx.clone(),
            c,
            channels[c % channels.len()].clone(),
        )));
    }
    let mut stats = Stats::default();
    for t in tasks {
        stats.merge(t.await.map_err(|e| format!("client task failed: {e}"))?);
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("Timed phase: done");
    let _ = stop_tx.send(true);
    if let Some(c) = compactor {
        stats.merge(c.await.map_err(|e| format!("compactor failed: {e}"))?);
    }
    let target = stats.acked.iter().map(|a| a.rev).max().unwrap_or(0);
    let _ = drain_tx.send(Some(target));
    let mut watched = Vec::new();
    for w in watchers {
        watched.push(w.await.map_err(|e| format!("watch task failed: {e}"))?);
    }

    print_report(&stats, &watched, &load, args, seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn mix_weights() {
        let m = Mix::parse("create=1,update=3,list=0").unwrap();
        assert_eq!(m.pick(0), Op::Create);
        assert_eq!(m.pick(1), Op::Update);
        assert_eq!(m.pick(3), Op::Update);
        assert_eq!(m.pick(4), Op::Create);
        assert!(Mix::parse("compact=1").is_err());
        assert!(Mix::parse("update").is_err());
        assert!(Mix::parse("update=0").is_err());
        assert!(Mix::parse(DEFAULT_MIX).is_ok());
    }

    #[test]
    fn object_keys_name_their_slot() {
        let o = Objects::new(vec!["pods".into(), "secrets".into()], 3, 10);
        assert_eq!(o.key(5), b"/registry/secrets/ns-2/obj-5");
        assert_eq!(o.resource_of(5), 1);
        assert_eq!(o.slot_of(b"/registry/secrets/ns-2/obj-5"), Some(5));
        assert_eq!(o.slot_of(b"/registry/pods/ns-2/obj-5"), None);
        assert_eq!(o.slot_of(b"/registry/secrets/ns-2/obj-99999"), None);
    }
}
