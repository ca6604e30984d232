//! HTTP on the client port, driven by the real `curl`: `/health`, `/version`, `/livez`,
//! `/readyz`, `/metrics`, etcd's grpc-gateway JSON API (answers compared with what etcd 3.4.23
//! writes), `--listen-metrics-urls`, and gRPC still served on the same port.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, Server, TestCluster, ENGINES};

/// One HTTP exchange: status code, header block, body.
struct Answer {
    code: u16,
    headers: String,
    body: String,
}

/// `curl` `url` with `args` (method, headers), the body (if any) on its stdin, and split its `-i`
/// output.
fn curl_with(url: &str, args: &[&str], body: Option<&str>) -> Answer {
    use std::io::Write;
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--max-time", "20"]).args(args);
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl must be installed");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(body.unwrap_or_default().as_bytes())
        .expect("write the body");
    drop(stdin);
    let out = child.wait_with_output().expect("curl");
    assert!(out.status.success(), "curl {url} {args:?} failed: {out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8 answer");
    let mut text = text.as_str();
    // curl asks large bodies to be accepted first (`Expect: 100-continue`).
    while text.starts_with("HTTP/1.1 100") {
        text = text.split_once("\r\n\r\n").expect("a header block").1;
    }
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    Answer {
        code,
        headers: head.to_string(),
        body: body.to_string(),
    }
}

fn curl(url: &str, args: &[&str]) -> Answer {
    curl_with(url, args, None)
}

fn post(server: &Server, path: &str, json: &str) -> Answer {
    curl_with(
        &format!("{}{path}", server.endpoint),
        &["-X", "POST"],
        Some(json),
    )
}

fn get(base: &str, path: &str) -> Answer {
    curl(&format!("{base}{path}"), &[])
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The value of a metric line `name value` (no labels) in an exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample of {name}"))
}

