//! `KV.RangeStream` (etcd 3.7) against the real binary: etcd-client's own `get_stream` tests,
//! the chunks of random requests merged against `Range`, the pinned revision under concurrent
//! writes, a compaction overtaking the stream, refused sorts and filters, permissions, and a
//! client that stops reading or leaves.

mod common;

use std::time::{Duration, Instant};

use common::abuse::{back_to_baseline, metric, settled_footprint};
use common::{grpc, Server, ENGINES};
use etcd_client::{ConnectOptions, GetOptions, Permission};
use metastore::mvcc::kvs_encoded_len;
use metastore::pb::etcdserverpb::kv_client::KvClient;
use metastore::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use metastore::pb::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

async fn kv_client(server: &Server) -> KvClient<Channel> {
    let channel = Channel::from_shared(server.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    KvClient::new(channel).max_decoding_message_size(64 << 20)
}

/// Every chunk of `req`'s stream; the call's error, or the first one the stream ends with.
async fn chunks(
    kv: &mut KvClient<Channel>,
    req: RangeRequest,
) -> Result<Vec<RangeResponse>, Status> {
    let mut stream = kv.range_stream(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.push(
            chunk
                .range_response
                .expect("a chunk carries a range response"),
        );
    }
    Ok(out)
}

/// The chunks merged as etcd's `proto.Merge` does, checking etcd 3.7's layout: only the final
/// chunk carries the header, `more` and `count`, and no chunk but a lone final one is empty.
fn merged(chunks: &[RangeResponse]) -> RangeResponse {
    let (last, rest) = chunks
        .split_last()
        .expect("a stream sends at least one chunk");
    let mut all = RangeResponse::default();
    for c in rest {
        assert!(
            c.header.is_none() && !c.more && c.count == 0,
            "an intermediate chunk carries more than kvs: {:?}",
            RangeResponse {
                kvs: vec![],
                ..c.clone()
            }
        );
        assert!(!c.kvs.is_empty(), "an intermediate chunk without keys");
        all.kvs.extend(c.kvs.iter().cloned());
    }
    assert!(last.header.is_some(), "the final chunk carries the header");
    all.kvs.extend(last.kvs.iter().cloned());
    all.header = last.header;
    all.more = last.more;
    all.count = last.count;
    all
}

fn rr(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..RangeRequest::default()
    }
}

// ---- etcd-client 0.21.1's `test_get_stream` and `test_get_stream_chunked`, ported ----

#[tokio::test]
async fn etcd_client_get_stream() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut client = server.client().await.kv_client();
        for (k, v) in [
            ("get_stream10", "10"),
            ("get_stream11", "11"),
            ("get_stream20", "20"),
            ("get_stream21", "21"),
        ] {
            client.put(k, v, None).await.unwrap();
        }

        // get key
        let mut stream = client.get_stream("get_stream11", None).await.unwrap();
        let resp = stream.message().await.unwrap().unwrap();
        assert_eq!(resp.count(), 1, "[{engine}]");
        assert!(!resp.more());
        assert_eq!(resp.kvs().len(), 1);
        assert_eq!(resp.kvs()[0].key(), b"get_stream11");
        assert_eq!(resp.kvs()[0].value(), b"11");
        assert_eq!(resp.header().unwrap().revision(), 5);
        assert!(resp.header().unwrap().member_id() != 0);
        assert!(stream.message().await.unwrap().is_none());

        // get from key
        let opts = GetOptions::new().with_from_key().with_limit(2);
        let mut stream = client.get_stream("get_stream11", Some(opts)).await.unwrap();
        let resp = stream.message().await.unwrap().unwrap();
        assert!(resp.more());
        assert_eq!(resp.count(), 3);
        assert_eq!(resp.kvs().len(), 2);
        assert_eq!(resp.kvs()[0].key(), b"get_stream11");
        assert_eq!(resp.kvs()[0].value(), b"11");
        assert_eq!(resp.kvs()[1].key(), b"get_stream20");
        assert_eq!(resp.kvs()[1].value(), b"20");
        assert!(stream.message().await.unwrap().is_none());

        // get prefix keys
        let opts = GetOptions::new().with_prefix();
        let mut stream = client.get_stream("get_stream1", Some(opts)).await.unwrap();
        let resp = stream.message().await.unwrap().unwrap();
        assert_eq!(resp.count(), 2);
        assert!(!resp.more());
        assert_eq!(resp.kvs().len(), 2);
        assert_eq!(resp.kvs()[0].key(), b"get_stream10");
        assert_eq!(resp.kvs()[0].value(), b"10");
        assert_eq!(resp.kvs()[1].key(), b"get_stream11");
        assert_eq!(resp.kvs()[1].value(), b"11");
        assert!(stream.message().await.unwrap().is_none());

        // get missing key
        let mut stream = client.get_stream("get_stream_missing", None).await.unwrap();
        let resp = stream.message().await.unwrap().unwrap();
        assert_eq!(resp.count(), 0);
        assert!(!resp.more());
        assert!(resp.kvs().is_empty());
        assert!(stream.message().await.unwrap().is_none());
    }
}

