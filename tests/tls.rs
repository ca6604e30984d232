//! Client TLS (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`): gRPC
//! (the real `etcdctl`) and HTTP (`curl`) on one `https://` port, certificates made by rcgen.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::certs::TestCa;
use common::free_port;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
struct Certs {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A second client certificate, for the user `alice`.
    alice_cert: PathBuf,
    alice_key: PathBuf,
}

/// A CA, a server certificate for the loopback names, and client certificates for `root` and
/// `alice`, all from `common::certs`.
fn make_certs(dir: &Path) -> Certs {
    let ca = TestCa::new(dir, "metastore");
    let server = ca.issue("server", &["127.0.0.1", "localhost"]);
    let client = ca.issue("root", &[]);
    let alice = ca.issue("alice", &[]);
    Certs {
        ca: ca.cert,
        server_cert: server.cert,
        server_key: server.key,
        client_cert: client.cert,
        client_key: client.key,
        alice_cert: alice.cert,
        alice_key: alice.key,
    }
}

struct TlsServer {
    child: Child,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, certs: &Certs, extra: &[&str]) -> TlsServer {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["--name", "tls", "--engine", "memory"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &format!("https://127.0.0.1:{port}")])
        .args([
            "--advertise-client-urls",
            &format!("https://127.0.0.1:{port}"),
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .arg("--cert-file")
        .arg(&certs.server_cert)
        .arg("--key-file")
        .arg(&certs.server_key)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn metastore");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("metastore: serving client requests on ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("metastore did not start serving clients");
    TlsServer { child, port }
}

/// `curl` over TLS trusting the test CA; `(exit ok, stdout)`.
fn curl(server: &TlsServer, certs: &Certs, path: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(&certs.ca)
        .args(extra)
        .arg(format!("https://127.0.0.1:{}{path}", server.port))
        .output()
        .expect("curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `etcdctl` over TLS; `(exit ok, stdout + stderr)`.
fn etcdctl(server: &TlsServer, certs: &Certs, client_cert: bool, args: &[&str]) -> (bool, String) {
    let identity = client_cert.then_some((&certs.client_cert, &certs.client_key));
    etcdctl_with(server, certs, identity, args)
}

/// `etcdctl` over TLS presenting the client certificate and key `identity`, if any.
fn etcdctl_with(
    server: &TlsServer,
    certs: &Certs,
    identity: Option<(&PathBuf, &PathBuf)>,
    args: &[&str],
) -> (bool, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://127.0.0.1:{}", server.port))
        .arg(format!("--cacert={}", certs.ca.display()))
        .args(["--dial-timeout=3s", "--command-timeout=5s"]);
    if let Some((cert, key)) = identity {
        cmd.arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()));
    }
    let out = cmd.args(args).output().expect("etcdctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn grpc_and_http_share_one_tls_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(tmp.path());
    let server = start(tmp.path(), &certs, &[]);

    let (ok, out) = etcdctl(&server, &certs, false, &["put", "greeting", "hello"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&server, &certs, false, &["get", "greeting"]);
    assert!(ok && out == "greeting\nhello\n", "{out}");

    assert_eq!(
        curl(&server, &certs, "/health", &[]),
        (true, r#"{"health":"true","reason":""}"#.to_string())
    );
    let (ok, range) = curl(
        &server,
        &certs,
        "/v3/kv/range",
        &["-X", "POST", "-d", r#"{"key":"Z3JlZXRpbmc="}"#],
    );
    assert!(ok && range.contains(r#""value":"aGVsbG8=""#), "{range}");
    // Plain HTTP on the TLS port is refused (the handshake fails).
    let plain = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/health", server.port))
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&plain.stdout).is_empty());
}

#[test]
fn client_cert_auth_requires_a_certificate_from_the_trusted_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(tmp.path());
    let ca = certs.ca.display().to_string();
    let server = start(
        tmp.path(),
        &certs,
        &["--trusted-ca-file", &ca, "--client-cert-auth"],
    );

    let (ok, out) = etcdctl(&server, &certs, false, &["get", "k"]);
    assert!(!ok, "a client without a certificate got through: {out}");
    let (ok, out) = etcdctl(&server, &certs, true, &["put", "k", "v"]);
    assert!(ok, "{out}");

    let (ok, _) = curl(&server, &certs, "/health", &[]);
    assert!(!ok, "curl without a client certificate got through");
    let client_cert = certs.client_cert.display().to_string();
    let client_key = certs.client_key.display().to_string();
    assert_eq!(
        curl(
            &server,
            &certs,
            "/health",
            &["--cert", &client_cert, "--key", &client_key]
        ),
        (true, r#"{"health":"true","reason":""}"#.to_string())
    );
}

#[test]
fn an_https_url_without_certificates_is_refused_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_metastore"))
        .args(["--name", "tls", "--engine", "memory"])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--listen-client-urls", "https://127.0.0.1:0"])
        .args(["--listen-peer-urls", "http://127.0.0.1:0"])
        .output()
        .expect("metastore");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TLS key/cert (--cert-file, --key-file) must be provided"),
        "{stderr}"
    );
}

#[test]
fn the_client_certificate_names_the_user_when_auth_is_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(tmp.path());
    let ca = certs.ca.display().to_string();
    let server = start(
        tmp.path(),
        &certs,
        &[
            "--trusted-ca-file",
            &ca,
            "--client-cert-auth",
            "--bcrypt-cost",
            "4",
        ],
    );
    let root = Some((&certs.client_cert, &certs.client_key));
    let alice = Some((&certs.alice_cert, &certs.alice_key));
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "app/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "reader"],
        &["auth", "enable"],
    ] {
        let (ok, out) = etcdctl_with(&server, &certs, root, args);
        assert!(ok, "etcdctl {args:?}: {out}");
    }
    // No token: the certificate's common name is the user (etcd's AuthInfoFromTLS).
    let (ok, out) = etcdctl_with(&server, &certs, root, &["put", "app/x", "1"]);
    assert!(ok, "root by certificate may write: {out}");
    let (ok, out) = etcdctl_with(
        &server,
        &certs,
        alice,
        &["get", "app/x", "--print-value-only"],
    );
    assert!(
        ok && out.trim() == "1",
        "alice by certificate may read: {out}"
    );
    let (ok, out) = etcdctl_with(&server, &certs, alice, &["put", "app/x", "2"]);
    assert!(
        !ok && out.contains("permission denied"),
        "alice may not write: {out}"
    );
    let (ok, out) = etcdctl_with(&server, &certs, alice, &["user", "list"]);
    assert!(
        !ok && out.contains("permission denied"),
        "alice is not root: {out}"
    );
    // A token wins over the certificate.
    let (ok, out) = etcdctl_with(
        &server,
        &certs,
        alice,
        &["--user", "root:rootpw", "put", "app/x", "3"],
    );
    assert!(ok, "a root token on alice's connection: {out}");
    let (ok, out) = etcdctl_with(
        &server,
        &certs,
        alice,
        &["--user", "alice:wrong", "get", "app/x"],
    );
    assert!(!ok && out.contains("authentication failed"), "{out}");
}
