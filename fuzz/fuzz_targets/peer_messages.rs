//! What a peer can send, from raw bytes, decoded the way the `Peer` service decodes it.
//! Frames: 0 AppendEntries request (its commands then applied as the state machine applies log
//! entries), 1 Vote request, 2 snapshot header, 3 snapshot chunk (staged into an engine),
//! 4 a replication-stream response, 5 a log entry, 6 a backup file (restored into an engine).
//!
//! Properties: no input panics; what decodes re-encodes stably; a command that apply rejects
//! changes nothing; a chunk that is refused stages nothing; a backup that is refused writes
//! nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metastore::pb::metastore::Command;
use metastore::raft::network::SnapshotHeader;
use metastore::raft::{backup, snapshot, Entry, TypeConfig};
use metastore::storage::{Engine, Keyspace, MemoryEngine};
use metastore_fuzz::{Frames, Store};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult, VoteRequest};
use openraft::EntryPayload;
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};

/// If `bytes` decode as `T`, encoding is stable: decode(encode(x)) encodes to the same bytes.
fn stable<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = postcard::from_bytes(bytes).ok()?;
    let once = postcard::to_stdvec(&value).expect("a decoded value encodes");
    let again: T = postcard::from_bytes(&once).expect("an encoded value decodes");
    assert_eq!(postcard::to_stdvec(&again).expect("encodes"), once);
    Some(value)
}

fn is_empty(engine: &MemoryEngine) -> bool {
    Keyspace::ALL.iter().all(|ks| {
        let mut empty = true;
        engine
            .scan(*ks, &[], None, &mut |_, _| {
                empty = false;
                false
            })
            .expect("scan");
        empty
    })
}

fuzz_target!(|data: &[u8]| {
    let mut store = Store::new();
    for (tag, bytes) in Frames::new(data).take(32) {
        match tag % 8 {
            0 => {
                let Some(req) = stable::<AppendEntriesRequest<TypeConfig>>(bytes) else {
                    continue;
                };
                for entry in req.entries {
                    let EntryPayload::Normal(cmd) = entry.payload else {
                        continue;
                    };
                    let Ok(cmd) = Command::decode(cmd.bytes.as_slice()) else {
                        continue;
                    };
                    let before = store.digest();
                    if store.apply(cmd).is_err() {
                        assert_eq!(
                            store.digest(),
                            before,
                            "a rejected command changed the store"
                        );
                    }
                    store.check_invariants();
                }
            }
            1 => {
                stable::<VoteRequest<TypeConfig>>(bytes);
            }
            2 => {
                stable::<SnapshotHeader>(bytes);
            }
            3 => {
                let engine = MemoryEngine::new();
                match snapshot::stage(&engine, bytes) {
                    Err(_) => assert!(is_empty(&engine), "a refused chunk staged something"),
                    Ok(records) => {
                        let decoded = snapshot::decode_chunk(bytes).expect("staged, so it decodes");
                        assert_eq!(records, decoded.len());
                        assert!(decoded
                            .iter()
                            .all(|(ks, _, _)| matches!(ks, Keyspace::Meta | Keyspace::Kv)));
                    }
                }
            }
            4 => {
                stable::<Result<StreamAppendResult<TypeConfig>, String>>(bytes);
            }
            5 => {
                stable::<Entry>(bytes);
            }
            6 => {
                let engine = MemoryEngine::new();
                if backup::restore(&engine, std::io::Cursor::new(bytes)).is_err() {
                    assert!(is_empty(&engine), "a refused backup wrote something");
                }
            }
            _ => {}
        }
    }
});
