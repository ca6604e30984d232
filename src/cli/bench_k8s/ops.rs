//! The operations the clients run (kube-apiserver's requests) and the compactor.

use super::*;

pub(super) async fn deadline<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match rt::timeout(timeout, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

pub(super) fn compare_mod(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(rev)),
        range_end: vec![],
    }
}

pub(super) fn get_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The mod revision of the key the failure branch of an optimistic write read (0: absent).
pub(super) fn current_rev(resp: &TxnResponse) -> i64 {
    match resp.responses.first().and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => {
            r.kvs.first().map_or(0, |kv| kv.mod_revision)
        }
        _ => 0,
    }
}

pub(super) fn revision(resp: &TxnResponse) -> i64 {
    resp.header.as_ref().map_or(0, |h| h.revision)
}

/// An optimistic write of `key` (kube's `OptimisticPut`/`OptimisticDelete` with `GetOnFailure`):
/// applied if its mod revision is still `expected`. Returns whether it was, the revision it wrote
/// at (0 if it wrote nothing), and the key's mod revision afterwards (0: absent).
pub(super) async fn optimistic(
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
pub(super) async fn list(
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

pub(super) fn is_compacted(e: &str) -> bool {
    e.contains("required revision has been compacted")
}

pub(super) async fn lease_for_event(
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
pub(super) async fn one_op(
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

pub(super) async fn client_loop(ctx: Arc<Ctx>, client: usize, channel: Channel) -> Stats {
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
pub(super) async fn compactor(
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
