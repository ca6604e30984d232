//! Hostile and careless clients against the real binary (issue 15): each attack asserts that the
//! member stays up, its RSS stays within budget, a well-behaved client keeps its latency, and what
//! the attacker started is gone within a second of it leaving.

mod common;

use std::time::Duration;

use common::abuse::{
    assert_p99_within, assert_p99_within_floor, assert_survived, back_to_baseline, before_attack,
    connect_reading_nothing, metric, one_at_a_time, p99, raw_grpc_calls, rss_kib,
    settled_footprint, Probe, CLEANUP_DEADLINE, P99_FLOOR_CPU_BOUND,
};
use common::Server;
use metastore::pb::etcdserverpb::kv_client::KvClient;
use metastore::pb::etcdserverpb::RangeRequest;

/// Election.Observe calls whose clients went away end with them: no watcher, no task left; while
/// they are open a well-behaved client keeps its latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_observe_calls_leave_nothing_behind() {
    let _alone = one_at_a_time().await;
    const ELECTIONS: usize = 7;
    let mut server = Server::start("memory");
    let mut client = server.client().await;
    client.put("abuse/probe", "v", None).await.expect("put");
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    for e in 0..ELECTIONS {
        client
            .campaign(format!("abuse-election-{e}"), "leader", lease)
            .await
            .expect("campaign");
    }
    // The attacker has a connection of its own; the well-behaved client keeps `client`'s.
    let attacker = server.client().await;
    let probe = Probe::start(&server.endpoint);
    let (quiet, baseline, rss_before) = before_attack(&server, &probe).await;
    for round in 0..10 {
        let mut streams = Vec::new();
        for i in 0..1000 {
            let mut c = attacker.clone();
            let name = format!("abuse-election-{}", (round * 1000 + i) % ELECTIONS);
            streams.push(tokio::spawn(async move {
                let mut s = c.observe(name).await.expect("observe");
                // Each stream reports the current leader first; then it sits idle.
                s.message()
                    .await
                    .expect("observe message")
                    .expect("a leader");
                s
            }));
        }
        let mut opened = Vec::new();
        for s in streams {
            opened.push(s.await.expect("join"));
        }
        let mut attacked = probe.latencies(100).await;
        assert_p99_within(quiet, p99(&mut attacked));
        drop(opened);
    }
    assert_survived(&mut server, rss_before);
    // The attacker leaves: its connection goes too.
    drop(attacker);
    // The probe's own connection may hold a task or two of its own.
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
}

/// What an HTTP/2 client sends first: the connection preface and an empty SETTINGS frame.
fn h2_hello() -> Vec<u8> {
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    hello
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 §5.1).
fn hpack_int(mut v: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_str(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// HEADERS (+ CONTINUATION) frames carrying `block` on `stream`.
fn header_frames(block: &[u8], stream: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { 0x1 } else { 0x9 };
        let mut flags = if i + 1 == chunks.len() { 0x4 } else { 0 };
        if i == 0 {
            flags |= 0x1;
        }
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A header block of ~64 KiB that decodes to ~240 MB: a 4 KB field stored in the HPACK table, then
/// 60,000 one-byte references to it.
fn expanding_block() -> Vec<u8> {
    let mut block = vec![0x40];
    hpack_str(b"x-bomb", &mut block);
    hpack_str(&[b'a'; 4000], &mut block);
    // The newest dynamic entry is index 62 (the table holds one 4 KB entry at a time).
    block.extend(std::iter::repeat_n(0x80 | 62u8, 60_000));
    block
}

/// Pre-auth HPACK expansion: connections that send small header blocks decoding to hundreds of
/// MiB cost the member neither its memory nor its other clients' latency, whether the block is a
/// connection's first (inspected by the `:authority` fix-up) or follows a rewritten one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expanding_header_blocks_are_refused_within_budget() {
    let _alone = one_at_a_time().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CONNECTIONS: usize = 8;
    const BLOCKS_PER_CONNECTION: u32 = 4;
    let mut server = Server::start("memory");
    let mut client = server.client().await;
    client.put("abuse/probe", "v", None).await.expect("put");
    let probe = Probe::start(&server.endpoint);
    let (quiet, baseline, rss_before) = before_attack(&server, &probe).await;
    let host = server.host_port().to_string();
    let mut attackers = Vec::new();
    for c in 0..CONNECTIONS {
        let host = host.clone();
        attackers.push(tokio::spawn(async move {
            let mut conn = tokio::net::TcpStream::connect(&host)
                .await
                .expect("connect");
            let mut out = h2_hello();
            if c % 2 == 1 {
                // A first request whose authority is a URL: the fix-up rewrites from here on.
                let mut first = vec![0x00];
                hpack_str(b":authority", &mut first);
                hpack_str(b"http://127.0.0.1:2379", &mut first);
                out.extend(header_frames(&first, 1));
            }
            for b in 0..BLOCKS_PER_CONNECTION {
                out.extend(header_frames(&expanding_block(), 3 + 2 * b));
            }
            // The member may close the connection before it has read everything: fine.
            let _ = conn.write_all(&out).await;
            let mut sink = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut sink)).await;
            conn
        }));
    }
    let mut attacked = probe.latencies(200).await;
    let mut conns = Vec::new();
    for a in attackers {
        conns.push(a.await.expect("join"));
    }
    assert_survived(&mut server, rss_before);
    assert_p99_within_floor(quiet, p99(&mut attacked), P99_FLOOR_CPU_BOUND);
    drop(conns);
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
    client
        .get("abuse/probe", None)
        .await
        .expect("still serving");
}

