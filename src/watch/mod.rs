//! Watch: fan-out of applied changes to watchers, and catch-up from storage for watchers behind.
//!
//! As in etcd, a watcher is either *synced* (at the head: the state machine hands it each new
//! revision's events as they are applied) or *unsynced* (behind: a catch-up task reads the missing
//! revisions from storage, one bounded read per round for all the watchers behind, until each
//! reaches the head and joins the synced group). Watchers are found by key (`index.rs`), not by
//! visiting them all. Every stream has one buffer, bounded in messages and in bytes by its share of
//! one budget for all streams (`budget.rs`, `stream.rs`); when it is full, a synced watcher drops back to
//! unsynced instead of blocking apply, so a slow reader never stalls writes or other watchers and
//! never grows memory beyond its share. A revision's events always travel in one message.

mod budget;
mod hub;
mod index;
mod stream;

pub use budget::WatchBudget;
pub use hub::{AddError, Admission, WatchHub, WatchSpec};
pub use index::WatcherKey;
pub use stream::{HubMessage, StreamClosed, StreamPermit, StreamReceiver, StreamSender};
