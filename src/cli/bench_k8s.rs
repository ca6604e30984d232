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

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
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

/// Violations of a check: the first few described, all counted.
#[derive(Debug, Default, Clone)]
pub(crate) struct Violations {
    pub(crate) count: u64,
    pub(crate) first: Vec<String>,
}

impl Violations {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < VIOLATIONS_KEPT {
            self.first.push(what);
        }
    }

    fn merge(&mut self, other: Violations) {
        self.count += other.count;
        for v in other.first {
            if self.first.len() < VIOLATIONS_KEPT {
                self.first.push(v);
            }
        }
    }
}

/// The consistency check of one watcher, fed its events and progress notifications in the order
/// they arrive.
#[derive(Debug)]
pub(crate) struct WatchCheck {
    start: i64,
    last: Option<(i64, Vec<u8>)>,
    progress: i64,
    received: Vec<(i64, rt::Instant)>,
    pub(crate) violations: Violations,
}

impl WatchCheck {
    /// A watcher created with `start_revision` `start`.
    pub(crate) fn new(start: i64) -> WatchCheck {
        WatchCheck {
            start,
            last: None,
            progress: 0,
            received: Vec::new(),
            violations: Violations::default(),
        }
    }

    /// An event at `rev` on `key`, arrived `at`.
    pub(crate) fn event(&mut self, rev: i64, key: &[u8], at: rt::Instant) {
        let shown = String::from_utf8_lossy(key);
        if rev < self.start {
            self.violations.add(format!(
                "event at revision {rev} ({shown}) before the start revision {}",
                self.start
            ));
        }
        if rev <= self.progress {
            self.violations.add(format!(
                "event at revision {rev} ({shown}) after a progress notification at {}",
                self.progress
            ));
        }
        if let Some((last_rev, last_key)) = &self.last {
            if rev < *last_rev {
                self.violations.add(format!(
                    "event at revision {rev} ({shown}) after one at {last_rev}"
                ));
            } else if rev == *last_rev && key == last_key.as_slice() {
                self.violations
                    .add(format!("event at revision {rev} ({shown}) delivered twice"));
            }
        }
        if self.last.as_ref().is_none_or(|(r, _)| rev >= *r) {
            self.last = Some((rev, key.to_vec()));
        }
        self.received.push((rev, at));
    }

    /// A progress notification: every event up to `rev` has been delivered.
    pub(crate) fn progress(&mut self, rev: i64) {
        self.progress = self.progress.max(rev);
    }

    /// The revision up to which this watcher has seen everything.
    pub(crate) fn through(&self) -> i64 {
        let last = self.last.as_ref().map_or(0, |(r, _)| *r);
        self.progress.max(last)
    }

    /// Of `acked` revisions (writes on this watcher's prefix), those it never delivered.
    pub(crate) fn missing(&self, acked: impl IntoIterator<Item = i64>) -> Vec<i64> {
        let got: BTreeSet<i64> = self.received.iter().map(|(r, _)| *r).collect();
        acked
            .into_iter()
            .filter(|r| *r >= self.start && !got.contains(r))
            .collect()
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

async fn deadline<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match rt::timeout(timeout, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

fn compare_mod(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(rev)),
        range_end: vec![],
    }
}

fn get_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The mod revision of the key the failure branch of an optimistic write read (0: absent).
fn current_rev(resp: &TxnResponse) -> i64 {
    match resp.responses.first().and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => {
            r.kvs.first().map_or(0, |kv| kv.mod_revision)
        }
        _ => 0,
    }
}

fn revision(resp: &TxnResponse) -> i64 {
    resp.header.as_ref().map_or(0, |h| h.revision)
}