/// A client that pings more often than `--grpc-keepalive-min-time` loses its connection (after
/// grpc-go's two strikes); one that respects it keeps it. The keepalive flags are etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_lose_their_connection() {
    let _alone = one_at_a_time().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start_with(
        "memory",
        &[
            "--grpc-keepalive-min-time",
            "1s",
            "--grpc-keepalive-interval",
            "2h",
            "--grpc-keepalive-timeout",
            "20s",
        ],
    );
    let ping = [0u8, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let open = || async {
        let mut conn = tokio::net::TcpStream::connect(server.host_port())
            .await
            .expect("connect");
        conn.write_all(&h2_hello()).await.expect("preface");
        conn
    };
    /// Read until the server closes the connection (true) or `wait` passes (false).
    async fn closed_within(conn: &mut tokio::net::TcpStream, wait: Duration) -> bool {
        let mut buf = vec![0u8; 4096];
        let until = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(until, conn.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
    let mut flood = open().await;
    for _ in 0..4 {
        flood.write_all(&ping).await.expect("ping");
    }
    assert!(
        closed_within(&mut flood, Duration::from_secs(5)).await,
        "a ping flood keeps its connection"
    );
    let mut polite = open().await;
    for _ in 0..3 {
        polite.write_all(&ping).await.expect("ping");
        assert!(
            !closed_within(&mut polite, Duration::from_millis(1100)).await,
            "a client pinging once a second lost its connection"
        );
    }
}

/// A thousand slow HTTP/1.1 clients (each sends part of a request's headers, or whole headers and
/// part of a body, then nothing) do not make `/health` unanswerable: a newcomer takes the slot of
/// the connection that has waited longest for its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http1_clients_cannot_starve_health() {
    let _alone = one_at_a_time().await;
    use tokio::io::AsyncWriteExt;
    const SLOW: usize = 1100;
    let mut server = Server::start("memory");
    let mut client = server.client().await;
    client.put("abuse/probe", "v", None).await.expect("put");
    let probe = Probe::start(&server.endpoint);
    let (quiet, baseline, rss_before) = before_attack(&server, &probe).await;
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut conn = tokio::net::TcpStream::connect(server.host_port())
            .await
            .expect("connect");
        if slow.len() % 2 == 0 {
            conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("partial headers");
        } else {
            // Whole headers, then a body that never completes.
            conn.write_all(
                b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"key\"",
            )
            .await
            .expect("partial body");
        }
        slow.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..20 {
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            common::abuse::http_get(&server.endpoint, "/health"),
        )
        .await
        .expect("/health answered within 5 s");
        assert!(body.contains("\"health\":\"true\""), "{body:?}");
    }
    let mut attacked = probe.latencies(200).await;
    assert_p99_within(quiet, p99(&mut attacked));
    assert_survived(&mut server, rss_before);
    drop(slow);
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
}

/// Every kind of server stream ends when its client goes away: 10,000 abandoned Watch and
/// LeaseKeepAlive calls (500 of each at a time: one connection carries at most 1,024 streams),
/// 3,000 `grpc.health.v1.Health` Watch calls and 4,000 gateway watch streams leave no task or
/// watcher behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_streams_of_every_kind_leave_nothing_behind() {
    use metastore::pb::grpc_health::health_client::HealthClient;
    use metastore::pb::grpc_health::HealthCheckRequest;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _alone = one_at_a_time().await;
    let mut server = Server::start("memory");
    let client = server.client().await;
    let lease = client
        .clone()
        .lease_grant(60, None)
        .await
        .expect("grant")
        .id();
    let health_client = HealthClient::new(
        tonic::transport::Channel::from_shared(server.endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    );
    let baseline = settled_footprint(&server.endpoint).await;
    let rss_before = rss_kib(server.pid());
    for _ in 0..10 {
        // 500 watch streams and 500 keep-alive streams, opened and abandoned.
        let mut opened = Vec::new();
        for i in 0..500 {
            let mut c = client.clone();
            opened.push(tokio::spawn(async move {
                let w = c
                    .watch(format!("abuse/w{}", i % 10), None)
                    .await
                    .expect("watch");
                let (k, r) = c.lease_keep_alive(lease).await.expect("keep-alive");
                (w, k, r)
            }));
        }
        let mut held = Vec::new();
        for o in opened {
            held.push(o.await.expect("join"));
        }
        drop(held);
        // 300 health watches (the served name, which gets SERVING, and an unknown one, which gets
        // SERVICE_UNKNOWN), each abandoned after its first answer.
        let mut health = Vec::new();
        for i in 0..300 {
            let mut h = health_client.clone();
            let service = if i % 2 == 0 { "" } else { "abuse.Unknown" };
            health.push(tokio::spawn(async move {
                let ask = HealthCheckRequest {
                    service: service.to_string(),
                };
                let mut stream = h.watch(ask).await.expect("health watch").into_inner();
                let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .expect("a first health answer within 10 s")
                    .expect("ok");
                assert!(first.is_some(), "the health watch ended at once");
                stream
            }));
        }
        let mut held = Vec::new();
        for h in health {
            held.push(h.await.expect("join"));
        }
        drop(held);
        // 400 gateway watch streams (HTTP/1.1), each abandoned after its created response.
        let mut gateway = Vec::new();
        for _ in 0..400 {
            let host = server.host_port().to_string();
            gateway.push(tokio::spawn(async move {
                let mut conn = tokio::net::TcpStream::connect(&host)
                    .await
                    .expect("connect");
                let body = br#"{"create_request":{"key":"YWJ1c2Uvdw=="}}"#;
                let head = format!(
                    "POST /v3/watch HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                conn.write_all(head.as_bytes()).await.expect("head");
                conn.write_all(body).await.expect("body");
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 4096];
                while !String::from_utf8_lossy(&seen).contains("created") {
                    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                        .await
                        .expect("created within 10 s")
                        .expect("read");
                    assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
                    seen.extend_from_slice(&buf[..n]);
                }
                conn
            }));
        }
        let mut conns = Vec::new();
        for g in gateway {
            conns.push(g.await.expect("join"));
        }
        drop(conns);
        back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
    }
    assert_survived(&mut server, rss_before);
}