#[tokio::test]
async fn etcd_client_get_stream_chunked() {
    // As etcd-client's test expects the server to be started.
    let server = Server::start_with("memory", &["--max-request-bytes", "10240"]);
    let mut client = server.client().await.kv_client();
    let value = "x".repeat(1024 * 3);
    for i in 0..50 {
        client
            .put(format!("get_stream_chunked_{i:02}"), value.clone(), None)
            .await
            .unwrap();
    }
    let opts = GetOptions::new().with_prefix().with_limit(20);
    let mut stream = client
        .get_stream("get_stream_chunked_", Some(opts))
        .await
        .unwrap();
    let mut responses = Vec::new();
    while let Some(resp) = stream.message().await.unwrap() {
        assert!(resp.kvs().len() < 50, "the answer comes in chunks");
        assert!(!resp.kvs().is_empty());
        responses.push(resp);
    }
    assert!(responses.len() > 1, "{} chunk(s)", responses.len());
    let last = responses.last().unwrap();
    assert!(last.more());
    assert_eq!(last.count(), 50);
    let keys: Vec<_> = responses
        .iter()
        .flat_map(|r| r.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()))
        .collect();
    let want: Vec<_> = (0..20)
        .map(|i| format!("get_stream_chunked_{i:02}"))
        .collect();
    assert_eq!(keys, want);
}

// ---- the chunks add up to Range ----

/// A tiny deterministic generator (the test prints its seed when it fails).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize].clone()
    }
}

