//! The JSON gateway in the differential test: the requests that have a gateway route go as
//! `POST /v3/...` with the request's JSON (as etcd's grpc-gateway reads it) to both servers, and
//! the answers are compared as they are written: HTTP status and the parsed JSON body, an error's
//! `{"error", "code", "message"}` included. Sent with `curl` (the Debian package), one process a
//! request.

use std::time::Duration;

use serde_json::Value;

use crate::auth::AuthReq;
use crate::exec::Out;
use crate::generate::Req;

/// The gateway path and JSON body of `req`, if it goes through the gateway. Streams (watch,
/// keep-alive), the requests whose answers need masks of their own (status, member list, hashes,
/// lease time-to-live and lists, defragment, move-leader) and requests holding an enum value that
/// has no name (JSON names enum values) stay on gRPC.
pub fn route(req: &Req) -> Option<(&'static str, String)> {
    let (path, body) = route_of(req)?;
    Some((path, body?))
}

fn json<T: serde::Serialize>(msg: &T) -> Option<String> {
    serde_json::to_string(msg).ok()
}

fn route_of(req: &Req) -> Option<(&'static str, Option<String>)> {
    use metastore::pb::etcdserverpb as pb;
    let empty = || Some("{}".to_string());
    Some(match req {
        Req::Range(r) => ("/v3/kv/range", json(r)),
        Req::Put(r) => ("/v3/kv/put", json(r)),
        Req::DeleteRange(r) => ("/v3/kv/deleterange", json(r)),
        Req::Txn(r) => ("/v3/kv/txn", json(r)),
        Req::Compact(r) => ("/v3/kv/compaction", json(r)),
        Req::LeaseGrant(r) => ("/v3/lease/grant", json(r)),
        Req::LeaseRevoke(r) => ("/v3/lease/revoke", json(r)),
        Req::AlarmGet => ("/v3/maintenance/alarm", json(&pb::AlarmRequest::default())),
        Req::Auth(a) => match a {
            AuthReq::Enable => ("/v3/auth/enable", empty()),
            AuthReq::Disable => ("/v3/auth/disable", empty()),
            AuthReq::Status => ("/v3/auth/status", empty()),
            AuthReq::Authenticate(r) => ("/v3/auth/authenticate", json(r)),
            AuthReq::Logout => return None,
            AuthReq::UserAdd(r) => ("/v3/auth/user/add", json(r)),
            AuthReq::UserGet(r) => ("/v3/auth/user/get", json(r)),
            AuthReq::UserList => ("/v3/auth/user/list", empty()),
            AuthReq::UserDelete(r) => ("/v3/auth/user/delete", json(r)),
            AuthReq::UserChangePassword(r) => ("/v3/auth/user/changepw", json(r)),
            AuthReq::UserGrantRole(r) => ("/v3/auth/user/grant", json(r)),
            AuthReq::UserRevokeRole(r) => ("/v3/auth/user/revoke", json(r)),
            AuthReq::RoleAdd(r) => ("/v3/auth/role/add", json(r)),
            AuthReq::RoleGet(r) => ("/v3/auth/role/get", json(r)),
            AuthReq::RoleList => ("/v3/auth/role/list", empty()),
            AuthReq::RoleDelete(r) => ("/v3/auth/role/delete", json(r)),
            AuthReq::RoleGrantPermission(r) => ("/v3/auth/role/grant", grant_json(r)),
            AuthReq::RoleRevokePermission(r) => ("/v3/auth/role/revoke", json(r)),
        },
        Req::Lock(r) => ("/v3/lock/lock", json(r)),
        Req::Unlock(r) => ("/v3/lock/unlock", json(r)),
        Req::Campaign(r) => ("/v3/election/campaign", json(r)),
        Req::Proclaim(r) => ("/v3/election/proclaim", json(r)),
        Req::Leader(r) => ("/v3/election/leader", json(r)),
        Req::Resign(r) => ("/v3/election/resign", json(r)),
        _ => return None,
    })
}

/// A grant's JSON; a permission type without a name goes as its number, as etcd's gateway takes
/// it (the generated serializer has no way to write it).
fn grant_json(r: &metastore::pb::etcdserverpb::AuthRoleGrantPermissionRequest) -> Option<String> {
    if let Some(text) = json(r) {
        return Some(text);
    }
    let number = r.perm.as_ref()?.perm_type;
    let mut named = r.clone();
    named.perm.as_mut()?.perm_type = 1;
    let mut value = serde_json::to_value(&named).ok()?;
    value["perm"]["permType"] = number.into();
    Some(value.to_string())
}

/// POST `body` to `base` + `path` (with `token` in the `Authorization` header etcd's gateway
/// reads); the HTTP status and the body parsed as JSON (a body that is not JSON is kept as a
/// string), or `None` if no answer came within `timeout`.
pub async fn post(
    base: &str,
    path: &str,
    body: String,
    token: Option<String>,
    timeout: Duration,
) -> Option<(u16, Value)> {
    let url = format!("{base}{path}");
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-X", "POST", "--data-binary", "@-"])
            .args(["-H", "Content-Type: application/json"])
            .args(["-m", &timeout.as_secs().to_string()])
            .args(["-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: {t}")]);
        }
        let mut child = cmd
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl (Debian package curl)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("request body");
        let out = child.wait_with_output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        let status: u16 = code.trim().parse().ok().filter(|c| *c != 0)?;
        let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into()));
        Some((status, value))
    })
    .await
    .expect("curl thread")
}

/// A successful gateway answer to a request whose answer steers the generator (Lock, Unlock,
/// Campaign, Proclaim, Resign) as the gRPC answer it stands for; any other answer as it is.
pub fn typed(req: &Req, out: &Out) -> Out {
    fn read<T: serde::de::DeserializeOwned>(body: &Value, f: impl FnOnce(T) -> Out) -> Out {
        match serde_json::from_value(body.clone()) {
            Ok(msg) => f(msg),
            Err(e) => panic!("a gateway answer that is not its message ({e}): {body}"),
        }
    }
    let Out::Json { status: 200, body } = out else {
        return out.clone();
    };
    match req {
        Req::Lock(_) => read(body, Out::Lock),
        Req::Unlock(_) => read(body, Out::Unlock),
        Req::Campaign(_) => read(body, Out::Campaign),
        Req::Proclaim(_) => read(body, Out::Proclaim),
        Req::Resign(_) => read(body, Out::Resign),
        _ => out.clone(),
    }
}

/// Mask what may differ in a gateway answer, in place: every `header`'s `cluster_id`,
/// `member_id` and `raft_term` become "1" when present (the gateway omits zeros, and prints
/// 64-bit integers as strings), and a login's `token` becomes "masked".
pub fn mask(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(h)) = map.get_mut("header") {
                for field in ["cluster_id", "member_id", "raft_term"] {
                    if let Some(x) = h.get_mut(field) {
                        *x = Value::String("1".into());
                    }
                }
            }
            if let Some(Value::String(t)) = map.get_mut("token") {
                if !t.is_empty() {
                    *t = "masked".into();
                }
            }
            for (_, x) in map.iter_mut() {
                mask(x);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask),
        _ => {}
    }
}

/// The top-level header's revision of a gateway answer (0 if none).
pub fn revision(v: &Value) -> i64 {
    match &v["header"]["revision"] {
        Value::String(s) => s.parse().unwrap_or_default(),
        Value::Number(n) => n.as_i64().unwrap_or_default(),
        _ => 0,
    }
}
