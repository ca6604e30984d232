//! The gateway's routes, request parsing and response writing, against what etcd 3.4 and 3.5
//! answer.

use super::*;
use crate::pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcdserverpb::{request_op, Compare, RequestOp, ResponseHeader};
use crate::pb::etcdserverpb::{PutResponse, RangeResponse};
use crate::pb::mvccpb::KeyValue;

#[test]
fn a_permission_type_etcd_does_not_know_is_read_as_its_number() {
    // etcd 3.5.1's gateway (asked with curl) takes `"permType": 3` and stores 3.
    let grant =
        |body: &str| match AuthRequest::parse(AuthRoute::RoleGrantPermission, body.as_bytes()) {
            Ok(AuthRequest::RoleGrantPermission(r)) => r,
            other => panic!("{body}: {other:?}"),
        };
    let perm = |body: &str| grant(body).perm.expect("a permission");
    assert_eq!(
        perm(r#"{"name":"r","perm":{"permType":3,"key":"YQ=="}}"#).perm_type,
        3
    );
    assert_eq!(perm(r#"{"name":"r","perm":{"perm_type":9}}"#).perm_type, 9);
    let known = perm(r#"{"name":"r","perm":{"permType":"READWRITE","key":"YQ=="}}"#);
    assert_eq!((known.perm_type, known.key), (2, b"a".to_vec()));
    assert_eq!(perm(r#"{"name":"r","perm":{"permType":1}}"#).perm_type, 1);
    assert_eq!(grant(r#"{"name":"r"}"#).perm, None);
    assert!(AuthRequest::parse(AuthRoute::RoleGrantPermission, b"{\"name\":").is_err());
}

#[test]
fn a_permission_type_etcd_does_not_know_prints_as_its_number() {
    use crate::pb::authpb::Permission;
    let perm = |perm_type: i32, key: &[u8]| Permission {
        perm_type,
        key: key.to_vec(),
        range_end: Vec::new(),
    };
    let resp = AuthRoleGetResponse {
        header: None,
        perm: vec![perm(2, b"a"), perm(7, b"b"), perm(1, b"c")],
    };
    let json: serde_json::Value = serde_json::from_slice(&resp.json()).expect("JSON");
    let types: Vec<_> = json["perm"]
        .as_array()
        .expect("perms")
        .iter()
        .map(|p| p["permType"].clone())
        .collect();
    assert_eq!(
        types,
        [serde_json::json!("READWRITE"), 7.into(), "WRITE".into()]
    );
    assert_eq!(json["perm"][1]["key"], "Yg==", "the rest as usual");
    // Known types only: the generated serializer's own output.
    let known = AuthRoleGetResponse {
        header: None,
        perm: vec![perm(2, b"a")],
    };
    assert_eq!(known.json(), to_json(&known));
}

#[test]
fn routes_follow_etcd_3_4() {
    assert_eq!(route("/v3/kv/range"), Some(Route::Range));
    assert_eq!(route("/v3beta/kv/put"), Some(Route::Put));
    assert_eq!(route("/v3/kv/lease/revoke"), Some(Route::LeaseRevoke));
    assert_eq!(route("/v3/lease/timetolive"), Some(Route::LeaseTimeToLive));
    assert_eq!(route("/v3alpha/kv/range"), None);
    assert_eq!(route("/v3/kv/range/"), None);
    assert!(under_prefix("/v3/nothing") && !under_prefix("/metrics"));
    assert_eq!(
        route("/v3/auth/user/changepw"),
        Some(Route::Auth(AuthRoute::UserChangePassword))
    );
    assert_eq!(
        route("/v3beta/auth/role/revoke"),
        Some(Route::Auth(AuthRoute::RoleRevokePermission))
    );
    assert_eq!(route("/v3/maintenance/hash"), Some(Route::Hash));
    assert_eq!(route("/v3/maintenance/hashkv"), Some(Route::HashKv));
    assert_eq!(route("/v3/maintenance/downgrade"), Some(Route::Downgrade));
    for r in ALL_ROUTES {
        let path = ROUTES
            .iter()
            .chain(&AuthRoute::ALL.map(|(p, a)| (p, Route::Auth(a))))
            .find(|(_, x)| *x == r)
            .map(|(p, _)| *p);
        let path = path.unwrap_or_else(|| panic!("{r:?} has no path"));
        assert_eq!(route(&format!("/v3/{path}")), Some(r));
    }
}

#[test]
fn responses_are_written_as_etcd_writes_them() {
    // Captured from etcd 3.4.23's gateway.
    let header = Some(ResponseHeader {
        cluster_id: 14841639068965178418,
        member_id: 10276657743932975437,
        revision: 2,
        raft_term: 2,
    });
    let put = PutResponse {
        header,
        prev_kv: None,
    };
    assert_eq!(
        String::from_utf8(to_json(&put)).unwrap(),
        r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"2","raft_term":"2"}}"#
    );
    let range = RangeResponse {
        header,
        kvs: vec![KeyValue {
            key: b"foo".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b"bar".to_vec(),
            lease: 0,
        }],
        more: false,
        count: 1,
    };
    assert_eq!(
        String::from_utf8(to_json(&range)).unwrap(),
        r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
    );
}

#[test]
fn requests_parse_as_etcds_gateway_parses_them() {
    // Both name forms, numbers or strings for int64, enum names, unknown fields, trailing
    // bytes after the first value.
    let body = br#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"0","result":"EQUAL"}],"success":[{"request_put":{"key":"Zm9v","value":"YmFy"}}],"failure":[{"requestRange":{"key":"Zm9v","limit":5}}],"bogus":1} trailing"#;
    let GatewayRequest::Txn(txn) = parse(Route::Txn, body).unwrap() else {
        panic!("a txn");
    };
    assert_eq!(
        txn.compare,
        vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: b"foo".to_vec(),
            range_end: vec![],
            target_union: Some(TargetUnion::CreateRevision(0)),
        }]
    );
    assert!(matches!(
        &txn.success[0],
        RequestOp { request: Some(request_op::Request::RequestPut(p)) } if p.value == b"bar"
    ));
    assert!(matches!(
        &txn.failure[0],
        RequestOp { request: Some(request_op::Request::RequestRange(r)) } if r.limit == 5
    ));
    assert_eq!(
        parse(Route::Range, b"").unwrap(),
        GatewayRequest::Range(RangeRequest::default())
    );
    assert_eq!(
        parse(Route::Range, br#"{"key":"#),
        Err(GatewayError::UnexpectedEof)
    );
    assert_eq!(
        parse(Route::Range, br#"{"key":"@@"}"#),
        Err(GatewayError::BadJson(
            "illegal base64 data at input byte 0".into()
        ))
    );
    assert!(matches!(
        parse(Route::Range, b"[1]"),
        Err(GatewayError::BadJson(_))
    ));
    let GatewayRequest::Watch(w) = parse(
        Route::Watch,
        b"{\"create_request\":{\"key\":\"Zm9v\"}}\n{\"cancel_request\":{\"watch_id\":\"1\"}}",
    )
    .unwrap() else {
        panic!("a watch");
    };
    assert_eq!(w.len(), 2);
}
