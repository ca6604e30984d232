//! Lease requests from raw bytes, through validation and apply, mixed with puts that attach keys
//! to leases. Frames: 0 LeaseGrant, 1 LeaseRevoke, 2 LeaseCheckpoint, 3 Put (lease id taken from
//! the request), 4..=6 LeaseKeepAlive / LeaseTimeToLive / LeaseLeases (decoded; they never reach
//! the log, so they must only decode and re-encode the same).
//!
//! Properties: a rejected request changes nothing; a key is only ever attached to a lease that
//! exists; a revoked lease leaves no key behind; the MVCC invariants hold throughout.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metastore::api::validate;
use metastore::pb::etcdserverpb::{
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
};
use metastore::pb::metastore::{command::Op, Command};
use metastore_fuzz::{Frames, Store};
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(msg) = M::decode(bytes) {
        assert_eq!(M::decode(msg.encode_to_vec().as_slice()).ok(), Some(msg));
    }
}

fn write(store: &mut Store, op: Op) -> bool {
    let before = store.digest();
    let applied = store.apply(Command {
        op: Some(op),
        ..Default::default()
    });
    if applied.is_err() {
        assert_eq!(
            store.digest(),
            before,
            "a rejected request changed the store"
        );
    }
    store.check_invariants();
    applied.is_ok()
}

fuzz_target!(|data: &[u8]| {
    let mut store = Store::new();
    for (tag, bytes) in Frames::new(data).take(64) {
        match tag % 8 {
            0 => {
                let Ok(mut req) = LeaseGrantRequest::decode(bytes) else {
                    continue;
                };
                if validate::lease_grant(&req).is_err() {
                    continue;
                }
                // The lease service picks an id for 0 before proposing.
                if req.id == 0 {
                    req.id = 1 + store.mvcc.current_revision();
                }
                let existed = store.mvcc.leases().contains(req.id);
                let granted = write(&mut store, Op::LeaseGrant(req));
                assert_eq!(
                    granted, !existed,
                    "grant of lease {} (existed: {existed})",
                    req.id
                );
                assert!(store.mvcc.leases().contains(req.id));
            }
            1 => {
                let Ok(req) = LeaseRevokeRequest::decode(bytes) else {
                    continue;
                };
                let existed = store.mvcc.leases().contains(req.id);
                let revoked = write(&mut store, Op::LeaseRevoke(req));
                assert_eq!(revoked, existed, "revoke of lease {}", req.id);
                assert!(!store.mvcc.leases().contains(req.id));
                if req.id != 0 {
                    assert!(
                        store.live().iter().all(|kv| kv.lease != req.id),
                        "a key outlived its revoked lease {}",
                        req.id
                    );
                }
            }
            2 => {
                let Ok(req) = LeaseCheckpointRequest::decode(bytes) else {
                    continue;
                };
                write(&mut store, Op::LeaseCheckpoint(req));
            }
            3 => {
                let Ok(req) = PutRequest::decode(bytes) else {
                    continue;
                };
                if validate::put(&req).is_err() {
                    continue;
                }
                let lease = req.lease;
                let lease_exists = lease == 0 || store.mvcc.leases().contains(lease);
                let put = write(&mut store, Op::Put(req));
                if put {
                    assert!(lease_exists, "a key attached to missing lease {lease}");
                }
            }
            4 => round_trip::<LeaseKeepAliveRequest>(bytes),
            5 => round_trip::<LeaseTimeToLiveRequest>(bytes),
            6 => round_trip::<LeaseLeasesRequest>(bytes),
            _ => {}
        }
        for kv in store.live() {
            assert!(
                kv.lease == 0 || store.mvcc.leases().contains(kv.lease),
                "key {:?} attached to lease {} that does not exist",
                kv.key,
                kv.lease
            );
        }
    }
});
