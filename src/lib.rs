//! MetaStore: a Raft-replicated, etcd-v3-compatible metadata store.
//!
//! Layers, top to bottom (a module imports only modules below it; see `DESIGN.md`):
//! `api` → `node` → `raft` → `apply` → `mvcc` → `storage`, with `rt` (the runtime seam), `pb`
//! (generated protos), `limits`, `config` and `metrics` (the registry every layer counts into)
//! underneath everything.

pub mod api;
pub mod apply;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod keys;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod mvcc;
pub mod net;
pub mod node;
pub mod pb;
pub mod raft;
pub mod rt;
pub mod storage;
pub mod watch;
