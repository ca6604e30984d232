//! A run's trace: what happened, when (simulated time), in order. Two runs of one seed must produce
//! the same trace; its hash is the cheap way to compare them.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// A shared, append-only trace.
#[derive(Clone, Default)]
pub struct Trace {
    lines: Arc<Mutex<Vec<String>>>,
    start: Option<std::time::Instant>,
}

impl Trace {
    /// An empty trace whose clock starts now (simulated time). It becomes this thread's current
    /// trace, which [`run_twice`] prints when a run fails.
    pub fn new() -> Self {
        let trace = Self {
            lines: Arc::default(),
            start: Some(std::time::Instant::now()),
        };
        CURRENT.with(|c| *c.borrow_mut() = Some(trace.lines.clone()));
        trace
    }

    /// Record one event, stamped with simulated time since the start.
    pub fn record(&self, event: impl AsRef<str>) {
        let at = self.start.map(|s| s.elapsed().as_micros()).unwrap_or(0);
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{at:>12}us {}", event.as_ref()));
    }

    /// Every recorded line.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A hash of the whole trace (stable within one build).
    pub fn digest(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.lines().hash(&mut h);
        h.finish()
    }
}

thread_local! {
    /// The trace of the run on this thread (madsim runs a simulation on one thread).
    static CURRENT: std::cell::RefCell<Option<Arc<Mutex<Vec<String>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// The seeds a test covers: `METASTORE_SIM_SEEDS=a,b,c` if set, else `default`.
pub fn seeds(default: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    match std::env::var("METASTORE_SIM_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => default.collect(),
    }
}

/// Run seed `seed` twice with `run` (which returns the trace's digest and lines) and assert both
/// runs traced the same; a failure prints the command-line seed that replays it. With
/// `METASTORE_SIM_PRINT_TRACE` set the trace is printed. Returns the first run's lines.
pub fn run_twice(seed: u64, run: impl Fn(u64) -> (u64, Vec<String>)) -> Vec<String> {
    let first_run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed)));
    let (first, lines) = match first_run {
        Ok(traced) => traced,
        Err(panic) => {
            if std::env::var_os("METASTORE_SIM_PRINT_TRACE").is_some() {
                let lines = CURRENT.with(|c| {
                    c.borrow()
                        .as_ref()
                        .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
                        .unwrap_or_default()
                });
                eprintln!("seed {seed} trace up to the failure:\n{}", lines.join("\n"));
            }
            eprintln!(
                "seed {seed} failed; replay it with:\n  METASTORE_SIM_SEEDS={seed} \
                 METASTORE_SIM_PRINT_TRACE=1 RUSTFLAGS=\"--cfg madsim\" cargo test --release \
                 --manifest-path sim/Cargo.toml{}",
                enabled_bug_features()
            );
            std::panic::resume_unwind(panic);
        }
    };
    if std::env::var_os("METASTORE_SIM_PRINT_TRACE").is_some() {
        println!("seed {seed} trace:\n{}", lines.join("\n"));
    }
    let (second, _) = run(seed);
    assert_eq!(
        first,
        second,
        "seed {seed}: two runs diverged; replay with METASTORE_SIM_SEEDS={seed}\n{}",
        lines.join("\n")
    );
    lines
}

/// The `--features` flag of the deliberately broken build this is, if it is one.
fn enabled_bug_features() -> &'static str {
    if cfg!(feature = "sim-bug-stale-read") {
        " --features sim-bug-stale-read"
    } else if cfg!(feature = "sim-bug-early-ack") {
        " --features sim-bug-early-ack"
    } else {
        ""
    }
}
