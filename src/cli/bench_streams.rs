//! The streaming workloads of `metastore bench`: watch event latency and lease keep-alives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::bench_args::{BenchArgs, Summary};
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::lease_client::LeaseClient;
use crate::pb::etcdserverpb::watch_client::WatchClient;
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, WatchCreateRequest, WatchRequest,
};
use crate::rt;

/// How long the watch workload waits for the last events after the last put.
const WATCH_DRAIN_DEADLINE: Duration = Duration::from_secs(60);

const WATCH_PREFIX: &[u8] = b"bench-watch/";

/// `--streams` × `--watchers-per-stream` watchers on one prefix; a writer puts `--total` keys at
/// `--put-rate` per second; latency is from a put's send to each watcher's delivery of its event.
pub async fn measure_watch(args: &BenchArgs, channels: &[Channel]) -> Result<Summary, String> {
    let streams = args.streams.max(1);
    let per_stream = args.watchers_per_stream.max(1);
    let expected_per_stream = args.total as usize * per_stream;
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(streams);
    let mut tasks = Vec::new();
    for s in 0..streams {
        let mut client = WatchClient::new(channels[s % channels.len()].clone());
        let ready = ready_tx.clone();
        tasks.push(rt::spawn(async move {
            let creates: Vec<WatchRequest> = (0..per_stream)
                .map(|_| WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                        key: WATCH_PREFIX.to_vec(),
                        range_end: b"bench-watch0".to_vec(),
                        ..Default::default()
                    })),
                })
                .collect();
            let requests = futures::stream::iter(creates).chain(futures::stream::pending());
            let mut responses = client
                .watch(requests)
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let mut created = 0;
            let mut received: Vec<(i64, rt::Instant)> = Vec::with_capacity(expected_per_stream);
            let deadline = rt::now() + WATCH_DRAIN_DEADLINE + Duration::from_secs(3600);
            while received.len() < expected_per_stream {
                let left = deadline.saturating_duration_since(rt::now());
                let Ok(Ok(Some(resp))) = rt::timeout(left, responses.message()).await else {
                    break;
                };
                if resp.created {
                    created += 1;
                    if created == per_stream {
                        let _ = ready.send(()).await;
                    }
                }
                let at = rt::now();
                received.extend(
                    resp.events
                        .iter()
                        .filter_map(|e| e.kv.as_ref())
                        .map(|kv| (kv.mod_revision, at)),
                );
            }
            Ok::<_, String>(received)
        }));
    }
    drop(ready_tx);
    for _ in 0..streams {
        if ready_rx.recv().await.is_none() {
            return Err("a watch stream failed to start".into());
        }
    }
    let sent_at: Arc<Mutex<BTreeMap<i64, rt::Instant>>> = Arc::default();
    let mut kv = KvClient::new(channels[0].clone());
    let gap = Duration::from_secs_f64(1.0 / args.put_rate.max(1) as f64);
    let start = rt::now();
    for i in 0..args.total {
        let key = [WATCH_PREFIX, format!("{}", i % 100).as_bytes()].concat();
        let t0 = rt::now();
        let resp = kv
            .put(PutRequest {
                key,
                value: vec![b'v'; args.val_size],
                ..Default::default()
            })
            .await
            .map_err(|e| format!("put failed: {e}"))?;
        let rev = resp.into_inner().header.map(|h| h.revision).unwrap_or(0);
        sent_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rev, t0);
        let next = start + gap * (i as u32 + 1);
        rt::sleep(next.saturating_duration_since(rt::now())).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let sent_at = sent_at.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut lat_us = Vec::new();
    let mut missing = 0u64;
    for t in tasks {
        let received = rt::timeout(WATCH_DRAIN_DEADLINE, t)
            .await
            .map_err(|_| "watchers did not receive every event in time".to_string())?
            .map_err(|e| e.to_string())??;
        missing += (expected_per_stream - received.len().min(expected_per_stream)) as u64;
        for (rev, at) in received {
            if let Some(t0) = sent_at.get(&rev) {
                lat_us.push(at.saturating_duration_since(*t0).as_micros() as u64);
            }
        }
    }
    Ok(Summary::from_latencies(lat_us, missing, seconds))
}

/// `--clients` keep-alive streams, one lease each, `--total` keep-alives in all; latency per
/// request/response round trip.
pub async fn measure_lease_keepalive(
    args: &BenchArgs,
    channels: &[Channel],
) -> Result<Summary, String> {
    let clients = args.clients.max(1);
    let per_client = (args.total as usize).div_ceil(clients);
    let start = rt::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut lease = LeaseClient::new(channels[c % channels.len()].clone());
        tasks.push(rt::spawn(async move {
            let id = lease
                .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .id;
            let (tx, rx) = mpsc::channel::<LeaseKeepAliveRequest>(1);
            let requests =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
                );
            // The first request goes out with the call: a grpc-go server (etcd) sends its response
            // headers only with the first response, so the call would not return before it.
            let mut t0 = rt::now();
            tx.send(LeaseKeepAliveRequest { id })
                .await
                .map_err(|e| e.to_string())?;
            let mut responses = lease
                .lease_keep_alive(requests)
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            let mut lat_us = Vec::with_capacity(per_client);
            let mut errors = 0u64;
            for i in 0..per_client {
                match responses.message().await {
                    Ok(Some(r)) if r.ttl > 0 => lat_us.push(t0.elapsed().as_micros() as u64),
                    _ => errors += 1,
                }
                if i + 1 == per_client {
                    break;
                }
                t0 = rt::now();
                if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    errors += 1;
                    break;
                }
            }
            Ok::<_, String>((lat_us, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.map_err(|e| e.to_string())??;
        all.extend(lat);
        errors += e;
    }
    Ok(Summary::from_latencies(
        all,
        errors,
        start.elapsed().as_secs_f64(),
    ))
}
