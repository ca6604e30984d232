//! Differential test against etcd: the same generated sequences of etcd v3 requests go to a real etcd
//! 3.5.1 (the oracle) and to MetaStore, fresh servers for every seed, and every answer (response
//! message or gRPC error code and message) must be the same once what may legitimately differ is
//! masked (see `differential/compare.rs`).
//!
//! Knobs (environment):
//! - `METASTORE_DIFF_SEEDS`: seeds to run, `1,2,3`, `1..200` (200 excluded), `1..=200`, or a mix
//!   (`1,5..9`); default `1..=20`.
//! - `METASTORE_DIFF_REQUESTS`: requests per seed, default 300.
//! - `METASTORE_DIFF_SHRINK_SECS`: time budget to shrink the first diverging seed, default 60 (0: off).
//! - `METASTORE_DIFF_SKIP`: request classes the generator leaves out, comma-separated (for hunting
//!   past a known divergence; the names are listed on `Gen::skip` in `differential/generate.rs`).
//! - `METASTORE_DIFF_ENGINE`: `rocksdb` or `memory` for every seed (default: alternate by seed).
//! - `METASTORE_DIFF_VERBOSE=1`: print every request and both answers.
//! - `METASTORE_ETCD_BIN`: the etcd binary (default: where `scripts/etcd-reference.sh` installs it).

#[path = "differential/auth.rs"]
mod auth;
mod common;
#[path = "differential/compare.rs"]
mod compare;
#[path = "differential/exec.rs"]
mod exec;
#[path = "differential/generate.rs"]
mod generate;
#[path = "differential/json.rs"]
mod json;
#[path = "differential/servers.rs"]
mod servers;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use auth::AuthReq;
use compare::{mask, max_revision, pretty};
use exec::{exec, Out};
use generate::{Ctx, Gen, Req};
use metastore::pb::etcdserverpb::{
    request_op, AuthUserChangePasswordRequest, AuthUserDeleteRequest, TxnRequest,
};
use metastore::pb::v3electionpb::LeaderKey;
use servers::Pair;

/// The first answer that differed in a run.
#[derive(Clone, Debug)]
struct Divergence {
    index: usize,
    req: Req,
    /// The answers as received (unmasked).
    etcd: Out,
    ours: Out,
    /// etcd's process state and log tail when it diverged.
    etcd_state: String,
}

impl Divergence {
    fn render(&self) -> String {
        format!(
            "request #{}: {}\n  etcd 3.5.1: {}\n  metastore:  {}\n  {}",
            self.index,
            pretty(&format!("{:?}", self.req)),
            pretty(&format!("{:?}", self.etcd)),
            pretty(&format!("{:?}", self.ours)),
            self.etcd_state,
        )
    }
}

/// Where a run's requests come from.
enum Source<'a> {
    /// Generated one at a time from the reference's answers so far.
    Gen(Gen, usize),
    /// A fixed sequence (a replay while shrinking).
    Fixed(&'a [Req]),
}

/// Send the requests to both servers, one at a time, until the first divergence; returns the
/// requests sent and the divergence if any.
async fn run(
    pair: &mut Pair,
    mut source: Source<'_>,
    verbose: bool,
) -> (Vec<Req>, Option<Divergence>) {
    let mut ctx = Ctx {
        rev: 1,
        ..Ctx::default()
    };
    let mut sent = Vec::new();
    loop {
        let req = match &mut source {
            Source::Gen(g, n) => {
                if sent.len() == *n {
                    break;
                }
                g.next(&ctx)
            }
            Source::Fixed(reqs) => match reqs.get(sent.len()) {
                Some(r) => r.clone(),
                None => break,
            },
        };
        let (etcd, ours) = futures::join!(
            exec(&mut pair.etcd_conn, &req),
            exec(&mut pair.ours_conn, &req)
        );
        ctx.rev = ctx.rev.max(max_revision(&etcd));
        // Answered or not, it may have happened.
        ctx.defragmented |= matches!(req, Req::Defragment);
        observe_auth(&mut ctx, &req, &etcd);
        let steering = json::typed(&req, &etcd);
        observe_locks(&mut ctx, &req, &steering);
        observe_elections(&mut ctx, &req, &steering);
        if let (Req::Compact(c), true) = (&req, answered(&etcd)) {
            if c.revision > ctx.compacted {
                ctx.compacted = c.revision;
                ctx.compacted_physically = c.physical;
            }
        }
        let index = sent.len();
        sent.push(req.clone());
        if verbose {
            eprintln!(
                "#{index} {}\n   etcd: {}\n   ours: {}",
                pretty(&format!("{req:?}")),
                pretty(&format!("{etcd:?}")),
                pretty(&format!("{ours:?}"))
            );
        }
        let (mut e, mut o) = (etcd.clone(), ours.clone());
        mask(&mut e);
        mask(&mut o);
        if e != o && !intended_difference(&req, &etcd, &ours) {
            return (
                sent,
                Some(Divergence {
                    index,
                    req,
                    etcd,
                    ours,
                    etcd_state: pair.etcd.state(),
                }),
            );
        }
    }
    (sent, None)
}