/// An optimistic write of `key` (kube's `OptimisticPut`/`OptimisticDelete` with `GetOnFailure`):
/// applied if its mod revision is still `expected`. Returns whether it was, the revision it wrote
/// at (0 if it wrote nothing), and the key's mod revision afterwards (0: absent).
async fn optimistic(
    kv: &mut KvClient<Channel>,
    timeout: Duration,
    key: &[u8],
    expected: i64,
    write: request_op::Request,
) -> Result<(bool, i64, i64), String> {
    let deleting = matches!(write, request_op::Request::RequestDeleteRange(_));
    let req = TxnRequest {
        compare: vec![compare_mod(key, expected)],
        success: vec![RequestOp {
            request: Some(write),
        }],
        failure: vec![get_op(key)],
    };
    let resp = deadline(timeout, kv.txn(req)).await?;
    let rev = revision(&resp);
    if resp.succeeded {
        // Deleting a key that is absent (`expected` 0) writes nothing, and the header then holds
        // some earlier revision: no event to expect.
        let deleted = match resp.responses.first().and_then(|r| r.response.as_ref()) {
            Some(response_op::Response::ResponseDeleteRange(d)) => d.deleted,
            _ => 0,
        };
        match (deleting, deleted) {
            (true, 0) => Ok((true, 0, 0)),
            (true, _) => Ok((true, rev, 0)),
            (false, _) => Ok((true, rev, rev)),
        }
    } else {
        Ok((false, 0, current_rev(&resp)))
    }
}

/// One paginated list of `[prefix, prefix_end)` as the apiserver's pager reads it. Calls `each`
/// for every key-value and checks the pages: keys ascending, adding up to the first page's count.
async fn list(
    kv: &mut KvClient<Channel>,
    timeout: Duration,
    prefix: &[u8],
    limit: i64,
    violations: &mut Violations,
    mut each: impl FnMut(&crate::pb::mvccpb::KeyValue),
) -> Result<i64, String> {
    let end = prefix_end(prefix);
    let mut key = prefix.to_vec();
    let mut rev = 0;
    let mut expected = None;
    let mut seen = 0i64;
    let mut last: Option<Vec<u8>> = None;
    loop {
        let req = RangeRequest {
            key: key.clone(),
            range_end: end.clone(),
            limit,
            revision: rev,
            ..Default::default()
        };
        let resp = deadline(timeout, kv.range(req)).await?;
        if rev == 0 {
            rev = resp.header.as_ref().map_or(0, |h| h.revision);
            expected = Some(resp.count);
        }
        for kv in &resp.kvs {
            if last.as_ref().is_some_and(|l| kv.key <= *l) {
                violations.add(format!(
                    "list of {}: key {} after {}",
                    String::from_utf8_lossy(prefix),
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(last.as_deref().unwrap_or_default())
                ));
            }
            last = Some(kv.key.clone());
            each(kv);
        }
        seen += resp.kvs.len() as i64;
        match (&last, resp.more) {
            (Some(l), true) if !resp.kvs.is_empty() => {
                key = l.clone();
                key.push(0);
            }
            _ => break,
        }
    }
    if expected != Some(seen) {
        violations.add(format!(
            "list of {} at revision {rev}: {seen} keys in the pages, the first page counted {}",
            String::from_utf8_lossy(prefix),
            expected.unwrap_or(0)
        ));
    }
    Ok(rev)
}

fn is_compacted(e: &str) -> bool {
    e.contains("required revision has been compacted")
}

async fn lease_for_event(
    ctx: &Ctx,
    lease: &mut LeaseClient<Channel>,
    stats: &mut Stats,
) -> Option<i64> {
    let mut slot = ctx.lease.lock().await;
    let stale = slot.granted.is_none_or(|g| g.elapsed() >= LEASE_REUSE);
    if slot.id == 0 || stale || slot.attached >= ctx.args.events_per_lease.max(1) {
        let t0 = rt::now();
        let req = LeaseGrantRequest {
            ttl: ctx.args.event_ttl_secs,
            id: 0,
        };
        match deadline(ctx.timeout, lease.lease_grant(req)).await {
            Ok(r) if r.error.is_empty() => {
                stats.record(Op::LeaseGrant, t0, Outcome::Ok);
                *slot = LeaseSlot {
                    id: r.id,
                    attached: 0,
                    granted: Some(t0),
                };
            }
            Ok(r) => {
                stats.record(Op::LeaseGrant, t0, Outcome::Error(r.error));
                return None;
            }
            Err(e) => {
                stats.record(Op::LeaseGrant, t0, Outcome::Error(e));
                return None;
            }
        }
    }
    slot.attached += 1;
    Some(slot.id)
}

