//! Writes the fuzz seed corpus (`fuzz/corpus/<target>/`) from real requests: a recording gRPC
//! server takes what `etcdctl` and the `etcd-client` crate send for KV, lease and watch calls and
//! frames them as the targets read them; peer messages and backups come from MetaStore's own
//! encoders; the HTTP/2 seed is the raw start of an `etcdctl` connection.
//!
//! Run from the repository root (needs `etcdctl`): `cargo run --example capture_fuzz_corpus`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::pin::Pin;
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use metastore::pb::etcdserverpb::kv_server::{Kv, KvServer};
use metastore::pb::etcdserverpb::lease_server::{Lease, LeaseServer};
use metastore::pb::etcdserverpb::watch_server::{Watch, WatchServer};
use metastore::pb::etcdserverpb::*;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

/// Captured requests: (fuzz target, frame tag, encoded message), in arrival order.
type Log = Arc<Mutex<Vec<(&'static str, u8, Vec<u8>)>>>;

#[derive(Clone, Default)]
struct Recorder {
    log: Log,
}

impl Recorder {
    fn record<M: Message>(&self, target: &'static str, tag: u8, msg: &M) {
        self.log
            .lock()
            .unwrap()
            .push((target, tag, msg.encode_to_vec()));
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for Recorder {
    async fn range(&self, r: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.record("kv_requests", 0, r.get_ref());
        Ok(Response::new(RangeResponse::default()))
    }
    type RangeStreamStream = BoxStream<RangeStreamResponse>;
    async fn range_stream(
        &self,
        r: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        self.record("kv_requests", 0, r.get_ref());
        let last = RangeStreamResponse {
            range_response: Some(RangeResponse::default()),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(last)]))))
    }
    async fn put(&self, r: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.record("kv_requests", 1, r.get_ref());
        let tag = if r.get_ref().lease != 0 { 3 } else { 1 };
        self.record("lease_requests", tag, r.get_ref());
        Ok(Response::new(PutResponse::default()))
    }
    async fn delete_range(
        &self,
        r: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.record("kv_requests", 2, r.get_ref());
        Ok(Response::new(DeleteRangeResponse::default()))
    }
    async fn txn(&self, r: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.record("kv_requests", 3, r.get_ref());
        Ok(Response::new(TxnResponse::default()))
    }
    async fn compact(
        &self,
        r: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.record("kv_requests", 4, r.get_ref());
        Ok(Response::new(CompactionResponse::default()))
    }
}