#[test]
fn health_version_and_probes_answer_as_etcd() {
    let server = Server::start("memory");
    let base = server.endpoint.as_str();
    let health = get(base, "/health");
    assert_eq!(health.code, 200);
    assert_eq!(health.body, r#"{"health":"true","reason":""}"#);
    assert!(health.headers.contains("Access-Control-Allow-Origin: *"));
    let not_get = curl(&format!("{base}/health"), &["-X", "POST"]);
    assert_eq!(not_get.code, 405);
    assert_eq!(not_get.body, "Method Not Allowed\n");
    assert!(not_get.headers.contains("Allow: GET"));

    let version = get(base, "/version");
    assert_eq!(version.code, 200);
    assert_eq!(
        version.body,
        r#"{"etcdserver":"3.7.0","etcdcluster":"3.7.0"}"#
    );
    assert!(version.headers.contains("Content-Type: application/json"));

    for probe in ["/livez", "/readyz"] {
        let answer = get(base, probe);
        assert_eq!((answer.code, answer.body.as_str()), (200, "ok"), "{probe}");
    }
    let missing = get(base, "/nothing");
    assert_eq!(
        (missing.code, missing.body.as_str()),
        (404, "404 page not found\n")
    );
}

#[test]
fn metrics_are_prometheus_text_with_etcds_names_and_move_with_writes() {
    let server = Server::start("rocksdb");
    let base = server.endpoint.as_str();
    let before = get(base, "/metrics");
    assert_eq!(before.code, 200);
    assert!(before
        .headers
        .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"));
    for (name, kind) in [
        ("etcd_server_has_leader", "gauge"),
        ("etcd_server_is_leader", "gauge"),
        ("etcd_server_leader_changes_seen_total", "counter"),
        ("etcd_server_proposals_committed_total", "gauge"),
        ("etcd_server_proposals_applied_total", "gauge"),
        ("etcd_server_proposals_pending", "gauge"),
        ("etcd_server_proposals_failed_total", "counter"),
        ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
        ("etcd_disk_backend_commit_duration_seconds", "histogram"),
        ("etcd_disk_backend_defrag_duration_seconds", "histogram"),
        ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
        ("etcd_debugging_mvcc_keys_total", "gauge"),
        ("etcd_mvcc_put_total", "counter"),
        ("etcd_mvcc_delete_total", "counter"),
        ("etcd_mvcc_range_total", "counter"),
        ("etcd_mvcc_txn_total", "counter"),
        ("etcd_debugging_mvcc_watcher_total", "gauge"),
        ("etcd_server_id", "gauge"),
    ] {
        assert!(
            before.body.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} missing"
        );
    }
    assert_eq!(metric(&before.body, "etcd_server_has_leader"), 1.0);
    assert_eq!(metric(&before.body, "etcd_server_is_leader"), 1.0);
    assert_eq!(
        metric(&before.body, "etcd_server_leader_changes_seen_total"),
        1.0
    );
    assert!(before
        .body
        .contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"}"));
    // etcd's defragmentation buckets: 100 ms to 409.6 s.
    assert!(before
        .body
        .contains("etcd_disk_backend_defrag_duration_seconds_bucket{le=\"409.6\"}"));

    for i in 0..3 {
        let put = post(
            &server,
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","value":"dg=="}}"#, base64(&format!("k{i}"))),
        );
        assert_eq!(put.code, 200, "{}", put.body);
    }
    let del = post(&server, "/v3/kv/deleterange", r#"{"key":"azA="}"#);
    assert_eq!(del.code, 200, "{}", del.body);
    let range = post(&server, "/v3/kv/range", r#"{"key":"azE="}"#);
    assert_eq!(range.code, 200, "{}", range.body);

    let after = get(base, "/metrics").body;
    let grew = |name: &str| metric(&after, name) - metric(&before.body, name);
    assert_eq!(grew("etcd_mvcc_put_total"), 3.0);
    assert_eq!(grew("etcd_mvcc_delete_total"), 1.0);
    assert!(grew("etcd_mvcc_range_total") >= 1.0);
    assert!(grew("etcd_server_proposals_applied_total") >= 4.0);
    assert!(grew("etcd_server_proposals_committed_total") >= 4.0);
    assert!(grew("etcd_disk_wal_fsync_duration_seconds_count") >= 4.0);
    assert!(grew("etcd_disk_backend_commit_duration_seconds_count") >= 4.0);
    assert_eq!(metric(&after, "etcd_debugging_mvcc_keys_total"), 2.0);
    assert!(metric(&after, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert_eq!(metric(&after, "etcd_server_proposals_pending"), 0.0);
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn the_json_gateway_serves_kv_txn_and_leases_as_etcds_does() {
    for engine in ENGINES {
        let server = Server::start(engine);
        // etcd's documented recipe (https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/).
        let put = post(&server, "/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#);
        assert_eq!(put.code, 200);
        assert!(put.headers.contains("Content-Type: application/json"));
        assert!(put
            .headers
            .contains("Grpc-Metadata-Content-Type: application/grpc"));
        let header = json(&put.body)["header"].clone();
        assert_eq!(header["revision"], "2", "int64 as strings: {}", put.body);
        assert!(header["cluster_id"].is_string() && header["member_id"].is_string());
        assert_eq!(
            json(&put.body).as_object().map(|o| o.len()),
            Some(1),
            "defaults omitted: {}",
            put.body
        );

        let range = post(&server, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
        assert_eq!(range.code, 200);
        let expected_tail = r#""kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#;
        assert!(range.body.ends_with(expected_tail), "{}", range.body);
        assert!(range.body.starts_with(r#"{"header":{"cluster_id":""#));

        // The /v3beta/ prefix and camelCase names are accepted as well.
        let beta = post(
            &server,
            "/v3beta/kv/range",
            r#"{"key":"Zm9v","countOnly":true}"#,
        );
        assert_eq!(json(&beta.body)["count"], "1");
        assert!(json(&beta.body).get("kvs").is_none());

        let txn = post(
            &server,
            "/v3/kv/txn",
            r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"0"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}],"failure":[{"requestRange":{"key":"Zm9v"}}]}"#,
        );
        assert_eq!(txn.code, 200, "{}", txn.body);
        let txn = json(&txn.body);
        assert!(txn.get("succeeded").is_none(), "the compare failed");
        assert_eq!(txn["responses"][0]["response_range"]["count"], "1");

        let del = post(
            &server,
            "/v3/kv/deleterange",
            r#"{"key":"Zm9v","prev_kv":true}"#,
        );
        let del = json(&del.body);
        assert_eq!(del["deleted"], "1");
        assert_eq!(del["prev_kvs"][0]["value"], "YmFy");

        let grant = post(&server, "/v3/lease/grant", r#"{"TTL":"30","ID":"0"}"#);
        assert_eq!(grant.code, 200, "{}", grant.body);
        let id = json(&grant.body)["ID"]
            .as_str()
            .expect("ID as a string")
            .to_string();
        assert_eq!(json(&grant.body)["TTL"], "30");
        let leases = json(&post(&server, "/v3/lease/leases", "{}").body);
        assert_eq!(leases["leases"][0]["ID"], id.as_str());
        let ttl = post(
            &server,
            "/v3/lease/timetolive",
            &format!(r#"{{"ID":"{id}","keys":true}}"#),
        );
        assert_eq!(json(&ttl.body)["grantedTTL"], "30", "{}", ttl.body);
        let revoke = post(&server, "/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#));
        assert_eq!(revoke.code, 200, "{}", revoke.body);
        let again = post(
            &server,
            "/v3/kv/lease/revoke",
            &format!(r#"{{"ID":"{id}"}}"#),
        );
        assert_eq!(again.code, 404);
        assert_eq!(
            again.body,
            r#"{"error":"etcdserver: requested lease not found","code":5,"message":"etcdserver: requested lease not found"}"#
        );

        let status = json(&post(&server, "/v3/maintenance/status", "{}").body);
        assert_eq!(status["version"], "3.7.0");
        assert!(status["dbSize"].is_string() && status["raftIndex"].is_string());
        let members = json(&post(&server, "/v3/cluster/member/list", "{}").body);
        assert_eq!(members["members"][0]["name"], "test");
        assert!(members["members"][0]["peerURLs"].is_array());

        // A token in the Authorization header travels as gRPC metadata; without auth it is
        // ignored, as etcd ignores it.
        let with_token = curl(
            &format!("{}/v3/kv/range", server.endpoint),
            &[
                "-X",
                "POST",
                "-H",
                "Authorization: sometoken",
                "-d",
                "{\"key\":\"Zm9v\"}",
            ],
        );
        assert_eq!(with_token.code, 200, "{}", with_token.body);
    }
}

#[test]
fn bad_requests_get_the_gateways_errors() {
    let server = Server::start("memory");
    let cut = post(&server, "/v3/kv/range", r#"{"key":"#);
    assert_eq!(cut.code, 400);
    assert_eq!(
        cut.body,
        r#"{"error":"unexpected EOF","code":3,"message":"unexpected EOF"}"#
    );
    // etcd 3.4.23: {"error":"illegal base64 data at input byte 0",...,"code":3}
    let base64 = post(&server, "/v3/kv/range", r#"{"key":"@@"}"#);
    assert_eq!(
        base64.body,
        r#"{"error":"illegal base64 data at input byte 0","code":3,"message":"illegal base64 data at input byte 0"}"#
    );
    for bad in [r#"{"key":"@@"}"#, "[1]", r#"{"key":"Zm9v","limit":"abc"}"#] {
        let answer = post(&server, "/v3/kv/range", bad);
        assert_eq!(answer.code, 400, "{bad}");
        let body = json(&answer.body);
        assert_eq!(body["code"], 3, "{bad}: {}", answer.body);
        assert_eq!(body["error"], body["message"]);
    }
    // Validation is the gRPC service's, with etcd's message.
    let no_key = post(&server, "/v3/kv/put", r#"{"value":"YmFy"}"#);
    assert_eq!(no_key.code, 400);
    assert_eq!(
        no_key.body,
        r#"{"error":"etcdserver: key is not provided","code":3,"message":"etcdserver: key is not provided"}"#
    );
    // An empty body is the empty request; unknown fields are ignored.
    assert_eq!(post(&server, "/v3/kv/range", "").code, 400);
    assert_eq!(
        post(&server, "/v3/kv/range", r#"{"key":"Zm9v","bogus":1}"#).code,
        200
    );
    let wrong_method = get(&server.endpoint, "/v3/kv/range");
    assert_eq!(
        (wrong_method.code, wrong_method.body.as_str()),
        (405, "Method Not Allowed\n")
    );
    let unknown = post(&server, "/v3/kv/nothing", "{}");
    assert_eq!((unknown.code, unknown.body.as_str()), (404, "Not Found\n"));
    // Nothing was written by any of it.
    let range = json(
        &post(
            &server,
            "/v3/kv/range",
            r#"{"key":"AA==","range_end":"AA=="}"#,
        )
        .body,
    );
    assert_eq!(range["header"]["revision"], "1");
}

#[test]
fn a_request_over_max_request_bytes_is_refused_as_over_grpc() {
    let server = Server::start_with("memory", &["--max-request-bytes", "1024"]);
    let value = base64(&"x".repeat(2000));
    let big = post(
        &server,
        "/v3/kv/put",
        &format!(r#"{{"key":"Zm9v","value":"{value}"}}"#),
    );
    assert_eq!(big.code, 400, "{}", big.body);
    assert_eq!(
        json(&big.body)["message"],
        "etcdserver: request is too large"
    );
    let huge = post(
        &server,
        "/v3/kv/put",
        &format!(
            r#"{{"key":"Zm9v","value":"{}"}}"#,
            base64(&"x".repeat(1 << 20))
        ),
    );
    assert_eq!(huge.code, 429, "{}", huge.body);
    assert_eq!(json(&huge.body)["code"], 8);
}

#[test]
fn a_gateway_watch_streams_results_as_they_happen() {
    let server = Server::start("memory");
    let mut watcher = Command::new("curl")
        .args([
            "-s",
            "-N",
            "-X",
            "POST",
            "-d",
            r#"{"create_request":{"key":"Zm9v"}}"#,
        ])
        .arg(format!("{}/v3/watch", server.endpoint))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let stdout = watcher.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let created = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the created response");
    let created = json(&created);
    assert_eq!(created["result"]["created"], true, "{created}");
    assert_eq!(
        post(&server, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).code,
        200
    );
    let event = rx.recv_timeout(Duration::from_secs(10)).expect("an event");
    let event = json(&event);
    let kv = &event["result"]["events"][0]["kv"];
    assert_eq!(
        (kv["key"].as_str(), kv["value"].as_str()),
        (Some("Zm9v"), Some("YmFy")),
        "{event}"
    );
    assert_eq!(event["result"]["header"]["revision"], "2");

    // The watcher goes when the client does.
    let _ = watcher.kill();
    let _ = watcher.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let watchers = metric(
            &get(&server.endpoint, "/metrics").body,
            "etcd_debugging_mvcc_watcher_total",
        );
        if watchers == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{watchers} watchers left behind"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Keep-alive: one response per request, then the stream ends with the body.
    let grant = json(&post(&server, "/v3/lease/grant", r#"{"TTL":"30"}"#).body);
    let id = grant["ID"].as_str().expect("an id").to_string();
    let kept = post(
        &server,
        "/v3/lease/keepalive",
        &format!(r#"{{"ID":"{id}"}}"#),
    );
    assert_eq!(kept.code, 200);
    let line = kept.body.trim_end();
    assert_eq!(json(line)["result"]["TTL"], "30", "{line}");
}

#[test]
fn grpc_and_http_share_the_client_port_and_metrics_urls_serve_metrics_only() {
    let port = free_port();
    let metrics_url = format!("http://127.0.0.1:{port}");
    let server = Server::start_with("memory", &["--listen-metrics-urls", &metrics_url]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut client = server.client().await;
        client
            .put("grpc-key", "v", None)
            .await
            .expect("put over gRPC");
    });
    let range = json(
        &post(
            &server,
            "/v3/kv/range",
            &format!(r#"{{"key":"{}"}}"#, base64("grpc-key")),
        )
        .body,
    );
    assert_eq!(range["kvs"][0]["value"], base64("v"));
    assert_eq!(
        post(
            &server,
            "/v3/kv/put",
            r#"{"key":"aHR0cA==","value":"dg=="}"#
        )
        .code,
        200
    );
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", server.host_port()))
        .args(["get", "http"])
        .output()
        .expect("etcdctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "http\nv\n");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let out = Command::new("curl")
            .args(["-s", "-i"])
            .arg(format!("{metrics_url}/metrics"))
            .output()
            .expect("curl");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics listener never came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(metrics.contains("etcd_mvcc_put_total 2\n"), "{metrics}");
    assert_eq!(
        get(&metrics_url, "/health").body,
        r#"{"health":"true","reason":""}"#
    );
    assert_eq!(get(&metrics_url, "/version").code, 404);
    assert_eq!(
        curl(
            &format!("{metrics_url}/v3/kv/range"),
            &["-X", "POST", "-d", "{}"]
        )
        .code,
        404
    );
}

#[test]
fn a_clusters_leader_times_round_trips_to_each_peer_and_a_member_without_quorum_is_unhealthy() {
    let mut cluster = TestCluster::start(3);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // A young cluster may still be electing (peers start one by one): every member must become
    // healthy, and stay so, before leadership is looked at.
    for member in &cluster.members {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while get(&member.endpoint(), "/health").code != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never healthy",
                member.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let leader = rt.block_on(cluster.leader());
    let endpoint = cluster.members[leader].endpoint();
    let put = curl_with(
        &format!("{endpoint}/v3/kv/put"),
        &["-X", "POST"],
        Some(r#"{"key":"Zm9v","value":"YmFy"}"#),
    );
    assert_eq!(put.code, 200, "{}", put.body);
    let text = get(&endpoint, "/metrics").body;
    assert_eq!(metric(&text, "etcd_server_is_leader"), 1.0);
    let peers: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("etcd_network_peer_round_trip_time_seconds_count{To=\""))
        .collect();
    assert_eq!(peers.len(), 2, "one histogram per peer: {peers:?}");
    for line in peers {
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(count >= 1.0, "{line}");
    }
    for (i, member) in cluster.members.iter().enumerate() {
        if i == leader {
            continue;
        }
        // The follower applies the put too (after the next commit index reaches it).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = get(&member.endpoint(), "/metrics").body;
            if metric(&text, "etcd_mvcc_put_total") == 1.0 {
                break text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "member {i} never applied the put"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(metric(&text, "etcd_server_is_leader"), 0.0);
        assert_eq!(metric(&text, "etcd_server_has_leader"), 1.0);
        let health = get(&member.endpoint(), "/health");
        assert_eq!(
            (health.code, health.body.as_str()),
            (200, r#"{"health":"true","reason":""}"#)
        );
    }

    // Alone, a member has no quorum: etcd 3.5 answers 503 and `{"health":"false","reason":...}`
    // (as `http.Error` writes it) when there is no leader or a read cannot complete.
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            cluster.members[i].kill9();
        }
    }
    let endpoint = cluster.members[survivor].endpoint();
    let unhealthy = get(&endpoint, "/health");
    assert_eq!(unhealthy.code, 503);
    let reason = unhealthy
        .body
        .strip_prefix(r#"{"health":"false","reason":""#)
        .and_then(|r| r.strip_suffix("\"}\n"))
        .unwrap_or_else(|| panic!("{:?}", unhealthy.body));
    assert!(
        reason == "RAFT NO LEADER" || reason.starts_with("RANGE ERROR:"),
        "{reason}"
    );
    assert!(unhealthy
        .headers
        .contains("X-Content-Type-Options: nosniff"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&get(&endpoint, "/metrics").body, "etcd_server_has_leader") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "still a leader without quorum"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&endpoint, "/readyz").code, 503);
    assert_eq!(get(&endpoint, "/livez").code, 200);
}

#[test]
fn lock_election_and_hash_routes_answer_in_json() {
    let server = Server::start("memory");
    let lock = json(&post(&server, "/v3/lock/lock", r#"{"name":"bXk="}"#).body);
    let key = lock["key"].as_str().expect("a lock key").to_string();
    assert!(key.starts_with("bXkv"), "my/...: {key}");
    let unlock = post(&server, "/v3/lock/unlock", &format!(r#"{{"key":"{key}"}}"#));
    assert_eq!(unlock.code, 200, "{}", unlock.body);

    let grant = json(&post(&server, "/v3/lease/grant", r#"{"TTL":"30"}"#).body);
    let lease = grant["ID"].as_str().expect("an id").to_string();
    let campaign = json(
        &post(
            &server,
            "/v3/election/campaign",
            &format!(r#"{{"name":"ZWw=","value":"djE=","lease":"{lease}"}}"#),
        )
        .body,
    );
    assert_eq!(campaign["leader"]["name"], "ZWw=");
    assert_eq!(campaign["leader"]["lease"], lease.as_str());
    let leader = json(&post(&server, "/v3/election/leader", r#"{"name":"ZWw="}"#).body);
    assert_eq!(leader["kv"]["value"], "djE=");
    // Observe streams `{"result":...}` lines; the first is the current leader.
    let mut observer = Command::new("curl")
        .args(["-s", "-N", "-X", "POST", "-d", r#"{"name":"ZWw="}"#])
        .arg(format!("{}/v3/election/observe", server.endpoint))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut first = String::new();
    BufReader::new(observer.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("a line");
    let _ = observer.kill();
    let _ = observer.wait();
    assert_eq!(json(&first)["result"]["kv"]["value"], "djE=", "{first}");

    let hash = json(&post(&server, "/v3/maintenance/hash", "{}").body);
    assert!(hash["hash"].is_u64(), "uint32 as a JSON number: {hash}");
    let transfer = post(&server, "/v3/maintenance/transfer-leadership", "{}");
    // FailedPrecondition: grpc-gateway's 400, as etcd 3.5.1 answers.
    assert_eq!(transfer.code, 400);
    assert_eq!(
        json(&transfer.body)["message"],
        "etcdserver: bad leader transferee"
    );
}

/// With auth enabled, HTTP gives an unauthenticated client health, version and metrics, and the
/// gateway's Authenticate; every other gateway route is refused until a token comes along.
#[test]
fn with_auth_on_http_serves_only_health_version_metrics_and_authenticate_anonymously() {
    let server = Server::start_with("memory", &["--bcrypt-cost", "4"]);
    // etcd's gateway recipe for auth, step by step through curl.
    for (path, body) in [
        (
            "/v3/auth/user/add",
            r#"{"name": "root", "password": "rootpw"}"#,
        ),
        ("/v3/auth/role/add", r#"{"name": "root"}"#),
        ("/v3/auth/user/grant", r#"{"user": "root", "role": "root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let answer = post(&server, path, body);
        assert_eq!(answer.code, 200, "{path}: {}", answer.body);
        assert!(
            json(&answer.body)["header"]["revision"].is_string(),
            "{path}"
        );
    }
    for path in ["/health", "/livez", "/readyz", "/version", "/metrics"] {
        assert_eq!(get(&server.endpoint, path).code, 200, "{path}");
    }
    let empty = r#"{"error":"etcdserver: user name is empty","code":3,"message":"etcdserver: user name is empty"}"#;
    for (path, body) in [
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        ("/v3/kv/compaction", r#"{"revision":"1"}"#),
        ("/v3/lease/grant", r#"{"TTL":"60"}"#),
        ("/v3/lease/timetolive", r#"{"ID":"1"}"#),
        ("/v3/lease/leases", "{}"),
        ("/v3/maintenance/status", "{}"),
        ("/v3/maintenance/alarm", "{}"),
        ("/v3/cluster/member/list", "{}"),
    ] {
        let answer = post(&server, path, body);
        assert_eq!(answer.code, 400, "{path}: {}", answer.body);
        assert_eq!(answer.body, empty, "{path}");
    }
    // AuthStatus answers anyone, as in etcd 3.7.
    let status = post(&server, "/v3/auth/status", "{}");
    assert_eq!(status.code, 200, "{}", status.body);
    assert_eq!(json(&status.body)["enabled"], true, "{}", status.body);
    let login = post(
        &server,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"rootpw"}"#,
    );
    assert_eq!(login.code, 200, "{}", login.body);
    let token = json(&login.body)["token"]
        .as_str()
        .expect("a token")
        .to_string();
    let authorized = curl_with(
        &format!("{}/v3/maintenance/status", server.endpoint),
        &["-X", "POST", "-H", &format!("Authorization: {token}")],
        Some("{}"),
    );
    assert_eq!(authorized.code, 200, "{}", authorized.body);
    assert_eq!(json(&authorized.body)["version"], "3.7.0");
    let root = |path: &str, body: &str| {
        curl_with(
            &format!("{}{path}", server.endpoint),
            &["-X", "POST", "-H", &format!("Authorization: {token}")],
            Some(body),
        )
    };
    let users = root("/v3/auth/user/list", "{}");
    assert_eq!(json(&users.body)["users"], serde_json::json!(["root"]));
    let status = root("/v3/auth/status", "{}");
    assert_eq!(json(&status.body)["enabled"], true, "{}", status.body);
    let put = root("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#);
    assert_eq!(put.code, 200, "{}", put.body);
    // The anonymous client still cannot administer auth.
    let anonymous = post(
        &server,
        "/v3/auth/user/add",
        r#"{"name": "x", "password": "y"}"#,
    );
    assert_eq!(anonymous.body, empty);
    let disabled = root("/v3/auth/disable", "{}");
    assert_eq!(disabled.code, 200, "{}", disabled.body);
    assert_eq!(post(&server, "/v3/kv/range", r#"{"key":"Zm9v"}"#).code, 200);
}

/// `POST /v3/maintenance/snapshot` streams the backup as etcd's gateway does, one
/// `{"result": SnapshotResponse}` line per piece: their blobs, joined, are the bytes the gRPC
/// `Snapshot` call sends.
#[test]
fn the_gateway_streams_a_snapshot() {
    let server = Server::start("memory");
    for i in 0..200 {
        let put = post(
            &server,
            "/v3/kv/put",
            &format!(
                r#"{{"key":"{}","value":"dmFsdWU="}}"#,
                base64(&format!("k{i}"))
            ),
        );
        assert_eq!(put.code, 200, "{}", put.body);
    }
    let answer = post(&server, "/v3/maintenance/snapshot", "{}");
    assert_eq!(answer.code, 200, "{}", answer.body);
    use base64::Engine;
    let mut over_http = Vec::new();
    for line in answer.body.lines().filter(|l| !l.trim().is_empty()) {
        let piece = json(line);
        let blob = piece["result"]["blob"].as_str().unwrap_or_default();
        over_http.extend(
            base64::engine::general_purpose::STANDARD
                .decode(blob)
                .expect("base64 blob"),
        );
    }
    let over_grpc = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let mut c = server.client().await;
            let mut stream = c.snapshot().await.expect("snapshot");
            let mut bytes = Vec::new();
            while let Some(piece) = stream.message().await.expect("a piece") {
                bytes.extend_from_slice(piece.blob());
            }
            bytes
        });
    assert!(over_grpc.len() > 4096, "{} bytes", over_grpc.len());
    assert_eq!(over_http.len(), over_grpc.len());
    assert!(over_http == over_grpc, "the same backup");
}

/// `/health` as etcd 3.5.1 answers it: the reason beside the verdict, alarms named, `exclude`
/// disregarding an alarm by its exact name (repeatable), `serializable=true` accepted.
#[test]
fn health_names_its_reason_and_excludes_alarms_as_etcd_35() {
    let server = Server::start("memory");
    let base = server.endpoint.as_str();
    let alarm = |action: &str, alarm: &str| {
        let answer = post(
            &server,
            "/v3/maintenance/alarm",
            &format!(r#"{{"action":"{action}","memberID":"1","alarm":"{alarm}"}}"#),
        );
        assert_eq!(answer.code, 200, "{}", answer.body);
    };
    let health = |query: &str| {
        let answer = get(base, &format!("/health{query}"));
        (answer.code, answer.body)
    };
    let counts = || {
        let text = get(base, "/metrics").body;
        (
            metric(&text, "etcd_server_health_success"),
            metric(&text, "etcd_server_health_failures"),
        )
    };
    let before = counts();
    let ok = (200, r#"{"health":"true","reason":""}"#.to_string());
    assert_eq!(health("?serializable=true"), ok);
    alarm("ACTIVATE", "NOSPACE");
    let nospace = (
        503,
        "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}\n".to_string(),
    );
    assert_eq!(health(""), nospace);
    assert_eq!(health("?exclude=nospace"), nospace, "names are exact");
    assert_eq!(health("?exclude=NOSPACE"), ok);
    alarm("ACTIVATE", "CORRUPT");
    assert_eq!(
        health("?exclude=NOSPACE"),
        (
            503,
            "{\"health\":\"false\",\"reason\":\"ALARM CORRUPT\"}\n".to_string()
        )
    );
    assert_eq!(health("?exclude=NOSPACE&exclude=CORRUPT"), ok);
    alarm("DEACTIVATE", "CORRUPT");
    alarm("DEACTIVATE", "NOSPACE");
    assert_eq!(health(""), ok);
    // etcd's counters of the checks: 4 healthy and 3 not, above.
    let after = counts();
    assert_eq!((after.0 - before.0, after.1 - before.1), (4.0, 3.0));
}
