//! KV requests from raw bytes, through the server's own validation and apply path, one store per
//! input. Each frame is one request: 0 Range, 1 Put, 2 DeleteRange, 3 Txn (any nesting),
//! 4 Compaction; 5..=13 Auth, Lock and Election requests, which are decoded and must re-encode to
//! the same message; 14 a Txn and 15 a Put straight to apply, unvalidated (a committed command
//! need not have passed this member's edge: apply must be total and atomic on its own).
//!
//! Properties: a request the validator or apply rejects leaves the store exactly as it was, on
//! disk and in memory (key index, leases, pending events); an accepted one keeps the MVCC
//! invariants, moves the revision forward by at most one, and a compaction never changes what the
//! current revision reads; after every request a reopen from the engine rebuilds the same state.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metastore::api::validate;
use metastore::apply::{self, Applied};
use metastore::limits::MAX_TXN_OPS_DEFAULT;
use metastore::pb::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, CompactionRequest, DeleteRangeRequest,
    PutRequest, RangeRequest, TxnRequest,
};
use metastore::pb::metastore::{command::Op, Command};
use metastore::pb::v3electionpb::{CampaignRequest, ProclaimRequest};
use metastore::pb::v3lockpb::{LockRequest, UnlockRequest};
use metastore_fuzz::{Frames, Store};
use prost::Message;

/// Decoded messages must encode back to a message that decodes the same.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(msg) = M::decode(bytes) {
        let again = M::decode(msg.encode_to_vec().as_slice()).expect("re-encoded message decodes");
        assert_eq!(msg, again);
    }
}

fn write(store: &mut Store, op: Op) {
    let before = store.digest();
    let head = store.mvcc.current_revision();
    let is_compaction = matches!(op, Op::Compaction(_));
    let visible = store.live();
    match store.apply(Command {
        op: Some(op),
        ..Default::default()
    }) {
        Err(_) => assert_eq!(
            store.digest(),
            before,
            "a rejected request changed the store"
        ),
        Ok(applied) => {
            let rev = store.mvcc.current_revision();
            assert!(rev == head || rev == head + 1, "revision {head} -> {rev}");
            let header = match &applied {
                Applied::Put(r) => r.header.as_ref(),
                Applied::DeleteRange(r) => r.header.as_ref(),
                Applied::Txn(r) => r.header.as_ref(),
                Applied::Compaction(r) => r.header.as_ref(),
                _ => None,
            };
            if let Some(h) = header {
                assert_eq!(h.revision, rev, "header revision is the store's");
            }
            if is_compaction {
                assert_eq!(
                    store.live(),
                    visible,
                    "compaction changed the current state"
                );
            }
        }
    }
    store.check_invariants();
    store.check_reopen();
}

fuzz_target!(|data: &[u8]| {
    let mut store = Store::new();
    for (tag, bytes) in Frames::new(data).take(64) {
        match tag % 16 {
            0 => {
                let Ok(req) = RangeRequest::decode(bytes) else {
                    continue;
                };
                if validate::range(&req).is_err() {
                    continue;
                }
                let before = store.digest();
                if let Ok(resp) = apply::range(&store.mvcc, &req) {
                    assert!(resp.count >= resp.kvs.len() as i64);
                    if req.limit > 0 {
                        assert!(resp.kvs.len() as i64 <= req.limit);
                    }
                    if req.count_only {
                        assert!(resp.kvs.is_empty());
                    }
                }
                assert_eq!(store.digest(), before, "a range changed the store");
            }
            1 => {
                let Ok(req) = PutRequest::decode(bytes) else {
                    continue;
                };
                if validate::put(&req).is_ok() {
                    write(&mut store, Op::Put(req));
                }
            }
            2 => {
                let Ok(req) = DeleteRangeRequest::decode(bytes) else {
                    continue;
                };
                if validate::delete_range(&req).is_ok() {
                    write(&mut store, Op::DeleteRange(req));
                }
            }
            3 => {
                let Ok(req) = TxnRequest::decode(bytes) else {
                    continue;
                };
                if validate::txn(&req, MAX_TXN_OPS_DEFAULT).is_ok() {
                    write(&mut store, Op::Txn(req));
                }
            }
            4 => {
                let Ok(req) = CompactionRequest::decode(bytes) else {
                    continue;
                };
                write(&mut store, Op::Compaction(req));
            }
            5 => round_trip::<AuthenticateRequest>(bytes),
            6 => round_trip::<AuthUserAddRequest>(bytes),
            7 => round_trip::<AuthRoleAddRequest>(bytes),
            8 => round_trip::<AuthRoleGrantPermissionRequest>(bytes),
            9 => round_trip::<AuthUserGrantRoleRequest>(bytes),
            10 => round_trip::<LockRequest>(bytes),
            11 => round_trip::<UnlockRequest>(bytes),
            12 => round_trip::<CampaignRequest>(bytes),
            13 => round_trip::<ProclaimRequest>(bytes),
            14 => {
                if let Ok(req) = TxnRequest::decode(bytes) {
                    write(&mut store, Op::Txn(req));
                }
            }
            _ => {
                if let Ok(req) = PutRequest::decode(bytes) {
                    write(&mut store, Op::Put(req));
                }
            }
        }
    }
});
