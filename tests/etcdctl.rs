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
