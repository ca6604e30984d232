//! The Go JSON checks against what etcd 3.5.1's gateway answered.

use super::*;
use crate::pb::etcdserverpb::{RangeRequest, TxnRequest, WatchRequest};

fn range(body: &str) -> Option<String> {
    explain::<RangeRequest>(body.as_bytes())
}

/// Each text is what etcd 3.5.1's gateway answered for the same body on `/v3/kv/range`
/// (or `/v3/kv/txn`, `/v3/watch`).
#[test]
fn refusals_are_worded_as_etcds_gateway_words_them() {
    let cases = [
        ("nul", "unexpected EOF"),
        (r#"{"key":"YQ==""#, "unexpected EOF"),
        (
            r#"{"key":"YQ==",}"#,
            "invalid character '}' looking for beginning of object key string",
        ),
        (
            "nulx",
            "invalid character 'x' in literal null (expecting 'l')",
        ),
        (
            r#"{"key" "YQ=="}"#,
            "invalid character '\"' after object key",
        ),
        (
            r#"{"key":"YQ==" "limit":1}"#,
            "invalid character '\"' after object key:value pair",
        ),
        (
            r#"{"key":5}"#,
            "json: cannot unmarshal number into Go value of type []uint8",
        ),
        (
            "[1]",
            "json: cannot unmarshal array into Go value of type map[string]json.RawMessage",
        ),
        (
            r#"{"limit":"x"}"#,
            "invalid character 'x' looking for beginning of value",
        ),
        (
            r#"{"limit":1.5}"#,
            "json: cannot unmarshal number 1.5 into Go value of type int64",
        ),
        (
            r#"{"sort_order":"BOGUS"}"#,
            r#"unknown value "\"BOGUS\"" for enum etcdserverpb.RangeRequest.SortOrder"#,
        ),
        (
            r#"{"keys_only":"true"}"#,
            "json: cannot unmarshal string into Go value of type bool",
        ),
        (
            r#"{"limit":"1 2"}"#,
            "invalid character '2' after top-level value",
        ),
        (r#"{"limit":""}"#, "unexpected end of JSON input"),
        (
            "{\"key\":\"a\nb\"}",
            "invalid character '\\n' in string literal",
        ),
        (
            r#"{"revision":"0."}"#,
            "invalid character ' ' after decimal point in numeric literal",
        ),
        (
            r#"{"revision":"tru"}"#,
            "invalid character ' ' in literal true (expecting 'e')",
        ),
        (
            r#"{"sort_order":1.5}"#,
            "json: cannot unmarshal number 1.5 into Go value of type protoreflect.EnumNumber",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(range(body).as_deref(), Some(expected), "{body}");
    }
    // Go's base64 offsets (etcd 3.5.1's answers in `tests/gateway_errors.rs` campaigns).
    for (key, at) in [
        ("YQ=", 3),
        ("DESCEND", 4),
        ("Yg==-", 4),
        ("-3", 0),
        ("x", 0),
    ] {
        assert_eq!(
            range(&format!(r#"{{"key":"{key}"}}"#)),
            Some(format!("illegal base64 data at input byte {at}")),
            "{key}"
        );
    }
    assert_eq!(range(r#"{"key":"YQ\r\n=="}"#), None, "newlines are skipped");
    // Field order, not input order: `key` (field 1) is reported before `limit` (3).
    assert_eq!(
        range(r#"{"limit":true,"key":5}"#).as_deref(),
        Some("json: cannot unmarshal number into Go value of type []uint8")
    );
    assert_eq!(
        explain::<TxnRequest>(br#"{"success":{}}"#).as_deref(),
        Some("json: cannot unmarshal object into Go value of type []json.RawMessage")
    );
    assert_eq!(
        explain::<WatchRequest>(br#"{"create_request":{"filters":["NOPE"]}}"#).as_deref(),
        Some(r#"unknown value "\"NOPE\"" for enum etcdserverpb.WatchCreateRequest.FilterType"#)
    );
}

#[test]
fn well_formed_bodies_have_nothing_to_explain() {
    for body in [
        r#"{"key":"YQ==","limit":"10","sort_order":"DESCEND","keys_only":true}"#,
        r#"{"key":"YQ==","limit":10,"sort_order":2,"revision":null}"#,
        "null",
        r#"{"unknown":[1,{"a":"b"}]}"#,
    ] {
        assert_eq!(range(body), None, "{body}");
    }
}

#[test]
fn depth_is_bounded_without_recursion() {
    let deep = "[".repeat(GO_MAX_DEPTH + 1);
    assert_eq!(
        range(&deep).as_deref(),
        Some("invalid character '[' exceeded max depth")
    );
    let nested = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    assert!(range(&nested).unwrap().contains("array into Go value"));
}
