//! Watch: fan-out of applied changes to watchers, and catch-up from storage for watchers behind.
//!
//! As in etcd, a watcher is either *synced* (at the head: the state machine hands it each new
//! revision's events as they are applied) or *unsynced* (behind: a catch-up task reads its missing
//! revisions from storage in bounded batches until it reaches the head, then it joins the synced
//! group). Every stream has one bounded channel; when it is full, a synced watcher drops back to
//! unsynced instead of blocking apply, so a slow reader never stalls writes or other watchers and
//! never grows memory beyond its channel. A revision's events always travel in one message.

mod hub;

pub use hub::{HubMessage, WatchHub, WatchSpec, WatcherKey};