/// A TCP proxy in front of `upstream` that can be frozen: it then stops moving bytes in either
/// direction but keeps both sockets open, as a client whose machine vanished (half-open).
async fn freezable_proxy(
    upstream: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream)
                .await
                .expect("upstream");
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in
                [(cr, sw), (sr, cw)].map(|(r, w)| (tokio::io::BufReader::new(r), w))
            {
                let flag = flag.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if flag.load(Ordering::SeqCst) {
                            // Frozen: hold both sockets, move nothing, ever.
                            std::future::pending::<()>().await;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    });
    (format!("http://{addr}"), frozen)
}

/// A client that vanishes without closing its connection (half-open) loses its streams and
/// watchers once the server's keepalive ping goes unanswered (`--grpc-keepalive-interval`,
/// `--grpc-keepalive-timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_clients_lose_their_watchers_to_keepalive() {
    let _alone = one_at_a_time().await;
    let server = Server::start_with(
        "memory",
        &[
            "--grpc-keepalive-interval",
            "1s",
            "--grpc-keepalive-timeout",
            "1s",
        ],
    );
    let baseline = settled_footprint(&server.endpoint).await;
    let (proxied, frozen) = freezable_proxy(server.host_port().to_string()).await;
    let mut vanishing = etcd_client::Client::connect([proxied.as_str()], None)
        .await
        .expect("connect through the proxy");
    let mut streams = Vec::new();
    for i in 0..100 {
        streams.push(
            vanishing
                .watch(format!("abuse/half-open/{i}"), None)
                .await
                .expect("watch"),
        );
    }
    let (_, watchers) = common::abuse::footprint(&server.endpoint).await;
    assert!(watchers >= baseline.1 + 100, "{watchers} watchers");
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    // One keepalive interval to send the ping, one timeout to give up on it, and the
    // clean-up deadline for what the connection held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
    drop(streams);
}

/// Snapshot calls whose clients stop reading after the first piece: at most
/// `limits::SNAPSHOT_STREAMS_MAX` (2) are served at once and the rest wait for a place, so the
/// member's memory stays within budget whatever their number (unbounded, 20 such calls took a
/// member with 120 MB of data from 146 to 522 MB RSS); when the callers leave, everything they
/// held goes, and the next backup is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_snapshot_calls_are_served_two_at_a_time() {
    let _alone = one_at_a_time().await;
    const CALLS: usize = 20;
    const SERVED_AT_ONCE: usize = 2;
    let mut server = Server::start("rocksdb");
    let mut client = server.client().await;
    // About 40 MB of values, loaded by txns of 128 puts.
    let value = "s".repeat(4096);
    for t in 0..80 {
        let puts: Vec<_> = (0..128)
            .map(|i| etcd_client::TxnOp::put(format!("snap/{t:03}/{i:03}"), value.as_str(), None))
            .collect();
        client
            .txn(etcd_client::Txn::new().and_then(puts))
            .await
            .expect("load");
    }
    client.put("abuse/probe", "v", None).await.expect("put");
    // One whole backup first: the engine's block cache is warm before the baseline is taken, so
    // the budget measures what the calls hold.
    let total = whole_backup(&mut client).await;
    assert!(
        total > 40 * 1000 * 1000,
        "the backup holds the data: {total} bytes"
    );
    let probe = Probe::start(&server.endpoint);
    let (quiet, baseline, rss_before) = before_attack(&server, &probe).await;

    let mut callers = Vec::new();
    let mut connection = None;
    for i in 0..CALLS {
        // Four connections, five calls on each.
        if i % 5 == 0 {
            connection = Some(server.client().await);
        }
        let mut c = connection.clone().expect("a connection");
        callers.push(tokio::spawn(async move {
            let mut stream = c.snapshot().await.expect("snapshot");
            let first = stream.message().await.expect("a piece").expect("not empty");
            assert!(!first.blob().is_empty());
            // Then it stops reading, and holds the stream.
            stream
        }));
    }
    drop(connection);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut attacked = probe.latencies(200).await;
    let served = callers.iter().filter(|t| t.is_finished()).count();
    eprintln!("abuse: {served} of {CALLS} snapshot calls given their first piece");
    assert_survived(&mut server, rss_before);
    assert_eq!(served, SERVED_AT_ONCE, "calls given their first piece");
    assert_p99_within(quiet, p99(&mut attacked));

    // The callers leave, the waiting ones included.
    for call in &callers {
        call.abort();
    }
    drop(callers);
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;

    // A backup taken now is whole, and the same size as before.
    assert_eq!(whole_backup(&mut client).await, total);
}