/// Whether the two answers differ where MetaStore means to differ from etcd 3.5.1, leaving the
/// stores alike:
/// - refusals of a request (not an Auth one) that differ only in which check refused first: etcd
///   validates a request before it looks at the caller, MetaStore checks the caller's permissions
///   before any work that grows with the request (the hostile-clients issue);
/// - `AuthStatus`, which etcd 3.5.1 answers only root and MetaStore anyone, as etcd 3.7 does (the
///   Kubernetes-scale issue);
/// - with auth on, `MoveLeader` needs root and `LeaseTimeToLive` with keys needs read access to
///   them (tests/auth.rs; later etcd 3.5 releases check the latter too), where etcd 3.5.1 answers
///   any user;
/// - a watch from a key on (range end `\0`) by a user who may read that key but not all after
///   it: etcd 3.5.1 turns the `\0` end into an empty one before its permission check, so it
///   checks the first key alone and the watch would show keys the user may not read; MetaStore
///   checks the whole range and cancels the watch;
/// - an empty `Txn` from a caller without a user: it needs no permission, so etcd 3.5.1 applies
///   it; MetaStore answers such a caller nothing but `Authenticate` and `AuthStatus`.
fn intended_difference(req: &Req, etcd: &Out, ours: &Out) -> bool {
    const AUTH_REFUSALS: [&str; 6] = [
        "etcdserver: user name is empty",
        "etcdserver: permission denied",
        "etcdserver: invalid auth token",
        "etcdserver: revision of auth store is old",
        // The maintenance calls' texts.
        "auth: user name is empty",
        "auth: permission denied",
    ];
    let auth_refusal = |m: Option<&str>| m.is_some_and(|m| AUTH_REFUSALS.contains(&m));
    let (theirs, mine) = (refusal(etcd), refusal(ours));
    if !matches!(req, Req::Auth(_))
        && theirs.is_some_and(|m| !AUTH_REFUSALS.contains(&m))
        && auth_refusal(mine)
    {
        return true;
    }
    match req {
        Req::Txn(t) if t.compare.is_empty() && t.success.is_empty() && t.failure.is_empty() => {
            answered(etcd) && auth_refusal(mine)
        }
        Req::Watch(w) if w.range_end == [0] => {
            let created = |out: &Out| match out {
                Out::Watch(items) => match items.first() {
                    Some(exec::WatchItem::Response(r)) => {
                        Some((r.created, r.canceled, r.cancel_reason.clone()))
                    }
                    _ => None,
                },
                _ => None,
            };
            matches!(created(etcd), Some((true, false, _)))
                && created(ours).is_some_and(|(created, canceled, reason)| {
                    created && canceled && reason.ends_with("etcdserver: permission denied")
                })
        }
        Req::MoveLeader(_) => answered(etcd) && auth_refusal(mine),
        Req::LeaseTimeToLive(r) => {
            r.keys && answered(etcd) && mine == Some("etcdserver: permission denied")
        }
        Req::Auth(AuthReq::Status) => auth_refusal(theirs) && answered(ours),
        _ => false,
    }
}

/// Whether `out` answers the request (a response, or the gateway's 200).
fn answered(out: &Out) -> bool {
    match out {
        Out::Error { .. } | Out::Timeout => false,
        Out::Json { status, .. } => *status == 200,
        _ => true,
    }
}

/// The text a refusal gives: the gRPC status message, or the gateway's `message`.
fn refusal(out: &Out) -> Option<&str> {
    match out {
        Out::Error { message, .. } => Some(message),
        Out::Json { status, body } if *status != 200 => body["message"].as_str(),
        _ => None,
    }
}