/// One operation of a client loop.
async fn one_op(
    ctx: &Ctx,
    client: usize,
    kv: &mut KvClient<Channel>,
    lease: &mut LeaseClient<Channel>,
    stats: &mut Stats,
) {
    let op = ctx.mix.pick(rt::random_u64());
    let objects = &ctx.objects;
    let t0 = rt::now();
    let outcome = match op {
        Op::Create | Op::Update | Op::Delete => {
            let slot = objects.pick(op != Op::Create);
            let key = objects.key(slot);
            let expected = if op == Op::Create {
                0
            } else {
                objects.rev(slot)
            };
            let write = if op == Op::Delete {
                request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })
            } else {
                request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: ctx.value(),
                    ..Default::default()
                })
            };
            match optimistic(kv, ctx.timeout, &key, expected, write).await {
                Ok((applied, rev, now)) => {
                    objects.set(slot, now);
                    if applied {
                        if rev > 0 {
                            stats.acked.push(Ack {
                                rev,
                                prefix: objects.resource_of(slot),
                                sent: t0,
                            });
                        }
                        Outcome::Ok
                    } else {
                        Outcome::Conflict
                    }
                }
                Err(e) => Outcome::Error(e),
            }
        }
        Op::Get => {
            let req = RangeRequest {
                key: objects.key(objects.pick(true)),
                limit: 1,
                ..Default::default()
            };
            match deadline(ctx.timeout, kv.range(req)).await {
                Ok(_) => Outcome::Ok,
                Err(e) => Outcome::Error(e),
            }
        }
        Op::List | Op::ListAll => {
            let resource =
                &objects.resources[(rt::random_u64() as usize) % objects.resources.len()];
            let mut prefix = resource_prefix(resource);
            if op == Op::List {
                let ns = rt::random_u64() % objects.namespaces;
                prefix.extend_from_slice(format!("ns-{ns}/").as_bytes());
            }
            let limit = ctx.args.list_limit;
            match list(
                kv,
                ctx.timeout,
                &prefix,
                limit,
                &mut stats.list_violations,
                |_| {},
            )
            .await
            {
                Ok(_) => Outcome::Ok,
                Err(e) if is_compacted(&e) => Outcome::Conflict,
                Err(e) => Outcome::Error(e),
            }
        }
        Op::Count => {
            let resource =
                &objects.resources[(rt::random_u64() as usize) % objects.resources.len()];
            let prefix = resource_prefix(resource);
            let req = RangeRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                count_only: true,
                ..Default::default()
            };
            match deadline(ctx.timeout, kv.range(req)).await {
                Ok(_) => Outcome::Ok,
                Err(e) => Outcome::Error(e),
            }
        }
        Op::Event => match lease_for_event(ctx, lease, stats).await {
            None => Outcome::Error("no lease for the event".into()),
            Some(lease_id) => {
                let seq = ctx.event_seq.fetch_add(1, Ordering::Relaxed);
                let ns = seq % objects.namespaces;
                let run = ctx.run_id;
                let key =
                    format!("/registry/events/ns-{ns}/ev-{run:08x}-{client}-{seq}").into_bytes();
                let write = request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: ctx.value(),
                    lease: lease_id,
                    ..Default::default()
                });
                // The lease wait above is part of what an event costs the apiserver, but not of
                // the request: time the request alone.
                let t1 = rt::now();
                let outcome = match optimistic(kv, ctx.timeout, &key, 0, write).await {
                    Ok((true, rev, _)) => {
                        stats.acked.push(Ack {
                            rev,
                            prefix: ctx.events_prefix(),
                            sent: t1,
                        });
                        Outcome::Ok
                    }
                    Ok((false, _, _)) => Outcome::Conflict,
                    Err(e) => Outcome::Error(e),
                };
                stats.record(Op::Event, t1, outcome);
                return;
            }
        },
        Op::LeaseGrant | Op::Compact => return,
    };
    stats.record(op, t0, outcome);
}

async fn client_loop(ctx: Arc<Ctx>, client: usize, channel: Channel) -> Stats {
    let mut kv = KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX);
    let mut lease = LeaseClient::new(channel);
    let mut stats = Stats::default();
    while ctx.one_more() {
        one_op(&ctx, client, &mut kv, &mut lease, &mut stats).await;
    }
    stats
}