/// Read a whole backup through `Maintenance.Snapshot`; its size in bytes, checked against what
/// its first piece announced.
async fn whole_backup(client: &mut etcd_client::Client) -> u64 {
    let mut stream = client.snapshot().await.expect("snapshot");
    let first = stream.message().await.expect("a piece").expect("not empty");
    let total = first.blob().len() as u64 + first.remaining_bytes();
    let mut got = first.blob().len() as u64;
    while let Some(piece) = stream.message().await.expect("a piece") {
        got += piece.blob().len() as u64;
    }
    assert_eq!(
        got, total,
        "the backup's bytes add up to what its first piece announced"
    );
    total
}

/// Logins with a wrong password, which anyone may send for `root`: each costs a bcrypt check (tens
/// of ms of CPU), and the member runs at most `limits::heavy_work_places` of them at once, so a
/// flood of them slows logins, not a logged-in client's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_leaves_other_clients_at_their_latency() {
    let _alone = one_at_a_time().await;
    const ATTACKERS: usize = 16;
    let mut server = Server::start("memory");
    let client = server.client().await;
    let mut auth = client.auth_client();
    auth.user_add("root", "rootpw", None).await.expect("root");
    auth.user_grant_role("root", "root").await.expect("grant");
    auth.auth_enable().await.expect("enable");
    let opts = etcd_client::ConnectOptions::new().with_user("root", "rootpw");
    let mut root = etcd_client::Client::connect([server.endpoint.as_str()], Some(opts))
        .await
        .expect("root logs in");
    root.put("abuse/probe", "v", None).await.expect("put");
    let probe = Probe::start_as(&server.endpoint, "root", "rootpw");
    let (quiet, baseline, rss_before) = before_attack(&server, &probe).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for a in 0..ATTACKERS {
        let (endpoint, stop) = (server.endpoint.clone(), stop.clone());
        attackers.push(tokio::spawn(async move {
            let c = etcd_client::Client::connect([endpoint.as_str()], None)
                .await
                .expect("connect");
            let mut refused = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let err = c
                    .auth_client()
                    .authenticate("root".into(), format!("wrong-{a}"))
                    .await
                    .expect_err("a wrong password");
                assert!(
                    err.to_string().contains("authentication failed")
                        || err.to_string().contains("too many requests"),
                    "{err}"
                );
                refused += 1;
            }
            refused
        }));
    }
    // Let the flood build up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut attacked = probe.latencies(200).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut refused = 0;
    for a in attackers {
        refused += a.await.expect("attacker");
    }
    eprintln!("abuse: {refused} wrong passwords refused meanwhile");
    assert!(refused >= ATTACKERS, "every attacker was answered");
    assert_survived(&mut server, rss_before);
    assert_p99_within(quiet, p99(&mut attacked));
    // The right password still logs in.
    let opts = etcd_client::ConnectOptions::new().with_user("root", "rootpw");
    etcd_client::Client::connect([server.endpoint.as_str()], Some(opts))
        .await
        .expect("root logs in after the flood");
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
}

/// Clients asking for `HashKV` over and over while a writer runs: each call is a full scan of the
/// store, read in pieces off the async workers without the store's lock and in one of
/// `limits::heavy_work_places` places, so other clients keep their latency, and every hash of a
/// fixed revision agrees although writes and a compaction's physical half go on beside it. Before,
/// each scan held the store's lock and an async worker for its whole length: a reader's p99 went
/// from 2.4 ms to 3.3 s (release build, 16 clients). The probe reads (RocksDB: a writer's figures
/// are mostly its fsyncs, which a CI machine's writeback makes noisy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hash_kv_calls_leaves_other_clients_at_their_latency() {
    hash_kv_flood("rocksdb", Probe::start).await;
}

/// The same flood on the memory engine, probed by a writer (no fsyncs there to blur it): the
/// engine hands its lock to a waiting writer at the end of each piece. With a plain unlock the
/// scanning thread took the lock straight back nearly every time, and a put waited for a whole
/// `HashKV` (p50 156 ms with 120 MB, release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hash_kv_calls_leaves_writers_at_their_latency() {
    hash_kv_flood("memory", Probe::writer).await;
}

