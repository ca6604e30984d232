//! Request bodies for etcd's JSON gateway, generated from well-formed ones by breaking their
//! syntax or giving a field a value of the wrong type, sent to etcd 3.5.1 and MetaStore alike:
//! both accept a body, or both refuse it with the same status and the same words (Go's JSON
//! scanner and golang/protobuf's jsonpb, which etcd's gateway parses with).

mod common;

use std::process::{Command, Stdio};

use common::etcd::Sequence;
use common::Server;

/// Bodies per run; `METASTORE_GATEWAY_ERROR_SEED` chooses another campaign.
const BODIES: usize = 400;

/// `(status, body)` of a POST of `body` to `http://{host}{path}`.
fn post(host: &str, path: &str, body: &[u8]) -> (u16, String) {
    use std::io::Write;
    let mut child = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-X", "POST", "--data-binary", "@-"])
        .arg(format!("http://{host}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl must be installed");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(body).expect("write the body");
    drop(stdin);
    let out = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (answer, code) = text.rsplit_once('\n').expect("a status code line");
    (code.parse().expect("a status code"), answer.to_string())
}

/// An answer with what differs between any two servers (ids, revisions, terms) left out.
fn comparable((code, body): (u16, String)) -> (u16, String) {
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(mut value) if code == 200 => {
            if let Some(object) = value.as_object_mut() {
                object.remove("header");
            }
            (code, value.to_string())
        }
        _ => (code, body),
    }
}

/// Values of the wrong type (or shape) for some field, and some of the right one.
const VALUES: &[&str] = &[
    "5",
    "1.5",
    "-1",
    "1e3",
    "99999999999",
    "99999999999999999999",
    "\"x\"",
    "\"\"",
    "\"1 2\"",
    "\"1.5\"",
    "\"12\"",
    "\"-3\"",
    "\"@@\"",
    "\"YQ=\"",
    "\"YWI\"",
    "\"YWI=\"",
    "\"BOGUS\"",
    "\"DESCEND\"",
    "\"MOD\"",
    "true",
    "false",
    "[]",
    "[1]",
    "{}",
    "{\"a\":1}",
    "null",
];

/// Bytes that break (or keep) a body's syntax when put somewhere in it.
const INSERTS: &[u8] = b"}{],[:\"x\n\\ 0-.e";

fn pick<'a, T>(seq: &mut Sequence, from: &'a [T]) -> &'a T {
    &from[seq.below(from.len() as u64) as usize]
}

/// A well-formed body for `path`: `(field, JSON value)` pairs.
fn well_formed(seq: &mut Sequence) -> (&'static str, Vec<(String, String)>) {
    let range_fields = |seq: &mut Sequence| {
        let mut fields = vec![("key".to_string(), "\"YQ==\"".to_string())];
        let optional: [(&str, &[&str]); 8] = [
            ("range_end", &["\"Yg==\"", "\"AA==\""]),
            ("limit", &["\"10\"", "3", "0"]),
            ("revision", &["\"0\"", "0"]),
            ("sort_order", &["\"DESCEND\"", "\"ASCEND\"", "1"]),
            ("sort_target", &["\"KEY\"", "\"MOD\"", "2"]),
            ("keys_only", &["true", "false"]),
            ("count_only", &["false"]),
            ("serializable", &["true"]),
        ];
        for (name, values) in optional {
            if seq.below(3) == 0 {
                fields.push((name.to_string(), pick(seq, values).to_string()));
            }
        }
        fields
    };
    if seq.below(3) == 0 {
        let range: Vec<String> = range_fields(seq)
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        let compare = r#"{"key":"YQ==","target":"VERSION","result":"EQUAL","version":"0"}"#;
        let fields = vec![
            ("compare".to_string(), format!("[{compare}]")),
            (
                "success".to_string(),
                format!("[{{\"request_range\":{{{}}}}}]", range.join(",")),
            ),
        ];
        ("/v3/kv/txn", fields)
    } else {
        ("/v3/kv/range", range_fields(seq))
    }
}

fn body_of(fields: &[(String, String)]) -> Vec<u8> {
    let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", inner.join(",")).into_bytes()
}

/// A body for `path`, well-formed or broken one way.
fn generate(seq: &mut Sequence) -> (&'static str, Vec<u8>) {
    let (path, mut fields) = well_formed(seq);
    match seq.below(4) {
        // A field of the wrong type (or of the right one).
        0 | 1 => {
            let at = seq.below(fields.len() as u64) as usize;
            let mut value = pick(seq, VALUES).to_string();
            // An enum number etcd has no name for: its gateway keeps it, ours refuses it (one
            // of the differences README names).
            let is_enum = matches!(fields[at].0.as_str(), "sort_order" | "sort_target");
            if is_enum && value.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                value = "2".into();
            }
            fields[at].1 = value;
            (path, body_of(&fields))
        }
        // A byte put somewhere.
        2 => {
            let mut body = body_of(&fields);
            let at = seq.below(body.len() as u64 + 1) as usize;
            body.insert(at, *pick(seq, INSERTS));
            (path, body)
        }
        // Cut short.
        _ => {
            let body = body_of(&fields);
            let at = seq.below(body.len() as u64) as usize;
            (path, body[..at].to_vec())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_gateway_bodies_are_refused_in_etcds_words() {
    let data = tempfile::tempdir().expect("tempdir");
    let (etcd, _client) = common::etcd::start_reference(&data.path().join("e")).await;
    let server = Server::start("memory");
    let seed = std::env::var("METASTORE_GATEWAY_ERROR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261207);
    let mut seq = Sequence::new(seed);
    let (mut refused, mut differ) = (0, Vec::new());
    for i in 0..BODIES {
        let (path, body) = generate(&mut seq);
        let theirs = comparable(post(&etcd.endpoint, path, &body));
        let ours = comparable(post(server.host_port(), path, &body));
        if theirs.0 != 200 {
            refused += 1;
        }
        if ours != theirs {
            differ.push(format!(
                "#{i} {path} {}\n  etcd 3.5.1: {theirs:?}\n  metastore:  {ours:?}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {BODIES} bodies answered differently (seed {seed}):\n{}",
        differ.len(),
        differ.join("\n")
    );
    // The campaign must mostly exercise refusals, not pass on well-formed bodies alone.
    assert!(refused > BODIES / 3, "only {refused} of {BODIES} refused");
}