/// Follow, from etcd's answers, whether auth is on and whether the connection holds a token.
fn observe_auth(ctx: &mut Ctx, req: &Req, etcd: &Out) {
    if refusal(etcd).is_some_and(|m| m.contains("invalid auth token")) {
        ctx.logged_in = None;
    }
    let Req::Auth(a) = req else { return };
    if matches!(a, AuthReq::Logout) {
        ctx.logged_in = None;
    }
    if !answered(etcd) {
        return;
    }
    match a {
        AuthReq::Enable => ctx.auth_enabled = true,
        AuthReq::Disable => {
            ctx.auth_enabled = false;
            ctx.logged_in = None;
        }
        AuthReq::Authenticate(r) => ctx.logged_in = Some(r.name.clone()),
        AuthReq::UserDelete(AuthUserDeleteRequest { name })
        | AuthReq::UserChangePassword(AuthUserChangePasswordRequest { name, .. })
            if ctx.logged_in.as_ref() == Some(name) =>
        {
            ctx.logged_in = None
        }
        _ => {}
    }
}

/// Whether the range `[key, range_end)`, as etcd reads one, holds `k`.
fn covers(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => k >= key && k < end,
    }
}

/// Follow, from etcd's answers, which lock names are held by which key (see `Ctx::locks`).
fn observe_locks(ctx: &mut Ctx, req: &Req, etcd: &Out) {
    match (req, etcd) {
        (Req::Lock(r), Out::Lock(resp)) => {
            ctx.locks
                .insert(r.name.clone(), Some((resp.key.clone(), r.lease)));
        }
        (Req::Lock(r), Out::Timeout) => {
            // Held after all, or still waiting: leave the name alone.
            ctx.locks.insert(r.name.clone(), None);
        }
        (Req::Unlock(r), Out::Unlock(_)) => ctx
            .locks
            .retain(|_, held| held.as_ref().is_none_or(|(k, _)| *k != r.key)),
        (Req::LeaseRevoke(r), _) if answered(etcd) => ctx
            .locks
            .retain(|_, held| held.as_ref().is_none_or(|(_, lease)| *lease != r.id)),
        (Req::DeleteRange(d), _) if answered(etcd) => ctx.locks.retain(|_, held| {
            held.as_ref()
                .is_none_or(|(k, _)| !covers(&d.key, &d.range_end, k))
        }),
        (Req::Txn(t), _) if answered(etcd) => {
            // A delete in either branch, at any depth, may have run: such a lock is uncertain.
            let mut ranges = Vec::new();
            txn_deletes(t, &mut ranges);
            for held in ctx.locks.values_mut() {
                let hit = held
                    .as_ref()
                    .is_some_and(|(k, _)| ranges.iter().any(|(key, end)| covers(key, end, k)));
                if hit {
                    *held = None;
                }
            }
        }
        _ => {}
    }
}

/// Follow, from etcd's answers, which election names are led by which leader key (see
/// `Ctx::elections`).
fn observe_elections(ctx: &mut Ctx, req: &Req, etcd: &Out) {
    // Whether `given` is the key and revision of the leader `held` (Proclaim and Resign act only
    // then: they compare the key's create revision).
    let same = |given: &Option<LeaderKey>, held: &LeaderKey| {
        given
            .as_ref()
            .is_some_and(|g| g.key == held.key && g.rev == held.rev)
    };
    match (req, etcd) {
        (Req::Campaign(r), Out::Campaign(resp)) => {
            ctx.elections.insert(r.name.clone(), resp.leader.clone());
        }
        // A timed-out campaign may lead after all or still wait; a leader's failed campaign (a
        // new value it could not proclaim) resigns. Leave the name alone either way.
        (Req::Campaign(r), _)
            if !answered(etcd)
                && (*etcd == Out::Timeout || ctx.elections.contains_key(&r.name)) =>
        {
            ctx.elections.insert(r.name.clone(), None);
        }
        (Req::Proclaim(r), Out::Proclaim(_)) => {
            for held in ctx.elections.values_mut().flatten() {
                if same(&r.leader, held) {
                    // The key now belongs to the proclaiming session's lease.
                    held.lease = r.leader.as_ref().map(|l| l.lease).unwrap_or_default();
                }
            }
        }
        (Req::Resign(r), Out::Resign(_)) => ctx
            .elections
            .retain(|_, held| held.as_ref().is_none_or(|h| !same(&r.leader, h))),
        (Req::LeaseRevoke(r), _) if answered(etcd) => ctx
            .elections
            .retain(|_, held| held.as_ref().is_none_or(|h| h.lease != r.id)),
        (Req::Unlock(r), Out::Unlock(_)) => ctx
            .elections
            .retain(|_, held| held.as_ref().is_none_or(|h| h.key != r.key)),
        (Req::DeleteRange(d), _) if answered(etcd) => ctx.elections.retain(|_, held| {
            held.as_ref()
                .is_none_or(|h| !covers(&d.key, &d.range_end, &h.key))
        }),
        (Req::Txn(t), _) if answered(etcd) => {
            let mut ranges = Vec::new();
            txn_deletes(t, &mut ranges);
            for held in ctx.elections.values_mut() {
                let hit = held
                    .as_ref()
                    .is_some_and(|h| ranges.iter().any(|(key, end)| covers(key, end, &h.key)));
                if hit {
                    *held = None;
                }
            }
        }
        _ => {}
    }
}