/// Writes `txns` txns of 128 puts of about `value_bytes` under `prefix/`, then the same keys
/// again with other values: a history with a superseded record for every key.
async fn write_twice(
    client: &mut etcd_client::Client,
    prefix: &str,
    txns: usize,
    value_bytes: usize,
) {
    let value = "w".repeat(value_bytes);
    for round in 0..2 {
        for t in 0..txns {
            let puts: Vec<_> = (0..128)
                .map(|i| {
                    let v = format!("{round}{value}");
                    etcd_client::TxnOp::put(format!("{prefix}/{t:03}/{i:03}"), v, None)
                })
                .collect();
            client
                .txn(etcd_client::Txn::new().and_then(puts))
                .await
                .expect("load");
        }
    }
}

async fn hash_kv_flood(engine: &str, probe: fn(&str) -> Probe) {
    let _alone = one_at_a_time().await;
    const ATTACKERS: usize = 8;
    let mut server = Server::start(engine);
    let mut client = server.client().await;
    // About 20 MB of values, each key written twice; the first half of that history compacted,
    // so a hash skips superseded records below the compaction point.
    write_twice(&mut client, "hash", 80, 1024).await;
    let loaded = client.put("abuse/probe", "v", None).await.expect("put");
    let loaded = loaded.header().expect("header").revision();
    client.compact(loaded / 2, None).await.expect("compact");
    let want = client.hash_kv(loaded).await.expect("hash_kv").hash();
    let probe = probe(&server.endpoint);
    let (quiet, baseline, rss_before) = before_attack(&server, &probe).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let mut c = server.client().await;
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match c.hash_kv(loaded).await {
                    Ok(resp) => {
                        assert_eq!(resp.hash(), want, "the hash of revision {loaded} changed");
                        assert_eq!(resp.hash_revision(), loaded);
                    }
                    Err(e) => assert!(e.to_string().contains("too many requests"), "{e}"),
                }
                answered += 1;
            }
            answered
        }));
    }
    let writer = {
        let mut c = server.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut puts = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.put(format!("abuse/written/{puts}"), "v", None)
                    .await
                    .expect("put during the flood");
                puts += 1;
            }
            puts
        })
    };
    // Let the flood build up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut attacked = probe.latencies(200).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut answered = 0;
    for a in attackers {
        answered += a.await.expect("attacker");
    }
    let puts = writer.await.expect("writer");
    eprintln!("abuse: {answered} HashKV calls answered, {puts} puts meanwhile");
    assert!(answered >= ATTACKERS, "every attacker was answered");
    assert_survived(&mut server, rss_before);
    assert_p99_within(quiet, p99(&mut attacked));
    // The history hashed is still the history written.
    let mut client = server.client().await;
    assert_eq!(client.hash_kv(loaded).await.expect("hash_kv").hash(), want);
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
}

/// Clients listing more than a piece of keys (`limits::RANGE_PIECE_KEYS`) over and over on the
/// memory engine: each list reads from an engine view, and a write beside a view copies only its
/// path through the keyspace's tree. Before, a keyspace was one map shared copy-on-write, so the
/// first put after each view copied the whole keyspace: 120 MB of data, release build, 4 such
/// clients took a put's p99 from 0.4 to 73 ms and the member from 486 to 819 MB RSS; here (debug
/// build) the writer's p99 went to 57 ms and RSS grew by 90 MB with the old engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_lists_leaves_writers_at_their_latency() {
    large_read_flood(Flood::Lists).await
}

/// Clients sending read-only transactions that list more than a piece of keys, over and over:
/// such a transaction is served as a read, as etcd serves it, pinned at one revision and read in
/// pieces. Before, it went through the log and apply read it whole under the store's write lock,
/// so every write waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_read_only_txns_leaves_writers_at_their_latency() {
    large_read_flood(Flood::ReadOnlyTxns).await
}

/// A client sending transactions that compare the version of every key of a 40 MB prefix (1,280
/// keys) before a put: only a value compare reads values, the others read the key index. Before,
/// apply read all 40 MB for every such transaction: here the writer's p99 went from 1.6 to 66 ms
/// (debug build), now 14-15 ms; release build, 118 MB prefix: one such transaction took 250-350
/// ms and 4 clients took a put's p99 to 1,545 ms (etcd 3.5.1: 160-257 ms and 796 ms), now 8-14
/// ms and 44 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_compares_over_large_ranges_leaves_writers_at_their_latency() {
    large_read_flood(Flood::Compares).await
}

/// What the attackers of [`large_read_flood`] send.
#[derive(Clone, Copy, PartialEq)]
enum Flood {
    Lists,
    ReadOnlyTxns,
    Compares,
}

