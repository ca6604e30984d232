//! The process's memory allocator: mimalloc in a real build (many small, short-lived allocations
//! per request, protobuf messages and log entries, which it serves with less CPU than the system
//! allocator), the system's in simulation. The binary installs [`ALLOCATOR`] as its global
//! allocator and calls [`tune_allocator`] first thing.

/// The allocator type the binary installs.
#[cfg(not(madsim))]
pub type Allocator = mimalloc::MiMalloc;
/// The allocator type the binary installs.
#[cfg(madsim)]
pub type Allocator = std::alloc::System;

/// The allocator the binary installs (`#[global_allocator]`).
#[cfg(not(madsim))]
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;
/// The allocator the binary installs (`#[global_allocator]`).
#[cfg(madsim)]
pub const ALLOCATOR: Allocator = std::alloc::System;

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in mimalloc.h, v2 and v3 alike).
#[cfg(not(madsim))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays resident before mimalloc hands it back to the kernel. mimalloc 3
/// waits 1 s (mimalloc 2 waited 10 ms, 100 ms for arena memory), so the buffers of a burst of
/// large requests stayed in the member's RSS after they were answered. Measured after a flood of
/// large read-only txns (`tests/abuse.rs`): release build, +44-58 MiB with mimalloc's delay
/// against +17-33 MiB purging at once, which cost ~7% more CPU per put (decommit and recommit on
/// every burst); opt-level 0 build, +22-46 MiB against +5-23 MiB with this delay. What this
/// delay costs against mimalloc's (`scripts/bench-vs-etcd.sh`, release build, one run, 3 rounds
/// alternating, `MIMALLOC_PURGE_DELAY=1000` on the other): CPU per request put 47.5/59.5/69.0 µs
/// against 45.5/58.8/59.0, txn 55.0/67.0/69.7 against 52.0/60.0/61.5, serializable range
/// 34.3/33.2/39.7 against 35.3/31.7/33.6: a few percent, up to 12% on txns.
#[cfg(not(madsim))]
const ALLOCATOR_PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Set mimalloc's purge delay unless the operator set `MIMALLOC_PURGE_DELAY` (mimalloc read its
/// environment when the process loaded, so a default set now would never apply). Call it on the
/// main thread before any other thread exists; nothing to do in simulation.
pub fn tune_allocator() {
    #[cfg(not(madsim))]
    {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: `mi_option_set` stores one integer in mimalloc's option table; it is not
        // thread-safe, and the binary calls this on its main thread before any other thread
        // exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) }
    }
}
