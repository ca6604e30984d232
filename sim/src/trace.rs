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
    /// An empty trace whose clock starts now (simulated time).
    pub fn new() -> Self {
        Self {
            lines: Arc::default(),
            start: Some(std::time::Instant::now()),
        }
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
