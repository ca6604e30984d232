//! A flood of connections (issue 15): an attacker opens far more connections than the member has
//! file descriptors and keeps them idle. The member keeps descriptors for its engine and peers
//! (new connections past its pool are closed at once, see `net::conn_limit`), keeps serving the
//! clients already connected, stays within its memory budget, and takes new clients again as soon
//! as the attacker leaves.

mod common;

use std::time::{Duration, Instant};

use common::abuse::{assert_p99_within, assert_survived, p99, rss_kib, Probe};
use common::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The member's open-file limit in this test: small, so the flood goes past it.
const OPEN_FILES: u64 = 1536;
/// Connections the attacker opens: more than the member has descriptors.
const FLOOD: usize = 2 * OPEN_FILES as usize;

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count() as u64
}

/// What an HTTP/2 client sends first: the connection preface and an empty SETTINGS frame.
fn h2_hello() -> Vec<u8> {
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_leaves_the_member_its_descriptors_and_its_clients() {
    let _alone = common::abuse::one_at_a_time().await;
    let mut server = Server::start_with_open_files("rocksdb", OPEN_FILES);
    let pid = server.pid();
    let mut client = server.client().await;
    client.put("abuse/probe", "v", None).await.expect("put");
    let probe = Probe::start(&server.endpoint);
    let mut quiet = probe.latencies(200).await;
    let quiet_p99 = p99(&mut quiet);
    let rss_before = rss_kib(pid);
    let fds_before = open_fds(pid);
    let pool = metastore::limits::client_connections_max(OPEN_FILES) as u64;

    // The flood: every connection says hello as an HTTP/2 client would, then idles. Connects
    // the member closes at once are counted, not retried.
    let host = server.host_port().to_string();
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        let Ok(mut conn) = tokio::net::TcpStream::connect(&host).await else {
            continue;
        };
        if conn.write_all(&h2_hello()).await.is_ok() {
            held.push(conn);
        }
    }
    // Let the member take (or close) every one of them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut alive = 0;
    for conn in &mut held {
        let mut byte = [0u8; 1];
        // A connection the member closed reads EOF (or an error); one it serves has its SETTINGS
        // waiting, or nothing yet.
        match tokio::time::timeout(Duration::from_millis(1), conn.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            _ => alive += 1,
        }
    }
    let fds_flooded = open_fds(pid);
    eprintln!(
        "flood: {} of {FLOOD} connects went through, {alive} still open; the member's pool is \
         {pool}; its descriptors: {fds_before} before, {fds_flooded} during (limit {OPEN_FILES})",
        held.len()
    );
    assert!(
        fds_flooded + metastore::limits::FILES_RESERVED / 2 <= OPEN_FILES,
        "the flood left the member {} of {OPEN_FILES} descriptors",
        OPEN_FILES - fds_flooded.min(OPEN_FILES)
    );
    assert!(
        alive as u64 <= pool,
        "{alive} flood connections are open, more than the pool of {pool}"
    );

    // The client connected before the flood is served as before, writes included (new table
    // and log files need descriptors).
    let mut attacked = probe.latencies(200).await;
    assert_p99_within(quiet_p99, p99(&mut attacked));
    for i in 0..200 {
        client
            .put(format!("abuse/flood/{i}"), vec![b'x'; 4096], None)
            .await
            .expect("put during the flood");
    }
    assert_survived(&mut server, rss_before);

    // The attacker leaves: a new client is taken again at once.
    drop(held);
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let fresh = async {
            let mut c = etcd_client::Client::connect([server.endpoint.clone()], None)
                .await
                .ok()?;
            c.get("abuse/flood/199", None).await.ok()
        };
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(500), fresh).await {
            assert_eq!(got.count(), 1);
            break;
        }
        assert!(
            Instant::now() < until,
            "no new client was served within a second of the flood's end"
        );
    }
}
