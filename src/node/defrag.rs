//! Defragmentation, one at a time and shared: a `Defragment` call is answered by a
//! defragmentation that started after it arrived, so calls that arrive while one runs wait and are
//! all answered by the next. However many calls come at once, at most one runs and one more is
//! due; etcd runs every call's defragmentation in turn. The run belongs to the member, not to the
//! caller that started it: a caller that leaves neither stops it nor lets another start beside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::rt;
use crate::storage::SharedEngine;

/// The defragmentations of one member.
#[derive(Default)]
pub(super) struct Defrags {
    /// Defragmentations started so far (the number of the latest).
    started: AtomicU64,
    /// Held while one runs: the latest finished, by number, and how it went.
    finished: Arc<tokio::sync::Mutex<Finished>>,
}

struct Finished {
    number: u64,
    outcome: Result<(), String>,
}

impl Default for Finished {
    /// None has run yet (defragmentations are numbered from 1).
    fn default() -> Self {
        Self {
            number: 0,
            outcome: Ok(()),
        }
    }
}

impl Defrags {
    /// Defragment `engine`, or share a defragmentation that started after this call; the outcome
    /// (an engine error as text).
    pub(super) async fn defragment(
        &self,
        engine: SharedEngine,
        metrics: Arc<Metrics>,
    ) -> Result<(), String> {
        let arrived = self.started.load(Ordering::SeqCst);
        let mut finished = self.finished.clone().lock_owned().await;
        if finished.number > arrived {
            return finished.outcome.clone();
        }
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let (done, outcome) = tokio::sync::oneshot::channel();
        // A task of its own holds the lock until the engine is done, whether or not this caller
        // still waits.
        rt::spawn(async move {
            let began = rt::now();
            let result = match rt::spawn_blocking(move || engine.defragment()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            metrics.backend_defrag.observe(began.elapsed());
            *finished = Finished {
                number,
                outcome: result.clone(),
            };
            drop(finished);
            let _ = done.send(result);
        });
        outcome
            .await
            .unwrap_or_else(|_| Err("defragmentation stopped".into()))
    }
}
