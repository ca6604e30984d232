//! MetaStore's deterministic simulation harness (madsim).
//!
//! Built only with `--cfg madsim` (see `scripts/test.sh`): then `tokio` and `tonic` inside MetaStore
//! are madsim's simulated ones, so the real server code runs on a simulated network, clock and
//! scheduler, and one seed reproduces one run exactly. Each member keeps its data in a
//! [`MemoryEngine`](metastore::storage::MemoryEngine) with a crash model: the harness owns it, so it
//! outlives a killed node, and a crash drops every write that was never synced.
//!
//! - [`chaos`]: the chaos scenario (swarm fault mix, nemesis, workloads, liveness phase, checks);
//! - [`cluster`]: simulated members and their disks;
//! - the checkers, which build without madsim so their unit tests run in the normal test suite:
//!   [`linearizability`], [`watches`], [`leases`], [`revisions`];
//! - [`trace`]: a run's trace, its hash, and running a seed twice.

#[cfg(madsim)]
pub mod chaos;
#[cfg(madsim)]
pub mod cluster;
pub mod leases;
pub mod linearizability;
pub mod revisions;
#[cfg(madsim)]
pub mod trace;
pub mod watches;