/// kube-apiserver's compactor: every interval, agree through `compact_rev_key` and compact to the
/// revision seen one interval earlier.
async fn compactor(
    channel: Channel,
    interval: Duration,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> Stats {
    let mut kv = KvClient::new(channel);
    let mut stats = Stats::default();
    let (mut version, mut rev) = (0i64, 0i64);
    loop {
        if rt::timeout(interval, stop.changed()).await.is_ok() {
            return stats;
        }
        let req = TxnRequest {
            compare: vec![Compare {
                key: COMPACT_REV_KEY.to_vec(),
                target: CompareTarget::Version as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::Version(version)),
                range_end: vec![],
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: COMPACT_REV_KEY.to_vec(),
                    value: rev.to_string().into_bytes(),
                    ..Default::default()
                })),
            }],
            failure: vec![get_op(COMPACT_REV_KEY)],
        };
        let resp = match deadline(timeout, kv.txn(req)).await {
            Ok(r) => r,
            Err(e) => {
                stats.record(Op::Compact, rt::now(), Outcome::Error(e));
                continue;
            }
        };
        let now = revision(&resp);
        if !resp.succeeded {
            // Another compactor moved on: follow its schedule.
            version = match resp.responses.first().and_then(|r| r.response.as_ref()) {
                Some(response_op::Response::ResponseRange(r)) => {
                    r.kvs.first().map_or(0, |kv| kv.version)
                }
                _ => 0,
            };
            rev = now;
            continue;
        }
        version += 1;
        if rev != 0 {
            let t0 = rt::now();
            let req = CompactionRequest {
                revision: rev,
                physical: false,
            };
            let outcome = match deadline(timeout, kv.compact(req)).await {
                Ok(_) => Outcome::Ok,
                Err(e) if is_compacted(&e) => Outcome::Conflict,
                Err(e) => Outcome::Error(e),
            };
            stats.record(Op::Compact, t0, outcome);
        }
        rev = now;
    }
}

/// What one watch stream saw.
struct WatchReport {
    check: WatchCheck,
    progress_requests: u64,
    progress_notifications: u64,
    stream: Violations,
}

/// One watch stream with one watcher on `prefix` from `start` (kube-apiserver opens a stream per
/// watch): progress requests every `every`; once `drain` holds a revision, ask for progress often
/// until the watcher is through it (or [`WATCH_DRAIN_DEADLINE`] passes).
async fn watch_loop(
    channel: Channel,
    prefix: Vec<u8>,
    start: i64,
    every: Duration,
    ready: oneshot::Sender<Result<(), String>>,
    mut drain: watch::Receiver<Option<i64>>,
) -> WatchReport {
    let mut report = WatchReport {
        check: WatchCheck::new(start),
        progress_requests: 0,
        progress_notifications: 0,
        stream: Violations::default(),
    };
    let (tx, rx) = mpsc::channel::<WatchRequest>(4);
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.clone(),
            range_end: prefix_end(&prefix),
            start_revision: start,
            ..Default::default()
        })),
    };
    let progress = || WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    };
    // The create goes out with the call: a grpc-go server answers the call with its first message.
    let started = async {
        tx.send(create)
            .await
            .map_err(|_| "watch stream closed".to_string())?;
        let mut client = WatchClient::new(channel).max_decoding_message_size(usize::MAX);
        let mut responses = client
            .watch(requests)
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        let resp = responses
            .message()
            .await
            .map_err(|e| e.message().to_string())?
            .ok_or("watch stream ended")?;
        if !resp.created || resp.canceled {
            return Err(format!("watch not created: {}", resp.cancel_reason));
        }
        Ok::<_, String>((responses, resp.watch_id))
    };
    let (mut responses, id) = match rt::timeout(WATCH_START_DEADLINE, started).await {
        Ok(Ok(r)) => {
            let _ = ready.send(Ok(()));
            r
        }
        Ok(Err(e)) => {
            let _ = ready.send(Err(e));
            return report;
        }
        Err(_) => {
            let _ = ready.send(Err("the watcher was not created in time".into()));
            return report;
        }
    };
    let mut target: Option<i64> = None;
    let mut drain_deadline = rt::now() + Duration::from_secs(365 * 24 * 3600);
    let mut next_progress = rt::now() + every;
    loop {
        if let Some(t) = target {
            if report.check.through() >= t || rt::now() >= drain_deadline {
                break;
            }
        }
        let wait = next_progress
            .min(drain_deadline)
            .saturating_duration_since(rt::now());
        tokio::select! {
            msg = responses.message() => match msg {
                Ok(Some(resp)) => on_response(&mut report, id, resp),
                Ok(None) => {
                    report.stream.add("watch stream ended".into());
                    break;
                }
                Err(e) => {
                    report.stream.add(format!("watch stream failed: {}", e.message()));
                    break;
                }
            },
            _ = rt::sleep(wait) => {
                if rt::now() >= next_progress {
                    if tx.send(progress()).await.is_err() {
                        break;
                    }
                    report.progress_requests += 1;
                    let gap = if target.is_some() { DRAIN_PROGRESS_INTERVAL } else { every };
                    next_progress = rt::now() + gap;
                }
            },
            changed = drain.changed(), if target.is_none() => {
                target = match changed {
                    Ok(()) => *drain.borrow(),
                    Err(_) => Some(0),
                };
                drain_deadline = rt::now() + WATCH_DRAIN_DEADLINE;
                next_progress = rt::now();
            },
        }
    }
    report
}