#[tokio::test]
async fn chunks_add_up_to_range_for_random_requests() {
    const MAX_REQUEST_BYTES: usize = 10240;
    let seed = 17;
    for engine in ENGINES {
        let server = Server::start_with(engine, &["--max-request-bytes", "10240"]);
        let mut kv = kv_client(&server).await;
        let mut rng = Rng(seed);
        let mut revisions = Vec::new();
        for i in 0..400u64 {
            let key = format!("r/{:03}", rng.below(300));
            let size = rng.pick(&[0, 10, 100, 1000, 3000, 6000]);
            let put = PutRequest {
                key: key.into_bytes(),
                value: vec![b'a' + (i % 26) as u8; size],
                ..PutRequest::default()
            };
            let resp = kv.put(put).await.unwrap().into_inner();
            revisions.push(resp.header.unwrap().revision);
            if i % 9 == 0 {
                let del = DeleteRangeRequest {
                    key: format!("r/{:03}", rng.below(300)).into_bytes(),
                    ..DeleteRangeRequest::default()
                };
                kv.delete_range(del).await.unwrap();
            }
        }
        let compacted = revisions[20];
        kv.compact(CompactionRequest {
            revision: compacted,
            physical: true,
        })
        .await
        .unwrap();
        let head = *revisions.last().unwrap();

        let mut multi = 0;
        for n in 0..150 {
            let key = match rng.below(6) {
                0 => "r/".to_string(),
                1 => "\0".to_string(),
                _ => format!("r/{:03}", rng.below(320)),
            };
            let range_end = match rng.below(5) {
                0 => String::new(),
                1 => "\0".to_string(),
                2 => "r0".to_string(),
                _ => format!("r/{:03}", rng.below(320)),
            };
            let past = revisions[rng.below(400) as usize];
            let req = RangeRequest {
                key: key.into_bytes(),
                range_end: range_end.into_bytes(),
                limit: rng.pick(&[0, 0, 0, 1, 7, 10, 11, 64, 250, 10_000, -1]),
                revision: rng.pick(&[0, 0, head, compacted, compacted - 5, past, head + 3]),
                keys_only: rng.below(4) == 0,
                count_only: rng.below(8) == 0,
                serializable: rng.below(2) == 0,
                sort_order: rng.pick(&[SortOrder::None as i32, SortOrder::Ascend as i32]),
                ..RangeRequest::default()
            };
            let want = kv.range(req.clone()).await.map(|r| r.into_inner());
            let got = chunks(&mut kv, req.clone()).await;
            match (want, got) {
                (Ok(want), Ok(got)) => {
                    for c in &got {
                        let bytes = kvs_encoded_len(&c.kvs);
                        assert!(
                            c.kvs.len() == 1 || bytes <= 2 * MAX_REQUEST_BYTES,
                            "[{engine}] a chunk of {} keys, {bytes} bytes",
                            c.kvs.len()
                        );
                    }
                    multi += usize::from(got.len() > 1);
                    assert_eq!(
                        merged(&got),
                        want,
                        "[{engine}] seed {seed} request #{n} {req:?}: {} chunks",
                        got.len()
                    );
                }
                (Err(want), Err(got)) => assert_eq!(
                    (got.code(), got.message()),
                    (want.code(), want.message()),
                    "[{engine}] request #{n} {req:?}"
                ),
                (want, got) => panic!(
                    "[{engine}] request #{n} {req:?}: Range {want:?}, RangeStream {:?}",
                    got.map(|c| c.len())
                ),
            }
        }
        assert!(
            multi > 20,
            "[{engine}] only {multi} streams took several chunks"
        );
    }
}

#[tokio::test]
async fn sorts_and_revision_filters_are_refused_as_etcd_3_7_does() {
    let server = Server::start("memory");
    let mut kv = kv_client(&server).await;
    kv.put(PutRequest {
        key: b"a".to_vec(),
        ..PutRequest::default()
    })
    .await
    .unwrap();
    let sort = "RangeStream does not support custom sort orders";
    let filters = "RangeStream does not support revision filters";
    type Change = fn(&mut RangeRequest);
    let cases: [(Change, Code, &str); 9] = [
        (
            |r| r.sort_order = SortOrder::Descend as i32,
            Code::Unimplemented,
            sort,
        ),
        (
            |r| r.sort_target = SortTarget::Create as i32,
            Code::Unimplemented,
            sort,
        ),
        (
            |r| (r.sort_order, r.sort_target) = (SortOrder::Ascend as i32, SortTarget::Mod as i32),
            Code::Unimplemented,
            sort,
        ),
        (|r| r.min_mod_revision = 1, Code::Unimplemented, filters),
        (|r| r.max_mod_revision = 9, Code::Unimplemented, filters),
        (|r| r.min_create_revision = 1, Code::Unimplemented, filters),
        (|r| r.max_create_revision = 9, Code::Unimplemented, filters),
        (
            |r| r.sort_order = 7,
            Code::InvalidArgument,
            "etcdserver: invalid sort option",
        ),
        (
            |r| r.key.clear(),
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        ),
    ];
    for (change, code, message) in cases {
        let mut req = rr("a", "z");
        change(&mut req);
        let err = chunks(&mut kv, req.clone()).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (code, message), "{req:?}");
    }
    // Ascending by key is the default order.
    let mut req = rr("a", "z");
    req.sort_order = SortOrder::Ascend as i32;
    assert_eq!(merged(&chunks(&mut kv, req).await.unwrap()).count, 1);
}

// ---- the pinned revision, a compaction overtaking it, a client that stops reading ----