/// Attackers list 5,000 of 6,016 small keys beside 40 MB of values, by `Range` or four at a time
/// by a read-only `Txn` (or compare the versions of 1,280 keys holding 40 MB more), pausing
/// between requests, while a writer puts.
async fn large_read_flood(flood: Flood) {
    let _alone = one_at_a_time().await;
    const ATTACKERS: usize = 2;
    // One compare client: each of its transactions is a write too, through the log.
    let attacking = if flood == Flood::Compares {
        1
    } else {
        ATTACKERS
    };
    const LISTED: usize = 5_000;
    const PAUSE: Duration = Duration::from_millis(50);
    let mut server = Server::start("memory");
    let mut client = server.client().await;
    // About 40 MB of values in 160 txns of 128 puts, and 6,016 small keys to list (a copy of the
    // keyspace would copy all of it).
    if flood == Flood::Compares {
        // 40 MB more in 1,280 keys of 32 KiB: what the compares cover.
        let wide = "w".repeat(32 * 1024);
        for t in 0..40 {
            let puts: Vec<_> = (0..32)
                .map(|i| {
                    etcd_client::TxnOp::put(format!("wide/{t:02}/{i:02}"), wide.as_str(), None)
                })
                .collect();
            client
                .txn(etcd_client::Txn::new().and_then(puts))
                .await
                .expect("load");
        }
    }
    let value = "l".repeat(2048);
    for t in 0..207 {
        let (prefix, value) = if t < 160 {
            ("big", value.as_str())
        } else {
            ("list", "v")
        };
        let puts: Vec<_> = (0..128)
            .map(|i| etcd_client::TxnOp::put(format!("{prefix}/{t:03}/{i:03}"), value, None))
            .collect();
        client
            .txn(etcd_client::Txn::new().and_then(puts))
            .await
            .expect("load");
    }
    let list = || {
        etcd_client::GetOptions::new()
            .with_prefix()
            .with_limit(LISTED as i64)
            .with_serializable()
    };
    // The member's first lists of this size cost it tens of MB that later ones reuse, with or
    // without views (RocksDB as well): taken before the baseline, by the attack's own clients.
    let mut clients = Vec::new();
    for _ in 0..attacking {
        clients.push(server.client().await);
    }
    let warm_up = clients.iter_mut().map(|c| c.get("list/", Some(list())));
    for got in futures::future::join_all(warm_up).await {
        assert_eq!(got.expect("list").kvs().len(), LISTED);
    }
    let probe = Probe::writer(&server.endpoint);
    let (quiet, baseline, rss_before) = before_attack(&server, &probe).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for mut c in clients {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let mut lists = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if flood == Flood::Compares {
                    let every =
                        etcd_client::Compare::version("big/", etcd_client::CompareOp::Greater, 0)
                            .with_prefix();
                    let put = etcd_client::TxnOp::put("flood/mark", "v", None);
                    let txn = c
                        .txn(etcd_client::Txn::new().when([every]).and_then([put]))
                        .await
                        .expect("txn");
                    assert!(txn.succeeded(), "every key of the prefix has a version");
                } else if flood == Flood::ReadOnlyTxns {
                    // Four lists in one transaction: apply used to read them all under the
                    // store's write lock.
                    let reads = (0..4).map(|_| etcd_client::TxnOp::get("list/", Some(list())));
                    let txn = c
                        .txn(etcd_client::Txn::new().and_then(reads.collect::<Vec<_>>()))
                        .await
                        .expect("txn");
                    for answer in txn.op_responses() {
                        match answer {
                            etcd_client::TxnOpResponse::Get(got) => {
                                assert_eq!(got.kvs().len(), LISTED)
                            }
                            other => panic!("a read-only txn answered {other:?}"),
                        }
                    }
                } else {
                    let got = c.get("list/", Some(list())).await.expect("list");
                    assert_eq!(got.kvs().len(), LISTED);
                }
                lists += 1;
                // Not a CPU flood (a debug build's lists of this size would take the cores from
                // the writer whatever the engine does): each list's view is what hurt.
                tokio::time::sleep(PAUSE).await;
            }
            lists
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut attacked = probe.latencies(200).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut lists = 0;
    for a in attackers {
        lists += a.await.expect("attacker");
    }
    eprintln!("abuse: {lists} lists (or txns of four) of {LISTED} keys answered meanwhile");
    assert!(lists >= attacking, "every attacker was answered");
    assert_survived(&mut server, rss_before);
    // A debug build's list of 5,000 keys is tens of ms of CPU on an async worker, which a put
    // may wait behind whatever the engine does: the floor of the CPU-bound attacks.
    assert_p99_within_floor(quiet, p99(&mut attacked), P99_FLOOR_CPU_BOUND);
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
}

/// `Defragment` calls in a burst (anyone may send them while auth is off): one defragmentation
/// runs at a time, and the calls that arrive while it runs share the next one, so the burst costs
/// at most two however many calls it has. Before, every call started its own on a blocking thread
/// at once (RocksDB runs them side by side or queues them; a caller leaving stopped none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_defragment_calls_runs_at_most_two() {
    let _alone = one_at_a_time().await;
    const CALLS: usize = 32;
    const RAN: &str = "etcd_disk_backend_defrag_duration_seconds_count";
    let mut server = Server::start("rocksdb");
    let mut client = server.client().await;
    // About 20 MB written twice, so each defragmentation has work to do.
    write_twice(&mut client, "defrag", 40, 2048).await;
    client.put("abuse/probe", "v", None).await.expect("put");
    let mut callers = Vec::new();
    for _ in 0..CALLS {
        callers.push(server.client().await);
    }
    let probe = Probe::start(&server.endpoint);
    let (quiet, baseline, rss_before) = before_attack(&server, &probe).await;
    let ran_before = metric(&server.endpoint, RAN).await;

    // Every call is sent at once, each on its own connection.
    let burst =
        tokio::spawn(futures::future::join_all(callers.into_iter().map(
            |mut c| async move { c.defragment().await.expect("defragment") },
        )));
    let mut attacked = probe.latencies(200).await;
    burst.await.expect("burst");
    let ran = metric(&server.endpoint, RAN).await - ran_before;
    eprintln!("abuse: {ran} defragmentations for {CALLS} calls");
    assert!(
        (1..=2).contains(&ran),
        "{ran} defragmentations ran for {CALLS} calls at once"
    );
    assert_survived(&mut server, rss_before);
    assert_p99_within(quiet, p99(&mut attacked));
    // Each later call still gets a defragmentation of its own.
    client.defragment().await.expect("defragment");
    assert_eq!(metric(&server.endpoint, RAN).await - ran_before, ran + 1);
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
}