fn on_response(report: &mut WatchReport, id: i64, resp: WatchResponse) {
    let at = rt::now();
    let rev = resp.header.as_ref().map_or(0, |h| h.revision);
    if resp.canceled || resp.compact_revision > 0 {
        report.stream.add(format!(
            "watcher canceled (compact revision {}): {}",
            resp.compact_revision, resp.cancel_reason
        ));
        return;
    }
    // -1: a requested progress notification, for every watcher of the stream.
    if resp.watch_id != id && resp.watch_id != -1 {
        report
            .stream
            .add(format!("a response for unknown watcher {}", resp.watch_id));
        return;
    }
    if resp.events.is_empty() {
        report.progress_notifications += 1;
        report.check.progress(rev);
        return;
    }
    for ev in &resp.events {
        if let Some(kv) = &ev.kv {
            report.check.event(kv.mod_revision, &kv.key, at);
        }
    }
}

/// Latency percentile `p` in ms of sorted microseconds.
fn pct_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let idx = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    sorted_us[idx] as f64 / 1000.0
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

fn print_report(
    stats: &Stats,
    watched: &[WatchReport],
    load: &Load,
    args: &K8sArgs,
    seconds: f64,
) -> Result<(), String> {
    let answered: u64 = OPS
        .iter()
        .filter(|o| o.pickable())
        .map(|o| stats.lat_us[o.idx()].len() as u64)
        .sum();
    let errors: u64 = stats.errors.iter().sum();
    println!(
        "Summary (K8s, {} clients, {} conns, {} objects):",
        load.clients, load.conns, args.objects
    );
    println!("  Total:        {seconds:.4} secs");
    println!("  Operations:   {answered}");
    println!(
        "  Requests/sec: {:.1}",
        if seconds > 0.0 {
            answered as f64 / seconds
        } else {
            0.0
        }
    );
    println!(
        "  {:<12} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "op", "count", "ops/s", "p50 ms", "p99 ms", "max ms", "conflicts", "errors"
    );
    for op in OPS {
        let mut lat = stats.lat_us[op.idx()].clone();
        lat.sort_unstable();
        let i = op.idx();
        if lat.is_empty() && stats.errors[i] == 0 {
            continue;
        }
        println!(
            "  {:<12} {:>9} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>7}",
            op.name(),
            lat.len(),
            lat.len() as f64 / seconds.max(1e-9),
            pct_ms(&lat, 0.50),
            pct_ms(&lat, 0.99),
            lat.last().copied().unwrap_or(0) as f64 / 1000.0,
            stats.conflicts[i],
            stats.errors[i]
        );
    }

    // Watch delivery: from a write's send to its event's arrival.
    let mut by_prefix: Vec<Vec<i64>> = vec![Vec::new(); watched.len()];
    let mut sent: HashMap<i64, rt::Instant> = HashMap::with_capacity(stats.acked.len());
    for a in &stats.acked {
        if let Some(v) = by_prefix.get_mut(a.prefix) {
            v.push(a.rev);
        }
        sent.insert(a.rev, a.sent);
    }
    let mut delivery_us = Vec::new();
    let mut delivered = 0u64;
    let mut missing = Vec::new();
    let mut violations = Violations::default();
    let (mut requests, mut notifications) = (0, 0);
    for (w, acked) in watched.iter().zip(&by_prefix) {
        let check = &w.check;
        violations.merge(w.stream.clone());
        requests += w.progress_requests;
        notifications += w.progress_notifications;
        delivered += check.received.len() as u64;
        delivery_us.extend(check.received.iter().filter_map(|(rev, at)| {
            sent.get(rev)
                .map(|t0| at.saturating_duration_since(*t0).as_micros() as u64)
        }));
        missing.extend(check.missing(acked.iter().copied()));
        violations.merge(check.violations.clone());
    }
    delivery_us.sort_unstable();
    println!(
        "  {:<12} {:>9} {:>10.1} {:>9.3} {:>9.3} {:>9.3}",
        "watch-event",
        delivered,
        delivered as f64 / seconds.max(1e-9),
        pct_ms(&delivery_us, 0.50),
        pct_ms(&delivery_us, 0.99),
        delivery_us.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    println!(
        "  Watch:        {} watchers, {} events, {} acknowledged writes missing, {} progress requests, {} notifications",
        watched.len(),
        delivered,
        missing.len(),
        requests,
        notifications
    );
    violations.merge(stats.list_violations.clone());
    missing.sort_unstable();
    if !missing.is_empty() {
        violations.add(format!(
            "{} acknowledged writes never seen by their watcher, first revisions {:?}",
            missing.len(),
            &missing[..missing.len().min(VIOLATIONS_KEPT)]
        ));
    }
    if violations.count == 0 {
        println!("  Consistency:  ok");
    } else {
        println!("  Consistency:  {} violations", violations.count);
        for v in &violations.first {
            println!("    {v}");
        }
    }
    println!("  Errors:       {errors}");
    if let Some(e) = &stats.first_error {
        println!("    first: {e}");
    }
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    if violations.count > 0 {
        return Err(format!("{} consistency violations", violations.count));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_in_order_and_complete_passes() {
        let t = rt::now();
        let mut c = WatchCheck::new(10);
        c.event(10, b"a", t);
        c.event(11, b"a", t);
        // Two keys of one revision (one Txn) are fine.
        c.event(12, b"a", t);
        c.event(12, b"b", t);
        c.progress(15);
        c.event(16, b"c", t);
        assert_eq!(c.violations.count, 0, "{:?}", c.violations.first);
        assert_eq!(c.through(), 16);
        // Revisions before the watcher's start are not its to deliver.
        assert!(c.missing([5, 10, 11, 12, 16]).is_empty());
    }

    #[test]
    fn an_event_out_of_order_is_a_violation() {
        let t = rt::now();
        let mut c = WatchCheck::new(1);
        c.event(5, b"a", t);
        c.event(4, b"b", t);
        assert_eq!(c.violations.count, 1);
        assert!(c.violations.first[0].contains("after one at 5"));
        assert_eq!(c.through(), 5);
    }

    #[test]
    fn an_event_after_a_progress_notification_covering_it_is_a_violation() {
        let t = rt::now();
        let mut c = WatchCheck::new(1);
        c.event(3, b"a", t);
        c.progress(8);
        c.event(7, b"b", t);
        assert_eq!(c.violations.count, 1);
        assert!(c.violations.first[0].contains("progress notification at 8"));
    }

    #[test]
    fn a_duplicate_or_early_event_is_a_violation() {
        let t = rt::now();
        let mut c = WatchCheck::new(10);
        c.event(9, b"a", t);
        c.event(11, b"a", t);
        c.event(11, b"a", t);
        assert_eq!(c.violations.count, 2, "{:?}", c.violations.first);
        assert!(c.violations.first[0].contains("before the start revision 10"));
        assert!(c.violations.first[1].contains("delivered twice"));
    }

    #[test]
    fn a_missing_acknowledged_write_is_reported() {
        let t = rt::now();
        let mut c = WatchCheck::new(3);
        c.event(3, b"a", t);
        c.event(5, b"b", t);
        assert_eq!(c.missing([3, 4, 5, 6]), vec![4, 6]);
    }

    #[test]
    fn violations_keep_the_first_few_and_count_all() {
        let mut v = Violations::default();
        for i in 0..(VIOLATIONS_KEPT + 5) {
            v.add(format!("{i}"));
        }
        assert_eq!(v.count, (VIOLATIONS_KEPT + 5) as u64);
        assert_eq!(v.first.len(), VIOLATIONS_KEPT);
    }

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
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0");
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
    }
}