#[tonic::async_trait]
impl Lease for Recorder {
    async fn lease_grant(
        &self,
        r: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.record("lease_requests", 0, r.get_ref());
        Ok(Response::new(LeaseGrantResponse {
            id: 7,
            ttl: r.get_ref().ttl,
            ..Default::default()
        }))
    }
    async fn lease_revoke(
        &self,
        r: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.record("lease_requests", 1, r.get_ref());
        Ok(Response::new(LeaseRevokeResponse::default()))
    }
    type LeaseKeepAliveStream = BoxStream<LeaseKeepAliveResponse>;
    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let me = self.clone();
        let out = r.into_inner().map(move |req| {
            let req = req?;
            me.record("lease_requests", 4, &req);
            Ok(LeaseKeepAliveResponse {
                id: req.id,
                ttl: 10,
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
    async fn lease_time_to_live(
        &self,
        r: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.record("lease_requests", 5, r.get_ref());
        Ok(Response::new(LeaseTimeToLiveResponse::default()))
    }
    async fn lease_leases(
        &self,
        r: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.record("lease_requests", 6, r.get_ref());
        Ok(Response::new(LeaseLeasesResponse::default()))
    }
}

#[tonic::async_trait]
impl Watch for Recorder {
    type WatchStream = BoxStream<WatchResponse>;
    async fn watch(
        &self,
        r: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let me = self.clone();
        let out = r.into_inner().map(move |req| {
            let req = req?;
            me.record("watch_requests", 0, &req);
            Ok(WatchResponse {
                created: true,
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) {
    let mut cmd = Process::new("timeout");
    cmd.args(["3", "etcdctl", "--endpoints", endpoint])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(input) = stdin {
        use std::io::Write;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("etcdctl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait().unwrap();
    } else {
        cmd.status().expect("etcdctl");
    }
}

async fn with_etcd_client(endpoint: &str) -> Result<(), etcd_client::Error> {
    use etcd_client::*;
    let mut c = Client::connect([endpoint], None).await?;
    c.put("client/key", "value", None).await?;
    c.put(
        "client/leased",
        "v",
        Some(PutOptions::new().with_lease(7).with_prev_key()),
    )
    .await?;
    c.get(
        "client/",
        Some(GetOptions::new().with_prefix().with_limit(10)),
    )
    .await?;
    c.get(
        "client/a",
        Some(
            GetOptions::new()
                .with_range("client/z")
                .with_revision(3)
                .with_sort(SortTarget::Mod, SortOrder::Descend),
        ),
    )
    .await?;
    c.delete(
        "client/",
        Some(DeleteOptions::new().with_prefix().with_prev_key()),
    )
    .await?;
    let txn = Txn::new()
        .when([Compare::value("client/key", CompareOp::Equal, "value")])
        .and_then([
            TxnOp::put("client/then", "1", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::get("client/nested", None)])),
        ])
        .or_else([TxnOp::delete("client/else", None)]);
    c.txn(txn).await?;
    c.compact(5, Some(CompactionOptions::new().with_physical()))
        .await?;
    c.lease_grant(30, None).await?;
    c.lease_time_to_live(7, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    c.leases().await?;
    let (mut keeper, _) = c.lease_keep_alive(7).await?;
    keeper.keep_alive().await?;
    c.lease_revoke(7).await?;
    let mut stream = c
        .watch(
            "client/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(2)
                    .with_prev_key()
                    .with_progress_notify(),
            ),
        )
        .await?;
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
    Ok(())
}

/// Writes for the watch target to run after the captured create request: puts, deletes and a
/// compaction over its small key space, catch-up rounds and drains.
fn watch_tail() -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, payload) in [
        (0u8, &[0u8, 1][..]),
        (0, &[1, 2]),
        (3, &[]),
        (1, &[0, 1, 3]),
        (4, &[]),
        (0, &[2, 5]),
        (2, &[3]),
        (0, &[0, 9]),
        (3, &[]),
        (4, &[]),
    ] {
        out.extend(metastore_frame(tag, payload));
    }
    out
}

fn metastore_frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Seeds for the peer target from MetaStore's own encoders: an AppendEntries carrying commands,
/// a vote, a snapshot header and chunk, a backup.
fn peer_seeds(dir: &Path, commands: &[Vec<u8>]) {
    use metastore::pb::metastore::{command::Op, Command};
    use metastore::raft::{backup, snapshot, RaftCommand, TypeConfig};
    use metastore::storage::{Durability, Engine, Keyspace, MemoryEngine, WriteBatch};
    use openraft::raft::{AppendEntriesRequest, VoteRequest};

    let leader = metastore::raft::Vote::new_committed(2, 1);
    let committed = openraft::impls::leader_id_adv::LeaderId {
        term: 2,
        node_id: 1,
    };
    let entries = commands
        .iter()
        .filter_map(|bytes| PutRequest::decode(bytes.as_slice()).ok())
        .enumerate()
        .map(|(i, put)| {
            let cmd = Command {
                op: Some(Op::Put(put)),
                proposer_id: 1,
                request_seq: i as u64 + 1,
                requester: None,
                forwarded_to: None,
            };
            metastore::raft::Entry {
                log_id: metastore::raft::LogId::new(committed, i as u64 + 1),
                payload: openraft::EntryPayload::Normal(RaftCommand {
                    bytes: cmd.encode_to_vec(),
                }),
            }
        })
        .collect::<Vec<_>>();
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: leader,
        prev_log_id: None,
        leader_commit: None,
        entries,
    };
    let vote = VoteRequest::<TypeConfig>::new(leader, None);
    let engine = MemoryEngine::new();
    let mut batch = WriteBatch::new();
    batch.put(Keyspace::Meta, "sm/applied", "x");
    for i in 0..20u32 {
        batch.put(Keyspace::Kv, i.to_be_bytes(), format!("value {i}"));
    }
    engine.write(batch, Durability::Sync).unwrap();
    let mut reader = snapshot::ChunkReader::new(engine.view().unwrap());
    let chunk = reader.next_chunk().unwrap().unwrap();
    let mut writer = backup::BackupWriter::new(engine.view().unwrap());
    let mut file = Vec::new();
    while let Some(piece) = writer.next_piece().unwrap() {
        file.extend(piece);
    }
    let mut all = Vec::new();
    for (tag, bytes) in [
        (0u8, postcard::to_stdvec(&append).unwrap()),
        (1, postcard::to_stdvec(&vote).unwrap()),
        (3, chunk),
    ] {
        let framed = metastore_frame(tag, &bytes);
        write(dir, &format!("tag{tag}"), &framed);
        all.extend(framed);
    }
    write(dir, "session", &all);
    // Backups are larger than a frame's u16 length: cut to the first 60 KiB for a seed.
    write(
        dir,
        "backup",
        &metastore_frame(6, &file[..file.len().min(60_000)]),
    );
}

#[tokio::main]
async fn main() {
    let root = Path::new("fuzz/corpus");
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream_of(listener);
    let server = tonic::transport::Server::builder()
        .add_service(KvServer::new(recorder.clone()))
        .add_service(LeaseServer::new(recorder.clone()))
        .add_service(WatchServer::new(recorder.clone()))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    let endpoint = addr.to_string();

    let ep = endpoint.clone();
    tokio::task::spawn_blocking(move || {
        etcdctl(&ep, &["put", "foo", "bar"], None);
        etcdctl(&ep, &["put", "--prev-kv", "foo", "baz"], None);
        etcdctl(&ep, &["get", "foo"], None);
        etcdctl(
            &ep,
            &["get", "--prefix", "--limit=5", "--order=DESCEND", "f"],
            None,
        );
        etcdctl(&ep, &["get", "--rev=2", "a", "z"], None);
        etcdctl(&ep, &["del", "--prev-kv", "--prefix", "f"], None);
        etcdctl(&ep, &["compaction", "3"], None);
        etcdctl(
            &ep,
            &["txn"],
            Some("mod(\"foo\") > \"0\"\n\nput foo yes\n\nput foo no\n\n"),
        );
        etcdctl(&ep, &["lease", "grant", "60"], None);
        etcdctl(&ep, &["put", "--lease=7", "leased", "v"], None);
        etcdctl(&ep, &["lease", "timetolive", "--keys", "7"], None);
        etcdctl(&ep, &["lease", "keep-alive", "--once", "7"], None);
        etcdctl(&ep, &["lease", "list"], None);
        etcdctl(&ep, &["lease", "revoke", "7"], None);
        etcdctl(&ep, &["watch", "--rev=1", "--prefix", "f"], None);
    })
    .await
    .unwrap();
    with_etcd_client(&endpoint)
        .await
        .expect("etcd-client calls against the recorder");

    let log = recorder.log.lock().unwrap().clone();
    let mut sessions: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut puts = Vec::new();
    for (i, (target, tag, bytes)) in log.iter().enumerate() {
        let framed = metastore_frame(*tag, bytes);
        if *target == "watch_requests" {
            let mut seed = framed.clone();
            seed.extend(watch_tail());
            write(&root.join(target), &format!("captured-{i}"), &seed);
            continue;
        }
        if *target == "kv_requests" && *tag == 1 {
            puts.push(bytes.clone());
            // The gRPC framing of the same request, as the frame target reads it.
            let mut grpc = vec![0u8, 0];
            grpc.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            grpc.extend_from_slice(bytes);
            write(&root.join("grpc_frames"), &format!("captured-{i}"), &grpc);
        }
        write(&root.join(target), &format!("captured-{i}"), &framed);
        sessions.entry(target).or_default().extend(framed);
    }
    for (target, session) in sessions {
        write(&root.join(target), "session", &session);
    }
    peer_seeds(&root.join("peer_messages"), &puts);

    // The first bytes etcdctl sends on a connection: preface, SETTINGS, HEADERS (HPACK).
    let raw = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let raw_addr = raw.local_addr().unwrap().to_string();
    let dialer = std::thread::spawn(move || etcdctl(&raw_addr, &["get", "foo"], None));
    let (mut conn, _) = raw.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut bytes = vec![0u8; 4096];
    let mut got = 0;
    while let Ok(n) = conn.read(&mut bytes[got..]) {
        if n == 0 || got + n == bytes.len() {
            break;
        }
        got += n;
    }
    drop(conn);
    let _ = dialer.join();
    const PREFACE_LEN: usize = 24;
    if got > PREFACE_LEN {
        let mut seed = vec![0u8]; // piece size byte
        seed.extend_from_slice(&bytes[PREFACE_LEN..got]);
        write(&root.join("http2_authority"), "etcdctl-get", &seed);
    }
    println!("captured {} requests into {}", log.len(), root.display());
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(c, _)| c);
        Some((conn, listener))
    })
}
