//! BUGGIFY: fault points inside the server that only the simulator turns on (FoundationDB's idea).
//!
//! A point is a named place where the server does something legal but unlikely: applies slowly,
//! answers a peer late, stalls a watch stream. In a normal build [`buggify`] is a constant `false`
//! and compiles away. In simulation, once the harness calls [`enable`] for a run, each point is
//! *active* in that run with probability [`ACTIVE_PERCENT`] (decided the first time it is reached)
//! and, when active, *fires* with probability [`FIRE_PERCENT`] each time it is reached. All draws
//! come from madsim's seeded generator, so a seed still replays exactly; which points were active
//! is recorded for the trace ([`active_points`]).

use std::time::Duration;

/// Chance (percent) that a point is active in a simulated run.
pub const ACTIVE_PERCENT: u64 = 25;

/// Chance (percent) that an active point fires each time it is reached.
pub const FIRE_PERCENT: u64 = 5;

#[cfg(madsim)]
mod state {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        // madsim runs a whole simulation on the thread that called `block_on`, so per-thread
        // state is per-run state (test threads running other seeds never see it).
        pub static POINTS: RefCell<Option<BTreeMap<&'static str, bool>>> = const { RefCell::new(None) };
        // Points a test made fire every time they are reached (see `force`).
        pub static FORCED: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }
}

/// Turn fault points on (with a fresh draw of which are active) or off for the simulation running
/// on this thread. Does nothing in a normal build.
pub fn enable(on: bool) {
    #[cfg(madsim)]
    {
        state::POINTS.with(|p| *p.borrow_mut() = on.then(Default::default));
        state::FORCED.with(|f| f.borrow_mut().clear());
    }
    #[cfg(not(madsim))]
    let _ = on;
}

/// Make `point` fire every time it is reached in the simulation running on this thread, until
/// [`enable`] is called again: for a test that needs one unlikely thing to happen for sure
/// (an apply slow enough that a read can arrive during it). Does nothing in a normal build.
pub fn force(point: &'static str) {
    #[cfg(madsim)]
    state::FORCED.with(|f| f.borrow_mut().push(point));
    #[cfg(not(madsim))]
    let _ = point;
}

/// Whether fault point `point` fires now. Always `false` in a normal build.
#[inline]
pub fn buggify(point: &'static str) -> bool {
    #[cfg(madsim)]
    {
        if state::FORCED.with(|f| f.borrow().contains(&point)) {
            return true;
        }
        state::POINTS.with(|p| {
            let mut points = p.borrow_mut();
            let Some(points) = points.as_mut() else {
                return false;
            };
            let active = *points
                .entry(point)
                .or_insert_with(|| madsim::rand::random::<u64>() % 100 < ACTIVE_PERCENT);
            active && madsim::rand::random::<u64>() % 100 < FIRE_PERCENT
        })
    }
    #[cfg(not(madsim))]
    {
        let _ = point;
        false
    }
}

/// The points reached so far in this run and whether each is active (empty in a normal build).
pub fn active_points() -> Vec<(&'static str, bool)> {
    #[cfg(madsim)]
    {
        state::POINTS.with(|p| {
            p.borrow()
                .as_ref()
                .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
                .unwrap_or_default()
        })
    }
    #[cfg(not(madsim))]
    Vec::new()
}

/// If `point` fires, sleep a random time below `max` on the seam's clock (a slow disk, a
/// descheduled task, a late packet).
pub async fn delay(point: &'static str, max: Duration) {
    if buggify(point) {
        let micros = max.as_micros().max(1) as u64;
        super::sleep(Duration::from_micros(super::random_u64() % micros)).await;
    }
}