/// Two clients that take a piece of a backup and stop reading (their connections open) lose their
/// streams after `limits::SNAPSHOT_STREAM_STALL` (30 s): a backup queued behind them is then
/// served whole, within its 60 s wait, and a stalled client that reads again gets an error, never
/// a clean end of a truncated file. Before, the two held both places for as long as their
/// connections lived, and every other backup waited 60 s and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_snapshot_readers_lose_their_places() {
    let _alone = one_at_a_time().await;
    let server = Server::start("rocksdb");
    let mut client = server.client().await;
    write_twice(&mut client, "stall", 20, 2048).await;
    let total = whole_backup(&mut client).await;
    let (_, baseline, _) = before_attack(&server, &Probe::start(&server.endpoint)).await;

    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = server.client().await;
        let mut stream = c.snapshot().await.expect("snapshot");
        let first = stream.message().await.expect("a piece").expect("not empty");
        assert!(!first.blob().is_empty());
        stalled.push((c, stream));
    }
    let queued = {
        // A client that allows the call the member's whole wait for a place.
        let opts = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(90));
        let mut c = etcd_client::Client::connect([server.endpoint.as_str()], Some(opts))
            .await
            .expect("connect");
        tokio::spawn(async move { whole_backup(&mut c).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !queued.is_finished(),
        "both places are held by the stalled streams"
    );
    assert_eq!(queued.await.expect("queued backup"), total);

    // The stalled clients read again: whatever was in flight, then the error.
    for (_, mut stream) in stalled {
        let ended = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a stalled stream ended as if the file were whole"),
                Err(e) => break e,
            }
        };
        assert!(ended.to_string().contains("stalled"), "{ended}");
    }
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
}

/// A client connection that asks for a `Range` of `prefix` on stream 1 with a flow-control window
/// of zero (SETTINGS_INITIAL_WINDOW_SIZE 0): the member may answer, but cannot send a byte of
/// the answer's body until the client opens the window, which it never does.
fn range_without_window(host: &str, prefix: &str) -> Vec<u8> {
    use prost::Message;
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    let request = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: end,
        serializable: true,
        ..Default::default()
    }
    .encode_to_vec();
    raw_grpc_calls(host, "/etcdserverpb.KV/Range", &request, 1, true, 0)
}

/// Clients that ask for a large list and never open their flow-control window: the answers they
/// have not taken share one budget (`limits::SEND_BUDGET_BYTES`, besides one answer of any size
/// when nothing else is held), and what they held is given back when they leave. Before, each kept
/// its whole encoded answer for as long as its connection lived: a 118 MB prefix, release build,
/// 8 such connections took a member from 189 to 1,453 MB; the 12.7 MB list here cost +345 MB
/// with the old binary (debug), +1 to +25 MB now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_clients_do_not_take_share_one_budget() {
    large_answers_not_taken(false).await
}

/// The same over the JSON gateway (HTTP/1.1): clients that post a large range and never read
/// their sockets. Their answers are held in the same budget, and cut short (the connection
/// closed) if not taken in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_gateway_answers_clients_do_not_take_share_one_budget() {
    large_answers_not_taken(true).await
}