/// Every delete range in a txn, in either branch, at any depth.
fn txn_deletes(t: &TxnRequest, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                out.push((d.key.clone(), d.range_end.clone()))
            }
            Some(request_op::Request::RequestTxn(t)) => txn_deletes(t, out),
            _ => {}
        }
    }
}

/// Replay `reqs` on fresh servers: the divergence, if the first one is at the last request.
async fn diverges_at_end(bin: &Path, engine: &str, json: bool, reqs: &[Req]) -> Option<Divergence> {
    let mut pair = Pair::start(bin, engine, json).await;
    let (_, d) = run(&mut pair, Source::Fixed(reqs), false).await;
    d.filter(|d| d.index + 1 == reqs.len())
}

/// Shrink a diverging sequence within `budget`, each candidate replayed on fresh servers: delta
/// debugging (ddmin) over the requests before the diverging one, which stays last; then the last
/// request itself, if a txn, loses compares, ops and whole branches (at any depth) one at a time
/// while it still diverges. Returns the smallest sequence found that still diverges at its last
/// request, that divergence, and the number of replays.
async fn shrink(
    bin: &Path,
    engine: &str,
    json: bool,
    reqs: &[Req],
    found: Divergence,
    budget: Duration,
) -> (Vec<Req>, Divergence, usize) {
    let start = Instant::now();
    let mut last = reqs.last().expect("a diverging request").clone();
    let mut prefix: Vec<Req> = reqs[..reqs.len() - 1].to_vec();
    let mut best = found;
    let mut tries = 0;
    let with_last = |p: &[Req], last: &Req| {
        let mut v = p.to_vec();
        v.push(last.clone());
        v
    };
    // The diverging request alone first: often enough.
    if !prefix.is_empty() {
        tries += 1;
        if let Some(d) = diverges_at_end(bin, engine, json, &with_last(&[], &last)).await {
            prefix.clear();
            best = d;
        }
    }
    let mut n = 2usize;
    while !prefix.is_empty() && start.elapsed() < budget {
        let n_chunks = n.min(prefix.len());
        let chunk = prefix.len().div_ceil(n_chunks);
        let mut reduced = false;
        for i in 0..n_chunks {
            if start.elapsed() >= budget {
                break;
            }
            let lo = i * chunk;
            let hi = ((i + 1) * chunk).min(prefix.len());
            if lo >= hi {
                continue;
            }
            let candidate: Vec<Req> = prefix[..lo].iter().chain(&prefix[hi..]).cloned().collect();
            tries += 1;
            if let Some(d) = diverges_at_end(bin, engine, json, &with_last(&candidate, &last)).await
            {
                prefix = candidate;
                best = d;
                n = (n_chunks - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n_chunks >= prefix.len() {
                break;
            }
            n = (n_chunks * 2).min(prefix.len());
        }
    }
    // Then the diverging request itself.
    'simplify: while start.elapsed() < budget {
        let Req::Txn(t) = &last else { break };
        for candidate in txn_reductions(t) {
            if start.elapsed() >= budget {
                break 'simplify;
            }
            let candidate = Req::Txn(candidate);
            tries += 1;
            if let Some(d) =
                diverges_at_end(bin, engine, json, &with_last(&prefix, &candidate)).await
            {
                last = candidate;
                best = d;
                continue 'simplify;
            }
        }
        break;
    }
    (with_last(&prefix, &last), best, tries)
}

/// Every txn one step smaller than `t`: without its compares, its success or failure list, one
/// compare, one op, or with a nested txn one step smaller (biggest steps first).
fn txn_reductions(t: &TxnRequest) -> Vec<TxnRequest> {
    let mut out = Vec::new();
    let (nc, ns, nf) = (t.compare.len(), t.success.len(), t.failure.len());
    if nc > 0 {
        out.push(TxnRequest {
            compare: Vec::new(),
            ..t.clone()
        });
    }
    if ns > 0 {
        out.push(TxnRequest {
            success: Vec::new(),
            ..t.clone()
        });
    }
    if nf > 0 {
        out.push(TxnRequest {
            failure: Vec::new(),
            ..t.clone()
        });
    }
    for i in 0..nc {
        let mut c = t.clone();
        c.compare.remove(i);
        out.push(c);
    }
    for branch in [true, false] {
        let ops = if branch { &t.success } else { &t.failure };
        for i in 0..ops.len() {
            let mut c = t.clone();
            let list = if branch {
                &mut c.success
            } else {
                &mut c.failure
            };
            list.remove(i);
            out.push(c);
        }
        for (i, op) in ops.iter().enumerate() {
            if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
                for smaller in txn_reductions(nested) {
                    let mut c = t.clone();
                    let list = if branch {
                        &mut c.success
                    } else {
                        &mut c.failure
                    };
                    list[i].request = Some(request_op::Request::RequestTxn(smaller));
                    out.push(c);
                }
            }
        }
    }
    out
}

