//! Auth against the real binary: etcdctl's workflows (outputs compared with etcd 3.4's) and the Rust
//! `etcd-client` crate with `ConnectOptions::with_user`, on both engines.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{grpc, Server, ENGINES};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, Permission, PutOptions, Txn, TxnOp, WatchOptions,
};
use tonic::Code;

/// bcrypt cost for test servers: the cheapest etcd accepts, so logins stay fast.
const FAST_BCRYPT: [&str; 2] = ["--bcrypt-cost", "4"];

/// Run etcdctl against `server` (with `stdin` fed, if given); success and stdout + stderr without
/// clientv3's retry warnings.
fn etcdctl_in(server: &Server, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", server.host_port()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("etcdctl (Debian package etcd-client)");
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("etcdctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = text
        .lines()
        .filter(|l| !l.contains("\"level\":\"warn\""))
        .map(|l| format!("{l}\n"))
        .collect();
    (out.status.success(), text)
}

fn etcdctl(server: &Server, args: &[&str]) -> (bool, String) {
    etcdctl_in(server, args, None)
}

/// etcdctl that must succeed with exactly `expected`.
fn ok(server: &Server, args: &[&str], expected: &str) {
    let (success, out) = etcdctl(server, args);
    assert!(success, "etcdctl {args:?} failed: {out}");
    assert_eq!(out, expected, "etcdctl {args:?}");
}

/// etcdctl that must fail with exactly `expected`.
fn fails(server: &Server, args: &[&str], expected: &str) {
    let (success, out) = etcdctl(server, args);
    assert!(!success, "etcdctl {args:?} should fail, printed: {out}");
    assert_eq!(out, expected, "etcdctl {args:?}");
}

const ROOT: &str = "--user=root:rootpw";
const U1: &str = "--user=u1:pw1";
const DENIED: &str = "Error: etcdserver: permission denied\n";

/// root, role r1 (read a; readwrite [b, c); write prefix p; read from x on) and u1 holding r1, with
/// auth enabled: the setup of every etcdctl test, as an operator would type it.
fn set_up_users(s: &Server) {
    ok(s, &["user", "add", "root:rootpw"], "User root created\n");
    // etcdctl itself creates the root role and grants it when etcd answers "root user does not have
    // root role"; granting it explicitly works too.
    ok(
        s,
        &["user", "grant-role", "root", "root"],
        "Role root is granted to user root\n",
    );
    ok(s, &["role", "add", "r1"], "Role r1 created\n");
    let grants: [&[&str]; 4] = [
        &["role", "grant-permission", "r1", "read", "a"],
        &["role", "grant-permission", "r1", "readwrite", "b", "c"],
        &["role", "grant-permission", "r1", "write", "p", "--prefix"],
        &["role", "grant-permission", "r1", "read", "x", "--from-key"],
    ];
    for args in grants {
        ok(s, args, "Role r1 updated\n");
    }
    ok(s, &["user", "add", "u1:pw1"], "User u1 created\n");
    ok(
        s,
        &["user", "grant-role", "u1", "r1"],
        "Role r1 is granted to user u1\n",
    );
    ok(s, &["auth", "enable"], "Authentication Enabled\n");
}

const R1_PERMS: &str = "Role r1\nKV Read:\n\ta\n\t[b, c) (prefix b)\n\t[x, <open ended>\nKV Write:\n\t[b, c) (prefix b)\n\t[p, q) (prefix p)\n";

#[test]
fn etcdctl_users_roles_and_permissions() {
    for engine in ENGINES {
        let s = Server::start_with(engine, &FAST_BCRYPT);
        fails(
            &s,
            &["auth", "enable"],
            "Error: etcdserver: root user does not exist\n",
        );
        set_up_users(&s);
        ok(&s, &["role", "get", "r1", ROOT], R1_PERMS);

        // No token, a wrong password, an unknown user.
        fails(&s, &["get", "a"], "Error: etcdserver: user name is empty\n");
        fails(
            &s,
            &["put", "b", "1"],
            "Error: etcdserver: user name is empty\n",
        );
        let auth_failed = "Error: etcdserver: authentication failed, invalid user ID or password\n";
        fails(&s, &["get", "a", "--user=u1:bad"], auth_failed);
        fails(&s, &["get", "a", "--user=nobody:x"], auth_failed);

        // Single key, range, prefix and open-ended permissions.
        ok(&s, &["get", "a", U1], "");
        fails(&s, &["put", "a", "1", U1], DENIED);
        ok(&s, &["put", "b", "1", U1], "OK\n");
        ok(&s, &["put", "b", "2", "--prev-kv", U1], "OK\nb\n1\n");
        ok(&s, &["get", "b", "--prefix", U1], "b\n2\n");
        fails(&s, &["get", "a", "c", U1], DENIED);
        ok(&s, &["put", "p1", "1", U1], "OK\n");
        fails(&s, &["put", "p1", "2", "--prev-kv", U1], DENIED);
        fails(&s, &["get", "p1", U1], DENIED);
        fails(&s, &["del", "p1", "--prev-kv", U1], DENIED);
        ok(&s, &["put", "zz", "root-wrote", ROOT], "OK\n");
        ok(&s, &["get", "zz", U1], "zz\nroot-wrote\n");
        ok(&s, &["get", "x", "--from-key", "--keys-only", U1], "zz\n\n");
        fails(&s, &["get", "", "--from-key", U1], DENIED);
        fails(&s, &["put", "zz", "1", U1], DENIED);
        // Root may do everything, including reading what u1 may only write.
        ok(&s, &["get", "p1", ROOT], "p1\n1\n");

        // Txn: every compare and every op of both branches is checked, whichever runs.
        let denied_branch = "value(\"a\") = \"1\"\n\nput b x\n\nput zz y\n\n";
        assert_eq!(
            etcdctl_in(&s, &["txn", U1], Some(denied_branch)),
            (false, DENIED.to_string())
        );
        let allowed = "value(\"a\") = \"1\"\n\nput b x\n\nput p2 y\n\n";
        assert_eq!(
            etcdctl_in(&s, &["txn", U1], Some(allowed)),
            (true, "FAILURE\n\nOK\n".to_string())
        );
        let denied_compare = "value(\"c\") = \"1\"\n\nput b x\n\n\n";
        assert_eq!(
            etcdctl_in(&s, &["txn", U1], Some(denied_compare)),
            (false, DENIED.to_string())
        );

        // Admin operations need root; a user may read its own record and its roles.
        fails(&s, &["user", "list", U1], DENIED);
        fails(&s, &["role", "list", U1], DENIED);
        fails(&s, &["user", "get", "root", U1], DENIED);
        fails(&s, &["role", "add", "r2", U1], DENIED);
        fails(&s, &["auth", "disable", U1], DENIED);
        ok(&s, &["user", "get", "u1", U1], "User: u1\nRoles: r1\n");
        ok(&s, &["role", "get", "r1", U1], R1_PERMS);
        ok(&s, &["user", "list", ROOT], "root\nu1\n");
        ok(&s, &["role", "list", ROOT], "r1\n");
        let (success, out) = etcdctl(&s, &["defrag", U1]);
        assert!(!success);
        assert_eq!(
            out,
            format!(
                "Failed to defragment etcd member[{}] (rpc error: code = Unknown desc = auth: permission denied)\n",
                s.host_port()
            )
        );
        fails(
            &s,
            &["member", "add", "x", "--peer-urls=http://127.0.0.1:1", U1],
            DENIED,
        );
        fails(&s, &["lock", "mylock", U1, "--", "echo", "held"], DENIED);
        fails(&s, &["elect", "e1", "v", U1], DENIED);

        // etcd's errors for bad management requests.
        fails(
            &s,
            &["user", "add", "u1:x", ROOT],
            "Error: etcdserver: user name already exists\n",
        );
        fails(
            &s,
            &["user", "get", "nobody", ROOT],
            "Error: etcdserver: user name not found\n",
        );
        fails(
            &s,
            &["role", "add", "r1", ROOT],
            "Error: etcdserver: role name already exists\n",
        );
        fails(
            &s,
            &["role", "get", "nobody", ROOT],
            "Error: etcdserver: role name not found\n",
        );
        fails(
            &s,
            &["user", "grant-role", "u1", "nobody", ROOT],
            "Error: etcdserver: role name not found\n",
        );
        fails(
            &s,
            &["user", "revoke-role", "u1", "root", ROOT],
            "Error: etcdserver: role is not granted to the user\n",
        );
        fails(
            &s,
            &["role", "revoke-permission", "r1", "zz", ROOT],
            "Error: etcdserver: permission is not granted to the role\n",
        );
        let mgmt = "Error: etcdserver: invalid auth management\n";
        fails(&s, &["user", "delete", "root", ROOT], mgmt);
        fails(&s, &["user", "revoke-role", "root", "root", ROOT], mgmt);

        // A revoked permission takes effect at once.
        ok(
            &s,
            &["role", "revoke-permission", "r1", "b", "c", ROOT],
            "Permission of range [b, c) is revoked from role r1\n",
        );
        fails(&s, &["put", "b", "3", U1], DENIED);
        fails(&s, &["get", "b", U1], DENIED);
        ok(
            &s,
            &["user", "revoke-role", "u1", "r1", ROOT],
            "Role r1 is revoked from user u1\n",
        );
        // A user without roles can do nothing with keys.
        fails(&s, &["get", "a", U1], DENIED);

        // A new password: the old one stops working.
        let (success, out) = etcdctl_in(
            &s,
            &["user", "passwd", "u1", "--interactive=false", ROOT],
            Some("newpw\n"),
        );
        assert!(success, "{out}");
        assert_eq!(out, "Password updated\n");
        fails(&s, &["get", "a", U1], auth_failed);
        fails(&s, &["get", "a", "--user=u1:newpw"], DENIED);

        ok(&s, &["auth", "disable", ROOT], "Authentication Disabled\n");
        ok(&s, &["get", "zz"], "zz\nroot-wrote\n");
        // etcdctl logs in first; "authentication is not enabled" is an answer clientv3 tolerates.
        ok(&s, &["get", "zz", "--user=u1:newpw"], "zz\nroot-wrote\n");
        ok(&s, &["user", "delete", "u1"], "User u1 deleted\n");
        ok(&s, &["role", "delete", "r1"], "Role r1 deleted\n");
        ok(&s, &["user", "list"], "root\n");
    }
}

#[test]
fn etcdctl_watch_needs_read_permission() {
    for engine in ENGINES {
        let s = Server::start_with(engine, &FAST_BCRYPT);
        set_up_users(&s);
        // A watch on a key u1 may not read is cancelled at once with etcd's reason.
        let (success, out) = etcdctl(&s, &["watch", "m", U1]);
        assert!(!success);
        assert_eq!(
            out,
            "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: permission denied)\nError: watch is canceled by the server\n"
        );
        // Without a user too: etcd 3.5.1 asks only whether the watch is permitted (asked of it
        // with etcdctl 3.5.1 and 3.4.23: the same text).
        let (success, out) = etcdctl(&s, &["watch", "b"]);
        assert!(!success);
        assert_eq!(
            out,
            "watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: permission denied)\nError: watch is canceled by the server\n"
        );
        // A permitted watch sees root's writes.
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", s.host_port()))
            .args(["watch", "b", "--prefix", U1])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // The watch may not be registered yet: write until an event arrives.
        let mut lines = Vec::new();
        for i in 0..50 {
            ok(&s, &["put", "b1", &format!("v{i}"), ROOT], "OK\n");
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                lines.push(line);
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(lines, vec!["PUT".to_string()], "the watcher saw the put");
    }
}

#[test]
fn auth_state_survives_restart() {
    let mut s = Server::start_with("rocksdb", &FAST_BCRYPT);
    set_up_users(&s);
    ok(&s, &["put", "b", "before", U1], "OK\n");
    s.restart();
    fails(&s, &["get", "b"], "Error: etcdserver: user name is empty\n");
    ok(&s, &["get", "b", U1], "b\nbefore\n");
    fails(&s, &["put", "a", "1", U1], DENIED);
    ok(&s, &["role", "get", "r1", ROOT], R1_PERMS);
    ok(&s, &["user", "list", ROOT], "root\nu1\n");
    ok(&s, &["auth", "disable", ROOT], "Authentication Disabled\n");
    s.restart();
    ok(&s, &["get", "b"], "b\nbefore\n");
}

async fn root_client(s: &Server) -> Client {
    let opts = ConnectOptions::new()
        .with_user("root", "rootpw")
        .with_timeout(Duration::from_secs(20));
    Client::connect([s.endpoint.as_str()], Some(opts))
        .await
        .expect("root connects")
}

/// Through etcd-client: root, a role `reader` (read on prefix "app/", readwrite on "own/"), user
/// `app` holding it, auth enabled.
async fn set_up_client(s: &Server) {
    set_up_reader(&s.client().await).await;
}

/// [`set_up_client`] through `c`, a client of any member.
async fn set_up_reader(c: &Client) {
    let mut auth = c.auth_client();
    auth.user_add("root", "rootpw", None).await.expect("root");
    auth.user_grant_role("root", "root")
        .await
        .expect("grant root");
    auth.role_add("reader").await.expect("role");
    auth.role_grant_permission("reader", Permission::read("app/").with_prefix())
        .await
        .expect("grant read");
    auth.role_grant_permission("reader", Permission::read_write("own/").with_prefix())
        .await
        .expect("grant readwrite");
    auth.user_add("app", "secret", None).await.expect("user");
    auth.user_grant_role("app", "reader").await.expect("grant");
    auth.auth_enable().await.expect("enable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_with_user() {
    for engine in ENGINES {
        let s = Server::start_with(engine, &FAST_BCRYPT);
        set_up_client(&s).await;
        let mut root = root_client(&s).await;
        root.put("app/config", "v1", None)
            .await
            .expect("root writes");

        let opts = ConnectOptions::new().with_user("app", "secret");
        let mut app = Client::connect([s.endpoint.as_str()], Some(opts))
            .await
            .expect("app connects");
        let got = app.get("app/config", None).await.expect("read allowed");
        assert_eq!(got.kvs()[0].value(), b"v1");
        let err = app.put("app/config", "v2", None).await.unwrap_err();
        assert_eq!(
            grpc(err),
            (
                Code::PermissionDenied,
                "etcdserver: permission denied".into()
            )
        );
        app.put("own/x", "1", None).await.expect("write allowed");

        // A txn with a denied op in the branch that would not run is still refused.
        let txn = Txn::new()
            .when([Compare::value("own/x", CompareOp::Equal, "1")])
            .and_then([TxnOp::put("own/y", "2", None)])
            .or_else([TxnOp::put("app/config", "evil", None)]);
        let err = app.txn(txn).await.unwrap_err();
        assert_eq!(grpc(err).0, Code::PermissionDenied);
        let nested = Txn::new().and_then([TxnOp::txn(
            Txn::new().and_then([TxnOp::delete("app/", None)]),
        )]);
        assert_eq!(
            grpc(app.txn(nested).await.unwrap_err()).0,
            Code::PermissionDenied
        );
        // Permissions come before the request is examined in full: a txn that is both invalid
        // (one key put twice) and not permitted is refused for its permissions (etcd would name
        // the duplicate), the same invalid txn on permitted keys for what is wrong with it, and
        // one with too many operations for its size, etcd's first check, which reads no key.
        let twice = |key: &str| {
            Txn::new().and_then([TxnOp::put(key, "1", None), TxnOp::put(key, "2", None)])
        };
        assert_eq!(
            grpc(app.txn(twice("app/config")).await.unwrap_err()).0,
            Code::PermissionDenied
        );
        assert_eq!(
            grpc(app.txn(twice("own/twice")).await.unwrap_err()),
            (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request".into()
            )
        );
        let puts: Vec<TxnOp> = (0..129)
            .map(|i| TxnOp::put(format!("app/{i}"), "v", None))
            .collect();
        let oversized = Txn::new().and_then(puts);
        assert_eq!(
            grpc(app.txn(oversized).await.unwrap_err()),
            (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request".into()
            )
        );

        // Lease revoke needs write access to every attached key.
        let lease = root.lease_grant(60, None).await.expect("grant").id();
        root.put("app/leased", "x", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("attach");
        let err = app.lease_revoke(lease).await.unwrap_err();
        assert_eq!(grpc(err).0, Code::PermissionDenied);
        // ... and so does attaching another key to it.
        let err = app
            .put("own/z", "1", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap_err();
        assert_eq!(grpc(err).0, Code::PermissionDenied);
        root.lease_revoke(lease).await.expect("root revokes");

        // Watch: permitted ranges stream events, others are cancelled with etcd's reason.
        let mut stream = app
            .watch("app/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        let created = stream.message().await.expect("stream").expect("created");
        assert!(created.created() && !created.canceled());
        root.put("app/new", "n", None).await.expect("put");
        let event = stream.message().await.expect("stream").expect("event");
        assert_eq!(event.events()[0].kv().expect("kv").key(), b"app/new");
        let mut denied = app.watch("secret", None).await.expect("watch call");
        let refused = denied.message().await.expect("stream").expect("refusal");
        assert!(refused.created() && refused.canceled());
        assert_eq!(
            refused.cancel_reason(),
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        );

        // Wrong password.
        let bad = ConnectOptions::new().with_user("app", "wrong");
        let err = Client::connect([s.endpoint.as_str()], Some(bad))
            .await
            .err()
            .expect("wrong password refused");
        assert_eq!(
            grpc(err),
            (
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password".into()
            )
        );
        // A user added without a password cannot log in (etcd's `no_password`), not even after
        // a password change, and is told so with etcd 3.5.1's own error (asked of etcd 3.5.1
        // with etcdctl: `user add np --no-password`, `user passwd np`, `--user np:newpw get a`).
        root.auth_client()
            .user_add(
                "np",
                "",
                Some(etcd_client::UserAddOptions::new().with_no_pwd()),
            )
            .await
            .expect("no-password user");
        let no_password_user = (
            Code::Unknown,
            "auth: authentication failed, password was given for no password user".to_string(),
        );
        let err = root
            .auth_client()
            .authenticate("np".into(), String::new())
            .await
            .unwrap_err();
        assert_eq!(grpc(err), no_password_user);
        root.auth_client()
            .user_change_password("np", "newpw")
            .await
            .expect("a password change of a no-password user is accepted");
        let err = root
            .auth_client()
            .authenticate("np".into(), "newpw".into())
            .await
            .unwrap_err();
        assert_eq!(grpc(err), no_password_user);
        // No token at all.
        let mut anonymous = s.client().await;
        let err = anonymous.get("app/config", None).await.unwrap_err();
        assert_eq!(
            grpc(err),
            (
                Code::InvalidArgument,
                "etcdserver: user name is empty".into()
            )
        );

        // Deleting the user voids its token at once.
        root.auth_client().user_delete("app").await.expect("delete");
        let err = app.get("app/config", None).await.unwrap_err();
        assert_eq!(
            grpc(err),
            (
                Code::Unauthenticated,
                "etcdserver: invalid auth token".into()
            )
        );

        root.auth_client().auth_disable().await.expect("disable");
        let err = anonymous
            .auth_client()
            .authenticate("root".into(), "rootpw".into())
            .await
            .unwrap_err();
        assert_eq!(
            grpc(err),
            (
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled".into()
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_after_the_ttl_unless_used() {
    let s = Server::start_with(
        "memory",
        &[
            "--bcrypt-cost",
            "4",
            "--auth-token",
            "simple",
            "--auth-token-ttl",
            "2",
        ],
    );
    set_up_client(&s).await;
    let opts = ConnectOptions::new().with_user("app", "secret");
    let mut app = Client::connect([s.endpoint.as_str()], Some(opts))
        .await
        .expect("app connects");
    // Used every second, the token stays alive well past its TTL.
    for _ in 0..4 {
        app.get("app/x", None).await.expect("token renewed by use");
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = app.get("app/x", None).await.unwrap_err();
    assert_eq!(
        grpc(err),
        (
            Code::Unauthenticated,
            "etcdserver: invalid auth token".into()
        )
    );
    // A client that refreshes expired tokens logs in again by itself.
    let opts = ConnectOptions::new()
        .with_user("app", "secret")
        .with_auto_token_refresh(true);
    let mut refreshing = Client::connect([s.endpoint.as_str()], Some(opts))
        .await
        .expect("connects");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    refreshing
        .get("app/x", None)
        .await
        .expect("refreshed after expiry");
}

#[test]
fn bad_auth_flags_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["--auth-token", "jwt", "--engine", "memory"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--auth-token"));
    let out = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["--bcrypt-cost", "3", "--engine", "memory"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bcrypt-cost"));
}

/// A `Range` for `key` sent straight to `endpoint` with `token` in the gRPC metadata, as clientv3
/// sends it.
async fn get_with_token(
    endpoint: &str,
    token: &str,
    key: &str,
) -> Result<metastore::pb::etcdserverpb::RangeResponse, tonic::Status> {
    use metastore::pb::etcdserverpb::kv_client::KvClient;
    let mut kv = KvClient::connect(endpoint.to_string())
        .await
        .expect("connect");
    let mut request = tonic::Request::new(metastore::pb::etcdserverpb::RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("token", token.parse().expect("ascii token"));
    kv.range(request).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_works_on_every_member() {
    let cluster = common::TestCluster::start_with(3, &FAST_BCRYPT);
    cluster.leader().await;
    let endpoints = cluster.endpoints();
    set_up_reader(&cluster.members[0].client().await).await;
    // Log in on one member; the token goes through the log, so every member accepts it (as
    // etcd's simple tokens do).
    let c = cluster.members[1].client().await;
    let token = c
        .auth_client()
        .authenticate("app".into(), "secret".into())
        .await
        .expect("login")
        .token()
        .to_string();
    for endpoint in &endpoints {
        let mut last = None;
        // A member applies the login a moment after the one that answered it.
        for _ in 0..50 {
            match get_with_token(endpoint, &token, "app/x").await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(last.is_none(), "{endpoint}: {last:?}");
        let denied = get_with_token(endpoint, &token, "secret")
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        let invalid = get_with_token(endpoint, "nope.1", "app/x")
            .await
            .unwrap_err();
        assert_eq!(
            (invalid.code(), invalid.message()),
            (Code::Unauthenticated, "etcdserver: invalid auth token")
        );
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .expect("read dir")
        .map_while(Result::ok)
    {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push(bytes);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_password_reaches_the_disk() {
    let s = Server::start_with("rocksdb", &FAST_BCRYPT);
    let c = s.client().await;
    let mut auth = c.auth_client();
    let password = "canary-password-4f1e";
    auth.user_add("alice", password, None).await.expect("add");
    auth.user_change_password("alice", "canary-password-second")
        .await
        .expect("passwd");
    // A value written the same way is found by the same scan, so the scan can see plain bytes.
    let mut kv = s.client().await;
    kv.put("k", "canary-visible-value", None)
        .await
        .expect("put");
    let files = files_under(&s.data_dir);
    let contains = |needle: &str| {
        files
            .iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    assert!(contains("canary-visible-value"), "the scan reads the log");
    assert!(!contains(password), "a password was written in plaintext");
    assert!(!contains("canary-password-second"));
}

/// Keep asking `endpoint` for `key` with `token` (serializable, so the member answers from its own
/// state) until it returns the key or 30 s pass.
async fn eventually_readable(endpoint: &str, token: &str, key: &str) {
    use metastore::pb::etcdserverpb::kv_client::KvClient;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let result = async {
            let mut kv = KvClient::connect(endpoint.to_string())
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut request = tonic::Request::new(metastore::pb::etcdserverpb::RangeRequest {
                key: key.as_bytes().to_vec(),
                serializable: true,
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("token", token.parse().expect("ascii token"));
            kv.range(request).await
        }
        .await;
        match result {
            Ok(r) if !r.get_ref().kvs.is_empty() => return,
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "{endpoint} never caught up with {key}"
            ),
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "{endpoint} never allowed {key}: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_state_travels_in_raft_snapshots_and_backups() {
    // Snapshots every 50 entries: a member down while auth changes catches up from a snapshot.
    let mut cluster =
        common::TestCluster::start_with(3, &["--snapshot-count", "50", "--bcrypt-cost", "4"]);
    // Take down a follower, so the cluster keeps its leader.
    let leader = cluster.leader().await;
    let (up, other, down) = (leader, (leader + 1) % 3, (leader + 2) % 3);
    {
        let c = cluster.members[up].client().await;
        let mut auth = c.auth_client();
        auth.user_add("root", "rootpw", None).await.expect("root");
        auth.user_grant_role("root", "root").await.expect("grant");
        auth.user_add("app", "secret", None).await.expect("app");
        auth.role_add("reader").await.expect("role");
        auth.user_grant_role("app", "reader").await.expect("grant");
    }
    cluster.members[down].kill9();
    let endpoint0 = cluster.members[up].endpoint();
    let opts = ConnectOptions::new().with_user("root", "rootpw");
    {
        let c = cluster.members[up].client().await;
        c.auth_client().auth_enable().await.expect("enable");
        let mut root = Client::connect([endpoint0.as_str()], Some(opts))
            .await
            .expect("root");
        root.auth_client()
            .role_grant_permission("reader", Permission::read("late/").with_prefix())
            .await
            .expect("grant while m2 is down");
        for i in 0..150 {
            root.put(format!("late/{i}"), "v", None).await.expect("put");
        }
    }
    cluster.members[down].restart();
    // The restarted member learns the enabled flag and the late grant from a snapshot (its log was
    // purged meanwhile): a login through it works once it has caught up, and so does reading.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = common::etcdctl(
            &cluster.members[down].host_port(),
            &["get", "late/149", "--consistency=s", "--user=app:secret"],
        );
        if ok && out == "late/149\nv\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never caught up: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out) = common::etcdctl(
        &cluster.members[down].host_port(),
        &["get", "late/1", "--consistency=s"],
    );
    assert!(
        !ok && out.contains("etcdserver: user name is empty"),
        "{out}"
    );
    let (ok, out) = common::etcdctl(
        &cluster.members[down].host_port(),
        &["put", "late/1", "x", "--user=app:secret"],
    );
    assert!(
        !ok && out.contains("etcdserver: permission denied"),
        "{out}"
    );
    // A token issued on another member now reaches it through the log.
    let c = cluster.members[other].client().await;
    let token = c
        .auth_client()
        .authenticate("app".into(), "secret".into())
        .await
        .expect("login")
        .token()
        .to_string();
    eventually_readable(&cluster.members[down].endpoint(), &token, "late/1").await;

    // A backup carries users, roles and the enabled flag into a new cluster.
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("backup.db");
    let (ok, out) = common::etcdctl(
        &cluster.members[up].host_port(),
        &[
            "snapshot",
            "save",
            file.to_str().expect("utf-8 path"),
            "--user=root:rootpw",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = common::etcdctl(
        &cluster.members[up].host_port(),
        &["snapshot", "save", file.to_str().expect("utf-8 path")],
    );
    assert!(!ok && out.contains("auth: user name is empty"), "{out}");
    drop(cluster);
    let restored = common::TestCluster::start_restored(3, &file);
    restored.leader().await;
    let (ok, out) = common::etcdctl(&restored.etcdctl_endpoints(), &["get", "late/1"]);
    assert!(
        !ok && out.contains("etcdserver: user name is empty"),
        "{out}"
    );
    let (ok, out) = common::etcdctl(
        &restored.etcdctl_endpoints(),
        &["get", "late/1", "--user=app:secret"],
    );
    // (A member that has not applied the login yet answers "invalid auth token"; clientv3 logs
    // in again and retries, leaving a warning in the output.)
    assert!(ok && out.starts_with("late/1\nv\n"), "{out}");
    let (ok, out) = common::etcdctl(
        &restored.etcdctl_endpoints(),
        &["put", "late/1", "x", "--user=app:secret"],
    );
    assert!(
        !ok && out.contains("etcdserver: permission denied"),
        "{out}"
    );
}

/// `(code, message)` of an etcd-client result that must have failed.
fn refused<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> (Code, String) {
    grpc(result.expect_err("the call must be refused"))
}

/// The security review's claim, tested: with auth enabled an unauthenticated client reaches
/// nothing over gRPC but `Authenticate` and `AuthStatus` (which etcd 3.7 answers anyone: it tells
/// only whether auth is on and its revision), not even the RPCs etcd 3.4 leaves unchecked
/// (Status, Alarm, MemberList, Compact, the lease RPCs); a user reaches those, and raising or
/// clearing alarms and moving the leader need root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_client_reaches_nothing_but_authenticate_and_auth_status() {
    use etcd_client::{AlarmAction, AlarmType, LeaseTimeToLiveOptions};
    let empty = || {
        (
            Code::InvalidArgument,
            "etcdserver: user name is empty".to_string(),
        )
    };
    for engine in ENGINES {
        let s = Server::start_with(engine, &FAST_BCRYPT);
        set_up_client(&s).await;
        let mut root = root_client(&s).await;
        let lease = root.lease_grant(60, None).await.expect("grant").id();
        root.put("app/leased", "x", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("attach");
        let put = root.put("own/r", "1", None).await.expect("put");
        let revision = put.header().expect("header").revision();

        let mut anon = s.client().await;
        let with_keys = || Some(LeaseTimeToLiveOptions::new().with_keys());
        assert_eq!(refused(anon.status().await), empty(), "Status");
        assert_eq!(
            refused(anon.alarm(AlarmAction::Get, AlarmType::None, None).await),
            empty(),
            "Alarm get"
        );
        assert_eq!(
            refused(
                anon.alarm(AlarmAction::Activate, AlarmType::Nospace, None)
                    .await
            ),
            (Code::Unknown, "auth: user name is empty".to_string()),
            "Alarm activate"
        );
        assert_eq!(refused(anon.member_list().await), empty(), "MemberList");
        assert_eq!(
            refused(anon.compact(revision, None).await),
            empty(),
            "Compact"
        );
        assert_eq!(
            refused(anon.lease_grant(60, None).await),
            empty(),
            "LeaseGrant"
        );
        assert_eq!(
            refused(anon.lease_time_to_live(lease, with_keys()).await),
            empty(),
            "LeaseTimeToLive"
        );
        assert_eq!(refused(anon.leases().await), empty(), "LeaseLeases");
        assert_eq!(
            refused(anon.lease_keep_alive(lease).await),
            empty(),
            "LeaseKeepAlive"
        );
        // etcd-client has no AuthStatus: the generated client asks; etcd 3.7 answers anyone.
        let mut auth =
            metastore::pb::etcdserverpb::auth_client::AuthClient::connect(s.endpoint.clone())
                .await
                .expect("connect");
        let status = auth
            .auth_status(metastore::pb::etcdserverpb::AuthStatusRequest {})
            .await
            .expect("AuthStatus answers anyone")
            .into_inner();
        assert!(status.enabled && status.auth_revision > 0, "{status:?}");
        assert_eq!(
            refused(anon.move_leader(1).await),
            (Code::Unknown, "auth: user name is empty".to_string()),
            "MoveLeader"
        );
        // Nothing the refused calls asked for happened.
        let alarms = root
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("root lists alarms");
        assert!(alarms.alarms().is_empty(), "no alarm was raised");
        let got = root.get(
            "own/r",
            Some(etcd_client::GetOptions::new().with_revision(revision - 1)),
        );
        got.await
            .expect("history before the refused compaction is still there");

        // A user (not root) reaches the unchecked RPCs, but not the root-only ones.
        let opts = ConnectOptions::new().with_user("app", "secret");
        let mut app = Client::connect([s.endpoint.as_str()], Some(opts))
            .await
            .expect("app connects");
        app.status().await.expect("a user may ask for status");
        app.member_list().await.expect("a user may list members");
        app.leases().await.expect("a user may list leases");
        let own = app.lease_grant(30, None).await.expect("a user may grant");
        app.lease_time_to_live(own.id(), with_keys())
            .await
            .expect("a lease without keys");
        // app reads "app/", so it may list lease's keys; a key it cannot read hides them.
        let ttl = app
            .lease_time_to_live(lease, with_keys())
            .await
            .expect("readable keys");
        assert_eq!(ttl.keys(), [b"app/leased".to_vec()]);
        root.put("secret/s", "x", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("attach a key app cannot read");
        assert_eq!(
            refused(app.lease_time_to_live(lease, with_keys()).await),
            (
                Code::PermissionDenied,
                "etcdserver: permission denied".into()
            )
        );
        app.lease_time_to_live(lease, None)
            .await
            .expect("without keys");
        assert_eq!(
            refused(
                app.alarm(AlarmAction::Activate, AlarmType::Nospace, None)
                    .await
            ),
            (Code::Unknown, "auth: permission denied".to_string())
        );
        assert_eq!(
            refused(app.move_leader(1).await),
            (Code::Unknown, "auth: permission denied".to_string())
        );
        app.compact(revision, None)
            .await
            .expect("a user may compact");
        root.alarm(AlarmAction::Get, AlarmType::None, None)
            .await
            .expect("root lists alarms");
    }
}
/// An ECDSA P-256 key pair written to `dir` as `<name>.key` (PKCS#8 PEM) and `<name>.pub` (SPKI
/// PEM): (private path, public path).
fn jwt_key_pair(dir: &std::path::Path, name: &str) -> (String, String) {
    let pair = rcgen::KeyPair::generate().expect("P-256 key pair");
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&private, pair.serialize_pem()).expect("write key");
    std::fs::write(&public, pair.public_key_pem()).expect("write public key");
    (private.display().to_string(), public.display().to_string())
}

/// `--auth-token` for ES256 JWTs with the pair in `dir` named `name`, valid `ttl`.
fn jwt_flag(dir: &std::path::Path, name: &str, ttl: &str) -> String {
    let private = dir.join(format!("{name}.key")).display().to_string();
    let public = dir.join(format!("{name}.pub")).display().to_string();
    format!("jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl={ttl}")
}

/// The JSON of part `i` (0 header, 1 claims) of a JWT.
fn jwt_part(token: &str, i: usize) -> serde_json::Value {
    use base64::Engine as _;
    let text = token.split('.').nth(i).expect("JWT part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// A token with etcd's claims, signed ES256 by the private key at `private` (PEM).
fn forge_jwt(private: &str, username: &str, revision: u64, exp: u64) -> String {
    let pem = std::fs::read(private).expect("read key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("EC key");
    let claims = serde_json::json!({"username": username, "revision": revision, "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .expect("sign")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

async fn login(endpoint: &str, user: &str, password: &str) -> (String, i64) {
    let c = Client::connect([endpoint], None).await.expect("connect");
    let resp = c
        .auth_client()
        .authenticate(user.into(), password.into())
        .await
        .expect("login");
    let revision = resp.header().expect("header").revision();
    (resp.token().to_string(), revision)
}

/// The auth revision `endpoint` reports to the holder of `token` (`AuthStatus`, which
/// etcd-client does not offer).
async fn auth_revision(endpoint: &str, token: &str) -> u64 {
    use metastore::pb::etcdserverpb::{auth_client::AuthClient, AuthStatusRequest};
    let mut auth = AuthClient::connect(endpoint.to_string())
        .await
        .expect("connect");
    let mut request = tonic::Request::new(AuthStatusRequest {});
    request
        .metadata_mut()
        .insert("token", token.parse().expect("ascii token"));
    auth.auth_status(request)
        .await
        .expect("auth status")
        .into_inner()
        .auth_revision
}

fn invalid_token(status: &tonic::Status) -> (Code, &str) {
    (status.code(), status.message())
}

const INVALID_TOKEN: (Code, &str) = (Code::Unauthenticated, "etcdserver: invalid auth token");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_with_etcdctl_and_etcd_client() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (private, _) = jwt_key_pair(keys.path(), "k");
    let (other_private, _) = jwt_key_pair(keys.path(), "other");
    let flag = jwt_flag(keys.path(), "k", "5m");
    for engine in ENGINES {
        let s = Server::start_with(engine, &["--bcrypt-cost", "4", "--auth-token", &flag]);
        set_up_users(&s);
        // etcdctl logs in with every command and sends the JWT it gets; permissions apply.
        ok(&s, &["put", "b", "1", U1], "OK\n");
        ok(&s, &["get", "b", U1], "b\n1\n");
        fails(&s, &["put", "a", "1", U1], DENIED);
        fails(
            &s,
            &["get", "a", "--user=u1:bad"],
            "Error: etcdserver: authentication failed, invalid user ID or password\n",
        );
        ok(&s, &["role", "get", "r1", ROOT], R1_PERMS);

        // etcd-client logs in the same way.
        let opts = ConnectOptions::new().with_user("u1", "pw1");
        let mut u1 = Client::connect([s.endpoint.as_str()], Some(opts))
            .await
            .expect("u1 connects");
        assert_eq!(
            u1.get("b", None).await.expect("read b").kvs()[0].value(),
            b"1"
        );
        let err = u1.put("a", "1", None).await.unwrap_err();
        assert_eq!(grpc(err).0, Code::PermissionDenied);

        // The token is a JWT: ES256, with etcd's claims; the revision is the auth revision.
        let (token, _) = login(&s.endpoint, "u1", "pw1").await;
        let auth_revision = auth_revision(&s.endpoint, &token).await;
        assert_eq!(token.split('.').count(), 3, "{token}");
        let header = jwt_part(&token, 0);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        let claims = jwt_part(&token, 1);
        assert_eq!(claims["username"], "u1");
        assert_eq!(claims["revision"], auth_revision);
        let exp = claims["exp"].as_u64().expect("exp");
        let now = unix_now();
        assert!(exp > now + 290 && exp <= now + 301, "exp {exp}, now {now}");
        get_with_token(&s.endpoint, &token, "b")
            .await
            .expect("JWT accepted");

        // A token another key signed, or this key with the claims changed, is refused.
        let foreign = forge_jwt(&other_private, "root", auth_revision, exp);
        let err = get_with_token(&s.endpoint, &foreign, "b")
            .await
            .unwrap_err();
        assert_eq!(invalid_token(&err), INVALID_TOKEN);
        let parts: Vec<&str> = token.split('.').collect();
        let root_claims = forge_jwt(&private, "root", auth_revision, exp);
        let spliced = format!(
            "{}.{}.{}",
            parts[0],
            root_claims.split('.').nth(1).expect("claims"),
            parts[2]
        );
        let err = get_with_token(&s.endpoint, &spliced, "b")
            .await
            .unwrap_err();
        assert_eq!(invalid_token(&err), INVALID_TOKEN);
        // An expired one (signed with the right key) too.
        let expired = forge_jwt(&private, "u1", auth_revision, now - 1);
        let err = get_with_token(&s.endpoint, &expired, "b")
            .await
            .unwrap_err();
        assert_eq!(invalid_token(&err), INVALID_TOKEN);

        // Any auth change makes older tokens stale for key access, as in etcd 3.4: the client
        // logs in again (etcdctl does with every command).
        let root = root_client(&s).await;
        root.auth_client()
            .role_grant_permission("r1", Permission::read("z"))
            .await
            .expect("grant");
        let err = get_with_token(&s.endpoint, &token, "b").await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old"
            )
        );
        ok(&s, &["get", "b", U1], "b\n1\n");
        let (token, _) = login(&s.endpoint, "u1", "pw1").await;
        get_with_token(&s.endpoint, &token, "b")
            .await
            .expect("fresh token");

        // Deleting the user voids its token.
        root.auth_client().user_delete("u1").await.expect("delete");
        let err = get_with_token(&s.endpoint, &token, "b").await.unwrap_err();
        assert_eq!(invalid_token(&err), INVALID_TOKEN);
        fails(
            &s,
            &["get", "b", U1],
            "Error: etcdserver: authentication failed, invalid user ID or password\n",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_expire_after_their_ttl() {
    let keys = tempfile::tempdir().expect("tempdir");
    jwt_key_pair(keys.path(), "k");
    let flag = jwt_flag(keys.path(), "k", "2s");
    let s = Server::start_with("memory", &["--bcrypt-cost", "4", "--auth-token", &flag]);
    set_up_client(&s).await;
    let (token, _) = login(&s.endpoint, "app", "secret").await;
    let exp = jwt_part(&token, 1)["exp"].as_u64().expect("exp");
    assert!(exp <= unix_now() + 2);
    get_with_token(&s.endpoint, &token, "app/x")
        .await
        .expect("fresh token");
    // Use does not renew a JWT: past `exp` it is refused.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let err = get_with_token(&s.endpoint, &token, "app/x")
        .await
        .unwrap_err();
    assert_eq!(invalid_token(&err), INVALID_TOKEN);
    // A client that refreshes refused tokens logs in again by itself.
    let opts = ConnectOptions::new()
        .with_user("app", "secret")
        .with_auto_token_refresh(true);
    let mut refreshing = Client::connect([s.endpoint.as_str()], Some(opts))
        .await
        .expect("connects");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    refreshing
        .get("app/x", None)
        .await
        .expect("refreshed after expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_works_on_every_member_without_a_proposal() {
    let keys = tempfile::tempdir().expect("tempdir");
    jwt_key_pair(keys.path(), "k");
    let flag = jwt_flag(keys.path(), "k", "5m");
    let cluster =
        common::TestCluster::start_with(3, &["--bcrypt-cost", "4", "--auth-token", &flag]);
    cluster.leader().await;
    let endpoints = cluster.endpoints();
    // Every member has published its name and client URLs (one proposal each, retried until it
    // commits): a publish still to come would land in the log during the measurement below.
    let mut first = cluster.members[0].client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = first.member_list().await.expect("member list");
        if list
            .members()
            .iter()
            .all(|m| !m.name().is_empty() && !m.client_urls().is_empty())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "members did not publish: {:?}",
            list.members()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    set_up_reader(&first).await;
    // Every member has applied the auth setup before the login. Status needs a user once auth is
    // enabled; root's client logs in when it connects (a JWT login, which proposes nothing either).
    let raft_index = |endpoint: String| async move {
        let opts = ConnectOptions::new().with_user("root", "rootpw");
        let mut c = Client::connect([endpoint.as_str()], Some(opts))
            .await
            .expect("connect");
        let status = c.status().await.expect("status");
        (
            status.raft_term(),
            status.raft_index(),
            status.raft_applied_index(),
        )
    };
    // Settled: every member has applied everything it holds, and they all hold the same log.
    // (The last log index alone says nothing about apply: a member that has the auth setup in its
    // log but not yet applied refuses the token.)
    let mut settled = false;
    for _ in 0..50 {
        let mut indexes = Vec::new();
        for endpoint in &endpoints {
            indexes.push(raft_index(endpoint.clone()).await);
        }
        if indexes.iter().all(|i| *i == indexes[0] && i.1 == i.2) {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "members did not converge");
    // Log in on one member: a JWT needs no member to record it, so nothing is proposed, and every
    // member (holding the same key) accepts it at once. A new leader appends an entry of its own
    // to start its term, so a login during an election (a loaded machine) is measured again.
    let mut token = None;
    for _ in 0..5 {
        let (term_before, before, _) = raft_index(endpoints[1].clone()).await;
        let (login_token, _) = login(&endpoints[1], "app", "secret").await;
        let (term_after, after, _) = raft_index(endpoints[1].clone()).await;
        if term_before != term_after {
            continue;
        }
        assert_eq!(before, after, "a JWT login appended to the raft log");
        token = Some(login_token);
        break;
    }
    let token = token.expect("a login within one term");
    for endpoint in &endpoints {
        get_with_token(endpoint, &token, "app/x")
            .await
            .unwrap_or_else(|e| panic!("{endpoint}: {e:?}"));
        let denied = get_with_token(endpoint, &token, "secret")
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        let err = get_with_token(endpoint, "nope.1", "app/x")
            .await
            .unwrap_err();
        assert_eq!(invalid_token(&err), INVALID_TOKEN);
    }
}

/// Run the binary with `args` (a memory engine on ports the system picks) and expect it to refuse to start
/// with an error containing `expected`.
fn refuses_to_start(args: &[&str], expected: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args([
            "--engine",
            "memory",
            "--listen-client-urls",
            "http://127.0.0.1:0",
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} started: {stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr}"
    );
}

#[test]
fn bad_jwt_flags_are_refused() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (private, public) = jwt_key_pair(keys.path(), "k");
    let (_, other_public) = jwt_key_pair(keys.path(), "other");
    let garbage = keys.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key\n").expect("write");
    let garbage = garbage.display().to_string();
    let absent = keys.path().join("absent.pem").display().to_string();
    let jwt = |options: &str| format!("jwt,{options}");
    let cases = [
        (
            jwt(&format!(
                "pub-key={public},priv-key={private},sign-method=ES999"
            )),
            "invalid auth signature method \"ES999\"",
        ),
        (
            jwt(&format!("pub-key={public},priv-key={private}")),
            "invalid auth signature method \"\"",
        ),
        (jwt("sign-method=ES256"), "missing key data"),
        (
            jwt(&format!("pub-key={absent},sign-method=ES256")),
            "cannot read pub-key= file",
        ),
        (
            jwt(&format!("priv-key={absent},sign-method=ES256")),
            "cannot read priv-key= file",
        ),
        (
            jwt(&format!(
                "pub-key={garbage},priv-key={private},sign-method=ES256"
            )),
            "pub-key= is not a ES256 key",
        ),
        (
            jwt(&format!("priv-key={garbage},sign-method=RS256")),
            "priv-key= is not a RS256 key",
        ),
        (
            jwt(&format!(
                "pub-key={other_public},priv-key={private},sign-method=ES256"
            )),
            "public and private keys don't match",
        ),
        (
            jwt(&format!("pub-key={public},sign-method=ES256,ttl=soon")),
            "invalid auth options: ttl",
        ),
        ("oauth".to_string(), "unknown token type \"oauth\""),
    ];
    for (flag, expected) in &cases {
        refuses_to_start(&["--auth-token", flag], expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_only_member_cannot_issue_jwts() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, public) = jwt_key_pair(keys.path(), "k");
    let flag = format!("jwt,pub-key={public},sign-method=ES256");
    let s = Server::start_with("memory", &["--bcrypt-cost", "4", "--auth-token", &flag]);
    set_up_client(&s).await;
    let c = Client::connect([s.endpoint.as_str()], None)
        .await
        .expect("connect");
    let err = c
        .auth_client()
        .authenticate("app".into(), "secret".into())
        .await
        .unwrap_err();
    assert_eq!(
        grpc(err),
        (
            Code::Unknown,
            "auth: token signing attempted with verify-only key".into()
        )
    );
}

/// etcd 3.5's password change without a password takes the client's own hash instead
/// (`hashedPassword`: a bcrypt hash, base64-encoded), which the auth differential test sends too:
/// the user then logs in with the password behind that hash; a hash that is not base64 is refused
/// with etcd 3.5.1's error for it (asked of etcd 3.5.1 by the differential test), changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_may_carry_the_clients_own_hash() {
    use base64::Engine as _;
    use metastore::pb::etcdserverpb::{auth_client::AuthClient, AuthUserChangePasswordRequest};
    let s = Server::start_with("memory", &FAST_BCRYPT);
    set_up_client(&s).await;
    let root = root_client(&s).await;
    let mut auth = AuthClient::connect(s.endpoint.clone())
        .await
        .expect("connect");
    let token = root
        .auth_client()
        .authenticate("root".into(), "rootpw".into())
        .await
        .expect("root logs in")
        .token()
        .to_string();
    let change = |hashed: String| {
        let mut req = tonic::Request::new(AuthUserChangePasswordRequest {
            name: "app".into(),
            password: String::new(),
            hashed_password: hashed,
        });
        req.metadata_mut()
            .insert("token", token.parse().expect("token"));
        req
    };
    let logs_in = |password: &'static str| {
        let endpoint = s.endpoint.clone();
        async move {
            let opts = ConnectOptions::new().with_user("app", password);
            Client::connect([endpoint.as_str()], Some(opts))
                .await
                .is_ok()
        }
    };

    let err = auth
        .user_change_password(change("$2b$04$not base64".into()))
        .await
        .expect_err("not base64");
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::Unknown,
            "auth: authentication failed, password was given for no password user"
        )
    );
    assert!(logs_in("secret").await, "a refused change changes nothing");

    let hash = bcrypt::hash_with_salt("fresh", 4, [9; 16])
        .expect("bcrypt")
        .to_string();
    let encoded = base64::engine::general_purpose::STANDARD.encode(hash);
    auth.user_change_password(change(encoded))
        .await
        .expect("a change carrying the client's hash");
    assert!(logs_in("fresh").await, "the password behind the hash");
    assert!(!logs_in("secret").await, "the old password no longer");
}