/// A gateway client that posts a range of `big/` (then closes its side after the answer): an
/// attacker reads nothing, and its receive buffer is as small as the kernel allows, so the member
/// holds what it cannot write.
async fn gateway_range_not_read(host: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut conn = connect_reading_nothing(host).await;
    // "big/" and "big0" in base64, as the gateway's JSON takes bytes.
    let body = r#"{"key":"YmlnLw==","range_end":"YmlnMA==","serializable":true}"#;
    let request = format!(
        "POST /v3/kv/range HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.expect("send");
    conn
}

/// See [`large_answers_clients_do_not_take_share_one_budget`]; `http1`: through the gateway.
async fn large_answers_not_taken(http1: bool) {
    let _alone = one_at_a_time().await;
    use tokio::io::AsyncWriteExt;
    const CONNECTIONS: usize = 8;
    const HELD: &str = "metastore_send_held_bytes";
    let mut server = Server::start("rocksdb");
    let mut client = server.client().await;
    // 48 txns of 128 × 2 KiB: a list of "big/" answers about 12.7 MB (two do not fit in the
    // budget together).
    write_twice(&mut client, "big", 48, 2048).await;
    client.put("abuse/probe", "v", None).await.expect("put");
    // A client that takes answers of this size (etcd-client's limit is 4 MiB).
    let channel = tonic::transport::Channel::from_shared(server.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut kv = KvClient::new(channel).max_decoding_message_size(64 << 20);
    let whole = RangeRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        serializable: true,
        ..Default::default()
    };
    // The member's first lists of this size cost it memory that later ones reuse: before the
    // baseline, as in the list flood above (in the form the attack asks for).
    let answer = kv.range(whole.clone()).await.expect("list").into_inner();
    assert_eq!(answer.kvs.len(), 48 * 128);
    if http1 {
        use tokio::io::AsyncReadExt;
        let mut conn = gateway_range_not_read(server.host_port()).await;
        let mut whole_answer = Vec::new();
        let read = conn.read_to_end(&mut whole_answer);
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the gateway's answer within 30 s")
            .expect("read");
        assert!(whole_answer.len() > 16 << 20, "a whole answer");
    }
    // What serving that one list left resident: the allocator may give it back before the
    // baseline below is taken (then the attack's first list takes it again) or keep it, and
    // which it does varies from run to run (157 or 245 MB before the same attack). The attack is
    // held to its growth beyond what one well-behaved list of the same size costs.
    let served_one = rss_kib(server.pid());
    let probe = Probe::start(&server.endpoint);
    let (quiet, baseline, rss_before) = before_attack(&server, &probe).await;
    let rss_before = rss_before.max(served_one);
    assert_eq!(metric(&server.endpoint, HELD).await, 0);

    let host = server.host_port().to_string();
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        if http1 {
            conns.push(gateway_range_not_read(&host).await);
            continue;
        }
        let mut conn = tokio::net::TcpStream::connect(&host)
            .await
            .expect("connect");
        conn.write_all(&range_without_window(&host, "big/"))
            .await
            .expect("send");
        conns.push(conn);
    }
    let mut attacked = probe.latencies(200).await;
    // Every stalled list has been read by now (each takes well under a second), and those that
    // found no room wait for it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_survived(&mut server, rss_before);
    // Each attacker's list is read (a debug build's read of 12.7 MB is tens of ms of CPU on the
    // cores the probe shares; probe p99 0.5-1.0 ms quiet, 4.0-9.2 ms here): a CPU-bound attack.
    assert_p99_within_floor(quiet, p99(&mut attacked), P99_FLOOR_CPU_BOUND);
    let held = metric(&server.endpoint, HELD).await;
    eprintln!("abuse: {held} bytes of answers held for clients that take none");
    assert!(held > 0, "one answer is held for its client");
    // One answer: 12.7 MB as gRPC, about 17 MB as the gateway's JSON (base64 values).
    assert!(
        held <= 24 << 20,
        "one answer held, not one per connection: {held}"
    );

    drop(conns);
    let until = std::time::Instant::now() + CLEANUP_DEADLINE;
    while metric(&server.endpoint, HELD).await != 0 {
        assert!(
            std::time::Instant::now() < until,
            "the answers of clients that left are still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    back_to_baseline(&server.endpoint, baseline, 2, CLEANUP_DEADLINE).await;
    // A client that takes its answer gets all of it, as before.
    let again = kv.range(whole).await.expect("list after the attack");
    assert_eq!(again.into_inner().kvs, answer.kvs);
}

/// A transaction whose compares cover a large range holds one record at a time: apply visits the
/// range and stops at the first key that fails, instead of reading the whole range into memory
/// (four compares over 200,000 keys took about 33 MiB at once that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compares_over_a_large_range_hold_one_record_at_a_time() {
    let _alone = one_at_a_time().await;
    const KEYS: usize = 200_000;
    const BUDGET_KIB: u64 = 16 * 1024;
    let mut server = Server::start("memory");
    let mut client = server.client().await;
    for first in (0..KEYS).step_by(128) {
        let puts: Vec<_> = (first..(first + 128).min(KEYS))
            .map(|i| etcd_client::TxnOp::put(format!("many/{i:08}"), "v", None))
            .collect();
        client
            .txn(etcd_client::Txn::new().and_then(puts))
            .await
            .expect("load");
    }
    let over_all =
        |result, version| etcd_client::Compare::version("many/", result, version).with_prefix();
    let pid = server.pid();
    let peak_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
    };
    for (result, version, holds) in [
        (etcd_client::CompareOp::Greater, 0, true),
        (etcd_client::CompareOp::Equal, 1, true),
        (etcd_client::CompareOp::Greater, 1, false),
    ] {
        // The peak starts again from what is resident now.
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak");
        let before = rss_kib(pid);
        let compares: Vec<_> = (0..4).map(|_| over_all(result, version)).collect();
        let put = etcd_client::TxnOp::put("many-done", "1", None);
        let answer = client
            .txn(etcd_client::Txn::new().when(compares).and_then([put]))
            .await
            .expect("txn");
        assert_eq!(answer.succeeded(), holds, "{result:?} {version}");
        let grew = peak_kib().saturating_sub(before);
        eprintln!("abuse: compares over {KEYS} keys: peak RSS {grew} KiB above {before} KiB");
        assert!(
            grew <= BUDGET_KIB,
            "peak RSS {grew} KiB above the {before} KiB resident before compares over {KEYS} keys"
        );
    }
    assert!(server.is_running());
}