/// `1,2,3`, `1..200` (end excluded), `1..=200`, or a mix.
fn parse_seeds(spec: &str) -> Vec<u64> {
    let mut seeds = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once("..") {
            let a: u64 = a.trim().parse().expect("METASTORE_DIFF_SEEDS: range start");
            let (b, inclusive) = match b.strip_prefix('=') {
                Some(b) => (b, true),
                None => (b, false),
            };
            let b: u64 = b.trim().parse().expect("METASTORE_DIFF_SEEDS: range end");
            seeds.extend(if inclusive { a..b + 1 } else { a..b });
        } else {
            seeds.push(part.parse().expect("METASTORE_DIFF_SEEDS: a seed"));
        }
    }
    seeds
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        _ => default,
    }
}

#[test]
fn differential_against_etcd_3_5_1() {
    campaign(false, "1..=20")
}

/// The same, with every request that has a JSON gateway route sent through it
/// (`differential/json.rs`).
#[test]
fn differential_through_the_json_gateway_against_etcd_3_5_1() {
    campaign(true, "1..=8")
}

/// Run the seeds of `METASTORE_DIFF_SEEDS` (else `default_seeds`), through the gateway if `json`.
fn campaign(json: bool, default_seeds: &str) {
    let bin = servers::etcd_binary();
    let seeds = parse_seeds(
        &std::env::var("METASTORE_DIFF_SEEDS").unwrap_or_else(|_| default_seeds.into()),
    );
    let requests: usize = env_or("METASTORE_DIFF_REQUESTS", 300);
    let shrink_secs: u64 = env_or("METASTORE_DIFF_SHRINK_SECS", 60);
    let verbose = std::env::var("METASTORE_DIFF_VERBOSE").is_ok_and(|v| v == "1");
    let forced_engine = std::env::var("METASTORE_DIFF_ENGINE").ok();
    let skip: HashSet<String> = std::env::var("METASTORE_DIFF_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let started = Instant::now();
    let mut failures: Vec<(u64, String, Divergence, Vec<Req>)> = Vec::new();
    for &seed in &seeds {
        let engine = forced_engine
            .clone()
            .unwrap_or_else(|| common::ENGINES[(seed % 2) as usize].to_string());
        let t = Instant::now();
        let (sent, divergence) = rt.block_on(async {
            let mut pair = Pair::start(&bin, &engine, json).await;
            run(
                &mut pair,
                Source::Gen(Gen::new(seed, skip.clone()), requests),
                verbose,
            )
            .await
        });
        match divergence {
            None => eprintln!(
                "seed {seed} ({engine}): {} requests agree ({:.1} s)",
                sent.len(),
                t.elapsed().as_secs_f64()
            ),
            Some(d) => {
                eprintln!(
                    "seed {seed} ({engine}): DIVERGES at {}\n{}\n",
                    d.index,
                    d.render()
                );
                failures.push((seed, engine, d, sent));
            }
        }
    }
    eprintln!(
        "{} seeds x {requests} requests in {:.1} s, {} diverged",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if failures.is_empty() {
        return;
    }

    let mut report = String::new();
    for (seed, engine, d, _) in &failures {
        report.push_str(&format!("seed {seed} ({engine}): {}\n", d.render()));
    }
    let (seed, engine, d, sent) = failures[0].clone();
    let skip_env = if skip.is_empty() {
        String::new()
    } else {
        format!(
            " METASTORE_DIFF_SKIP={}",
            skip.iter().cloned().collect::<Vec<_>>().join(",")
        )
    };
    let test = if json {
        "differential_through_the_json_gateway"
    } else {
        "differential_against"
    };
    let replay = format!(
        "METASTORE_DIFF_SEEDS={seed} METASTORE_DIFF_REQUESTS={requests}{skip_env} cargo test --test differential {test}",
    );
    if shrink_secs > 0 {
        let (min, md, tries) = rt.block_on(shrink(
            &bin,
            &engine,
            json,
            &sent,
            d,
            Duration::from_secs(shrink_secs),
        ));
        report.push_str(&format!(
            "\nseed {seed} shrunk to {} request(s) ({tries} replays); the last one diverges:\n",
            min.len()
        ));
        for (i, r) in min.iter().enumerate() {
            report.push_str(&format!("  {i}: {}\n", pretty(&format!("{r:?}"))));
        }
        report.push_str(&format!(
            "  etcd 3.5.1: {}\n  metastore:  {}\n",
            pretty(&format!("{:?}", md.etcd)),
            pretty(&format!("{:?}", md.ours))
        ));
    }
    panic!(
        "MetaStore and etcd 3.5.1 answered differently on {} of {} seeds:\n{report}\nreplay: {replay}",
        failures.len(),
        seeds.len()
    );
}

/// The generator is a function of the seed and of what the reference answered, and it reaches
/// every request class.
#[test]
fn generator_is_deterministic_and_covers_every_class() {
    let draw = |seed| {
        let mut g = Gen::new(seed, HashSet::new());
        let mut ctx = Ctx::default();
        (0..3000)
            .map(|i| {
                ctx.rev = 1 + i / 2;
                ctx.compacted = i / 10;
                g.next(&ctx)
            })
            .collect::<Vec<_>>()
    };
    let a = draw(7);
    assert_eq!(a, draw(7), "same seed, same requests");
    assert_ne!(a, draw(8), "another seed, other requests");
    let kinds: HashSet<String> = a
        .iter()
        .map(|r| format!("{r:?}").split('(').next().unwrap().to_string())
        .collect();
    for kind in [
        "Range",
        "Put",
        "DeleteRange",
        "Txn",
        "Compact",
        "LeaseGrant",
        "LeaseRevoke",
        "LeaseTimeToLive",
        "LeaseLeases",
        "LeaseKeepAlive",
        "Watch",
        "WatchMany",
        "Status",
        "MemberList",
        "Defragment",
        "MoveLeader",
        "HashKv",
        "AlarmGet",
        "Auth",
        "Lock",
        "Unlock",
        "Campaign",
        "Proclaim",
        "Leader",
        "Resign",
    ] {
        assert!(kinds.contains(kind), "{kind} never drawn: {kinds:?}");
    }
    let big = a.iter().any(|r| match r {
        Req::Txn(t) => t.compare.len().max(t.success.len()).max(t.failure.len()) > 128,
        _ => false,
    });
    assert!(big, "no txn over the op limit");
}

#[test]
fn renders_bytes_and_parses_seed_lists() {
    assert_eq!(
        pretty("Put { key: [97, 0, 255], value: [], keys: [[98], []], n: [1, 2] }"),
        r#"Put { key: b"a\x00\xff", value: b"", keys: [b"b", b""], n: [1, 2] }"#
    );
    assert_eq!(parse_seeds("1,5..8, 10..=11"), vec![1, 5, 6, 7, 10, 11]);
}
