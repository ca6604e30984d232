//! `metastore bench`: a load generator for any etcd-compatible endpoint, modelled on etcd's
//! `benchmark` tool (same flag names), printing throughput and latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use super::bench_args::{BenchArgs, Consistency, Summary, Workload};
use super::bench_k8s;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::kv_client::KvClient;
use crate::pb::etcdserverpb::{
    request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::rt;

fn endpoint_url(e: &str) -> String {
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0>width$}", width = size.max(1)).into_bytes();
    // Keep the least significant digits when the key space needs more digits than the key size.
    if k.len() > size.max(1) {
        k.drain(..k.len() - size.max(1));
    }
    k
}

async fn connect(args: &BenchArgs) -> Result<Vec<tonic::transport::Channel>, String> {
    let endpoints: Vec<String> = args
        .endpoints
        .split(',')
        .filter(|e| !e.is_empty())
        .map(endpoint_url)
        .collect();
    if endpoints.is_empty() {
        return Err("--endpoints is empty".into());
    }
    let mut channels = Vec::new();
    for i in 0..args.conns.max(1) {
        let url = endpoints[i % endpoints.len()].clone();
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| format!("{url}: {e}"))?;
        let mut endpoint = endpoint.connect_timeout(Duration::from_secs(5));
        // A channel timeout bounds a whole call: right for unary requests, wrong for the
        // long-lived streams of the watch and keep-alive workloads (they bound their own waits).
        if !matches!(
            args.workload,
            Workload::Watch | Workload::LeaseKeepalive | Workload::K8s
        ) {
            endpoint = endpoint.timeout(Duration::from_millis(args.timeout_ms));
        }
        // Gathered writes, as the members' own connections have: on a shared machine every
        // write the load generator saves leaves CPU to the server it measures. (tonic itself
        // refuses an https:// endpoint, as before: the tool speaks plain HTTP/2 only.)
        let channel = if url.starts_with("http://") {
            crate::net::peer_dial::connect_plain(endpoint).await
        } else {
            endpoint.connect().await
        }
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

async fn one_request(
    client: &mut KvClient<tonic::transport::Channel>,
    args: &BenchArgs,
    value: &[u8],
    seq: u64,
) -> bool {
    let pick = || {
        let n = if args.sequential_keys {
            seq
        } else {
            rt::random_u64()
        };
        key(n % args.key_space_size.max(1), args.key_size)
    };
    match args.workload {
        Workload::Put => {
            let req = PutRequest {
                key: pick(),
                value: value.to_vec(),
                ..Default::default()
            };
            client.put(req).await.is_ok()
        }
        Workload::Range => {
            let req = RangeRequest {
                key: args.range_key.clone().into_bytes(),
                serializable: args.consistency == Consistency::S,
                ..Default::default()
            };
            client.range(req).await.is_ok()
        }
        Workload::Txn => {
            let k = pick();
            let req = TxnRequest {
                compare: vec![Compare {
                    key: k.clone(),
                    target: CompareTarget::Version as i32,
                    result: CompareResult::Greater as i32,
                    target_union: Some(TargetUnion::Version(-1)),
                    range_end: vec![],
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: k,
                        value: value.to_vec(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            };
            client.txn(req).await.is_ok()
        }
        Workload::List => match list(client, args).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!("list failed: {e}");
                false
            }
        },
        // Streaming workloads run in `bench_streams`, never request by request.
        Workload::Watch | Workload::LeaseKeepalive | Workload::K8s => false,
    }
}

/// One list of `--list-prefix`: a `Range`, or with `--stream` a `RangeStream` whose chunks must
/// hold as many keys as its final chunk counts.
async fn list(
    client: &mut KvClient<tonic::transport::Channel>,
    args: &BenchArgs,
) -> Result<(), String> {
    // Every key is `[\0, \0)`, as etcdctl sends `get "" --prefix`.
    let (key, range_end) = match args.list_prefix.as_bytes() {
        [] => (vec![0], vec![0]),
        prefix => (prefix.to_vec(), crate::keys::prefix_end(prefix)),
    };
    let req = RangeRequest {
        key,
        range_end,
        keys_only: args.keys_only,
        serializable: args.consistency == Consistency::S,
        ..Default::default()
    };
    if !args.stream {
        return client.range(req).await.map(drop).map_err(|e| e.to_string());
    }
    let mut stream = client
        .range_stream(req)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let (mut received, mut count) = (0i64, None);
    while let Some(chunk) = stream.message().await.map_err(|e| e.to_string())? {
        let chunk = chunk.range_response.unwrap_or_default();
        received += chunk.kvs.len() as i64;
        if chunk.header.is_some() {
            count = Some(chunk.count);
        }
    }
    match count {
        Some(count) if count == received => Ok(()),
        Some(count) => Err(format!(
            "the chunks held {received} keys, the stream counted {count}"
        )),
        None => Err("the stream ended without its final chunk".into()),
    }
}

/// Run the benchmark described by `args` and return its summary.
pub async fn measure(args: &BenchArgs) -> Result<Summary, String> {
    let channels = connect(args).await?;
    match args.workload {
        Workload::Watch => return super::bench_streams::measure_watch(args, &channels).await,
        Workload::LeaseKeepalive => {
            return super::bench_streams::measure_lease_keepalive(args, &channels).await
        }
        Workload::K8s => return Err("the k8s workload prints its own report".into()),
        _ => {}
    }
    if args.workload == Workload::Range {
        let mut setup = KvClient::new(channels[0].clone());
        let req = PutRequest {
            key: args.range_key.clone().into_bytes(),
            value: vec![b'v'; args.val_size],
            ..Default::default()
        };
        setup
            .put(req)
            .await
            .map_err(|e| format!("setup put failed: {e}"))?;
    }
    let remaining = Arc::new(AtomicU64::new(args.total));
    let errors = Arc::new(AtomicU64::new(0));
    let value = Arc::new(vec![b'v'; args.val_size]);
    let args = Arc::new(args.clone());
    let start = rt::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients.max(1) {
        let mut client = KvClient::new(channels[i % channels.len()].clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (remaining, errors, value, args) = (
            remaining.clone(),
            errors.clone(),
            value.clone(),
            args.clone(),
        );
        tasks.push(rt::spawn(async move {
            let mut lat_us = Vec::new();
            while let Ok(left) =
                remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            {
                let t0 = rt::now();
                if one_request(&mut client, &args, &value, args.total - left).await {
                    lat_us.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
            lat_us
        }));
    }
    let mut all = Vec::with_capacity(args.total as usize);
    for t in tasks {
        all.extend(t.await.map_err(|e| format!("client task failed: {e}"))?);
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Summary::from_latencies(
        all,
        errors.load(Ordering::SeqCst),
        seconds,
    ))
}

/// `metastore bench`: run and print the summary.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    if args.workload == Workload::K8s {
        let channels = connect(&args).await?;
        let load = bench_k8s::Load {
            clients: args.clients,
            conns: args.conns,
            total: args.total,
            timeout: Duration::from_millis(args.timeout_ms),
        };
        return bench_k8s::run(&args.k8s, load, &channels).await;
    }
    let s = measure(&args).await?;
    println!(
        "Summary ({:?}, {} clients, {} conns, {} requests):",
        args.workload, args.clients, args.conns, args.total
    );
    println!("  Total:        {:.4} secs", s.seconds);
    println!("  Requests/sec: {:.1}", s.ops_per_sec());
    println!(
        "  Latency ms:   p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
    );
    println!("  Errors:       {}", s.errors);
    if s.errors > 0 {
        return Err(format!("{} requests failed", s.errors));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size() {
        assert_eq!(key(7, 4), b"0007");
        assert_eq!(key(123456, 3), b"456");
        assert_eq!(endpoint_url("127.0.0.1:1"), "http://127.0.0.1:1");
    }

    #[test]
    fn percentiles() {
        let s = Summary::from_latencies((1..=100).map(|i| i * 1000).collect(), 2, 2.0);
        assert_eq!(
            (s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(s.ops_per_sec(), 50.0);
        assert_eq!(s.errors, 2);
    }
}