/// 1000 keys of 10 KiB (10 MiB, as etcd's own test): far more than HTTP/2 lets through to a
/// client that does not read, so the server reads its later chunks only after what the test does.
async fn load(kv: &mut KvClient<Channel>) -> i64 {
    let value = vec![b'x'; 10 * 1024];
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut kv = kv.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..1000).step_by(8) {
                let put = PutRequest {
                    key: format!("s/{i:04}").into_bytes(),
                    value: value.clone(),
                    ..PutRequest::default()
                };
                kv.put(put).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let head = kv.range(rr("s/", "s0")).await.unwrap().into_inner();
    assert_eq!(head.count, 1000);
    head.header.unwrap().revision
}

#[tokio::test]
async fn the_revision_is_pinned_when_the_stream_starts_and_a_compaction_past_it_ends_it() {
    let server = Server::start("memory");
    let mut kv = kv_client(&server).await;
    let pinned = load(&mut kv).await;
    let want = kv.range(rr("s/", "s0")).await.unwrap().into_inner();

    // Writes while the stream is read, into the range (new keys, rewrites, deletes).
    let mut stream = kv.range_stream(rr("s/", "s0")).await.unwrap().into_inner();
    let first = stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .range_response
        .unwrap();
    let mut got = vec![first];
    let writer = {
        let mut kv = kv.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                let put = PutRequest {
                    key: format!("s/{:04}", (i * 7) % 1000).into_bytes(),
                    value: b"new".to_vec(),
                    ..PutRequest::default()
                };
                kv.put(put).await.unwrap();
                let put = PutRequest {
                    key: format!("s/{i:04}-new").into_bytes(),
                    ..PutRequest::default()
                };
                kv.put(put).await.unwrap();
                let del = DeleteRangeRequest {
                    key: format!("s/{:04}", 999 - i).into_bytes(),
                    ..DeleteRangeRequest::default()
                };
                kv.delete_range(del).await.unwrap();
            }
        })
    };
    writer.await.unwrap();
    while let Some(chunk) = stream.message().await.unwrap() {
        got.push(chunk.range_response.unwrap());
    }
    assert!(got.len() > 5, "{} chunks", got.len());
    let got = merged(&got);
    assert_eq!(
        got.kvs, want.kvs,
        "the stream sees no write made after it started"
    );
    assert_eq!((got.count, got.more), (1000, false));
    let header = got.header.unwrap();
    assert_eq!(
        header.revision, pinned,
        "the header carries the pinned revision"
    );
    assert_eq!((header.cluster_id, header.member_id, header.raft_term), {
        let h = want.header.unwrap();
        (h.cluster_id, h.member_id, h.raft_term)
    });

    // A stream that asked for an older revision by number reads it too.
    let old = RangeRequest {
        revision: pinned,
        ..rr("s/", "s0")
    };
    let old_answer = merged(&chunks(&mut kv, old.clone()).await.unwrap());
    assert_eq!(old_answer.kvs, want.kvs);

    // A compaction past the pinned revision, once the stream has sent part of its answer.
    let mut stream = kv.range_stream(old).await.unwrap().into_inner();
    let mut received = 0;
    while received < 10 {
        let chunk = stream.message().await.unwrap().expect("more chunks");
        received += chunk.range_response.unwrap().kvs.len();
    }
    let head = kv
        .put(PutRequest {
            key: b"zz-advance".to_vec(),
            ..PutRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    kv.compact(CompactionRequest {
        revision: head,
        physical: true,
    })
    .await
    .unwrap();
    let err = loop {
        match stream.message().await {
            Ok(Some(chunk)) => received += chunk.range_response.unwrap().kvs.len(),
            Ok(None) => panic!("the stream finished despite the compaction ({received} keys)"),
            Err(e) => break e,
        }
    };
    assert_eq!((err.code(), err.message()), (Code::OutOfRange, COMPACTED));
    assert!(received < 1000, "{received} keys before the error");
}

#[tokio::test]
async fn a_client_that_stops_reading_or_leaves_costs_no_task() {
    const STALLED: usize = 32;
    const HELD: &str = "metastore_range_stream_held_bytes";
    let server = Server::start("memory");
    let mut kv = kv_client(&server).await;
    load(&mut kv).await;
    let baseline = settled_footprint(&server.endpoint).await;
    let rss_before = common::abuse::rss_kib(server.pid());

    // Streams whose client reads one chunk and then nothing: they wait, bounded. Each on its
    // own connection: the unread data of one fills its connection's HTTP/2 window.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut kv = kv_client(&server).await;
        let mut stream = kv.range_stream(rr("s/", "s0")).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap();
        stalled.push((stream, kv));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = common::abuse::rss_kib(server.pid());
    eprintln!(
        "range_stream: RSS {rss_before} KiB before, {rss} KiB with {STALLED} stalled streams"
    );
    // Each holds at most its buffer and one chunk being read, not the 10 MiB answer, and the
    // chunks shrink as streams open (`limits::RANGE_STREAM_BUFFERED_BYTES_TOTAL`): with chunks
    // of up to 3 MiB whatever their number, 32 stalled streams here held far more than this.
    assert!(
        rss < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss} KiB"
    );
    // What the member counts of their chunks: about its total (8 MiB), plus at most the few
    // chunks at the floor (64 KiB: here 10 records, 100 KiB) each stream may hold.
    let held = metric(&server.endpoint, HELD).await;
    eprintln!("range_stream: {held} bytes of chunks counted");
    assert!(
        held > 0 && held < (8 << 20) + STALLED as i64 * 3 * 128 * 1024,
        "{held} bytes of chunks held"
    );
    // Everyone else is served meanwhile (on its own connection: the stalled streams' unread
    // data holds their connection's HTTP/2 window, as it would with etcd).
    let mut other = kv_client(&server).await;
    let start = Instant::now();
    let answer = other
        .range(RangeRequest {
            count_only: true,
            ..rr("s/", "s0")
        })
        .await
        .unwrap();
    assert_eq!(answer.into_inner().count, 1000);
    assert!(start.elapsed() < Duration::from_secs(1));

    // Gone with their clients.
    drop(stalled);
    drop((kv, other));
    back_to_baseline(&server.endpoint, baseline, 2, Duration::from_secs(2)).await;
    // And so are their chunks' bytes: a count left behind would shrink every later stream's.
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(&server.endpoint, HELD).await != 0 {
        assert!(Instant::now() < deadline, "chunk bytes still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- permissions ----

#[tokio::test]
async fn a_stream_needs_read_permission_on_its_range() {
    let server = Server::start("memory");
    let root = server.client().await;
    let mut auth = root.auth_client();
    root.kv_client().put("app/1", "v", None).await.unwrap();
    root.kv_client().put("other", "v", None).await.unwrap();
    auth.user_add("root", "rootpw", None).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.role_add("reader").await.unwrap();
    auth.role_grant_permission("reader", Permission::read("app/").with_prefix())
        .await
        .unwrap();
    auth.user_add("app", "secret", None).await.unwrap();
    auth.user_grant_role("app", "reader").await.unwrap();
    auth.auth_enable().await.unwrap();

    let opts = ConnectOptions::new().with_user("app", "secret");
    let app = etcd_client::Client::connect([server.endpoint.as_str()], Some(opts))
        .await
        .unwrap();
    let mut kv = app.kv_client();
    let prefix = GetOptions::new().with_prefix();
    let mut stream = kv.get_stream("app/", Some(prefix.clone())).await.unwrap();
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!(resp.count(), 1);

    let want = grpc(
        kv.get("", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap_err(),
    );
    let got = match kv
        .get_stream("", Some(GetOptions::new().with_from_key()))
        .await
    {
        Err(e) => grpc(e),
        Ok(mut s) => grpc(s.message().await.unwrap_err()),
    };
    assert_eq!(got, want);
    assert_eq!(
        got,
        (
            Code::PermissionDenied,
            "etcdserver: permission denied".into()
        )
    );

    let anonymous = server.client().await;
    let got = match anonymous.kv_client().get_stream("app/", Some(prefix)).await {
        Err(e) => grpc(e),
        Ok(mut s) => grpc(s.message().await.unwrap_err()),
    };
    assert_eq!(got.1, "etcdserver: user name is empty");
}
