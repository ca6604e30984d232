//! The real `etcdctl` (Debian's etcd-client package) against MetaStore, on both engines.

mod common;

use std::process::Command;

use common::{Server, ENGINES};

fn etcdctl(server: &Server, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", server.host_port()))
        .args(args);
    let out = if let Some(input) = stdin {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("etcdctl")
    } else {
        cmd.output()
            .expect("etcdctl must be installed (Debian package etcd-client)")
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn put_get_txn_del_compaction() {
    for engine in ENGINES {
        let s = Server::start(engine);
        // As in etcd, a fresh store may be compacted at revision 0 (nothing happens).
        assert_eq!(
            etcdctl(&s, &["compaction", "0"], None).1,
            "compacted revision 0\n"
        );
        assert_eq!(
            etcdctl(&s, &["put", "foo", "bar"], None).1,
            "OK\n",
            "[{engine}]"
        );
        assert_eq!(etcdctl(&s, &["get", "foo"], None).1, "foo\nbar\n");
        assert_eq!(
            etcdctl(&s, &["put", "foo", "baz", "--prev-kv"], None).1,
            "OK\nfoo\nbar\n"
        );
        etcdctl(&s, &["put", "fop", "1"], None);
        assert_eq!(
            etcdctl(&s, &["get", "fo", "--prefix", "--keys-only"], None).1,
            "foo\n\nfop\n\n"
        );
        assert_eq!(
            etcdctl(&s, &["get", "foo", "--print-value-only", "--rev=2"], None).1,
            "bar\n"
        );
        let (ok, out, _) = etcdctl(&s, &["get", "foo", "-w", "json"], None);
        assert!(
            ok && out.contains("\"revision\":4") && out.contains("\"version\":2"),
            "{out}"
        );

        let txn = "value(\"foo\") = \"baz\"\n\nput foo qux\nget foo\n\nput foo nope\n\n";
        let (ok, out, err) = etcdctl(&s, &["txn"], Some(txn));
        assert!(ok, "{err}");
        assert_eq!(out, "SUCCESS\n\nOK\n\nfoo\nqux\n");
        let (_, out, _) = etcdctl(&s, &["txn"], Some(txn));
        assert_eq!(out, "FAILURE\n\nOK\n");

        assert_eq!(etcdctl(&s, &["del", "fo", "--prefix"], None).1, "2\n");
        assert_eq!(
            etcdctl(&s, &["compaction", "3"], None).1,
            "compacted revision 3\n"
        );
        let (ok, _, err) = etcdctl(&s, &["get", "foo", "--rev=2"], None);
        assert!(
            !ok && err.contains("etcdserver: mvcc: required revision has been compacted"),
            "{err}"
        );
        let (ok, _, err) = etcdctl(&s, &["get", "foo", "--rev=99"], None);
        assert!(
            !ok && err.contains("etcdserver: mvcc: required revision is a future revision"),
            "{err}"
        );
    }
}

#[test]
fn watch_prints_history_and_live_events() {
    for engine in ENGINES {
        let s = Server::start(engine);
        etcdctl(&s, &["put", "foo", "1"], None);
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", s.host_port()))
            .args(["watch", "foo", "--rev=1", "--prev-kv"])
            .stdout(std::process::Stdio::piped());
        let mut watcher = cmd.spawn().expect("etcdctl watch");
        std::thread::sleep(std::time::Duration::from_millis(500));
        etcdctl(&s, &["put", "foo", "2"], None);
        etcdctl(&s, &["del", "foo"], None);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = watcher.kill();
        let out = watcher.wait_with_output().expect("watch output");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text, "PUT\nfoo\n1\nPUT\nfoo\n1\nfoo\n2\nDELETE\nfoo\n2\nfoo\n\n",
            "[{engine}] history replay from revision 1, then live events with their previous values"
        );
    }
}

/// `etcdctl lock` and `etcdctl elect` are clientv3 recipes over KV, Watch and Lease: the second
/// locker waits for the first, and an election observer sees the campaigner's value.
#[test]
fn lock_and_elect_recipes_work() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    for engine in ENGINES {
        let s = Server::start(engine);
        let ctl = |args: &[&str]| {
            let mut cmd = Command::new("etcdctl");
            cmd.env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", s.host_port()))
                .args(args);
            cmd
        };
        let first = ctl(&["lock", "mylock", "sleep", "2"])
            .stdout(Stdio::null())
            .spawn()
            .expect("lock 1");
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let second = ctl(&["lock", "mylock", "echo", "second"])
            .output()
            .expect("lock 2");
        assert_eq!(
            String::from_utf8_lossy(&second.stdout),
            "second\n",
            "[{engine}]"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "[{engine}] the second locker waited for the first"
        );
        let _ = first.wait_with_output();

        let mut campaigner = ctl(&["elect", "myelection", "alice"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("elect");
        std::thread::sleep(Duration::from_millis(1500));
        let leader = ctl(&["elect", "-l", "myelection"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("observe");
        std::thread::sleep(Duration::from_millis(1000));
        let _ = campaigner.kill();
        let mut observer = leader;
        let _ = observer.kill();
        let seen = String::from_utf8_lossy(&observer.wait_with_output().expect("observer").stdout)
            .into_owned();
        let _ = campaigner.wait();
        assert!(
            seen.starts_with("myelection/") && seen.contains("\nalice\n"),
            "[{engine}] observer saw {seen:?}"
        );
    }
}

#[test]
fn lease_commands_and_prefix_watch() {
    use std::process::Stdio;
    for engine in ENGINES {
        let s = Server::start(engine);
        let (ok, out, err) = etcdctl(&s, &["lease", "grant", "30"], None);
        assert!(ok, "{err}");
        // "lease 694d7c3e4a1c8a0b granted with TTL(30s)"
        let id = out.split_whitespace().nth(1).expect("lease id").to_string();
        assert!(out.ends_with("granted with TTL(30s)\n"), "[{engine}] {out}");

        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", s.host_port()))
            .args(["watch", "svc/", "--prefix"])
            .stdout(Stdio::piped());
        let mut watcher = cmd.spawn().expect("etcdctl watch");
        std::thread::sleep(std::time::Duration::from_millis(500));

        assert_eq!(
            etcdctl(&s, &["put", "svc/a", "up", &format!("--lease={id}")], None).1,
            "OK\n"
        );
        let (_, out, _) = etcdctl(&s, &["lease", "timetolive", &id, "--keys"], None);
        assert!(
            out.starts_with(&format!("lease {id} granted with TTL(30s), remaining("))
                && out.ends_with("attached keys([svc/a])\n"),
            "[{engine}] {out}"
        );
        let (_, out, _) = etcdctl(&s, &["lease", "keep-alive", "--once", &id], None);
        assert_eq!(out, format!("lease {id} keepalived with TTL(30)\n"));
        let (_, out, _) = etcdctl(&s, &["lease", "list"], None);
        assert!(out.contains(&id), "{out}");
        assert_eq!(
            etcdctl(&s, &["lease", "revoke", &id], None).1,
            format!("lease {id} revoked\n")
        );
        assert_eq!(
            etcdctl(&s, &["get", "svc/a"], None).1,
            "",
            "[{engine}] the revoke took the key"
        );

        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = watcher.kill();
        let out = watcher.wait_with_output().expect("watch output");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "PUT\nsvc/a\nup\nDELETE\nsvc/a\n\n",
            "[{engine}]"
        );
    }
}
