//! The runtime seam: the only module that names tokio or madsim runtime specifics.
//!
//! Everything else asks this module for time, sleep, spawn and randomness. In a normal build
//! `tokio` is the real tokio; under `--cfg madsim` the same paths are madsim's simulated ones, so
//! the whole server (openraft included, through [`SeamRuntime`]) runs deterministically from a seed.

pub mod allocator;
pub mod buggify;
mod openraft_rt;
mod shutdown;
mod watch;

pub use openraft_rt::{SeamInstant, SeamRuntime};
pub use shutdown::{stop_signal, Shutdown};

use std::future::Future;
use std::time::Duration;

/// A monotonic instant from the seam's clock (simulated under madsim).
pub type Instant = tokio::time::Instant;

/// Error returned when a deadline passes before the awaited work finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// Current time on the seam's monotonic clock.
pub fn now() -> Instant {
    tokio::time::Instant::now()
}

/// Current wall-clock time (madsim's simulated one in simulation). Only for what must be
/// understood outside this process, such as a JWT's `exp`; intervals use [`now`].
pub fn wall_clock() -> std::time::SystemTime {
    #[cfg(madsim)]
    {
        madsim::time::TimeHandle::current().now_time()
    }
    #[cfg(not(madsim))]
    {
        std::time::SystemTime::now()
    }
}

/// Sleep for `duration` on the seam's clock.
pub async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await
}

/// Run `fut` until it completes or `duration` passes.
pub async fn timeout<F: Future>(duration: Duration, fut: F) -> Result<F::Output, Elapsed> {
    tokio::time::timeout(duration, fut)
        .await
        .map_err(|_| Elapsed)
}

/// A handle to a spawned task (abort it to stop the task).
pub type JoinHandle<T> = tokio::task::JoinHandle<T>;

/// Let other tasks run before continuing.
pub async fn yield_now() {
    tokio::task::yield_now().await
}

/// Spawn a task on the current runtime (a simulated node's runtime under madsim).
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut)
}

/// Tasks alive on the current runtime (`/metrics` reports it so a test can see that nothing an
/// abandoned request started is left running); 0 in simulation, where madsim keeps no such count.
pub fn alive_tasks() -> u64 {
    #[cfg(madsim)]
    {
        0
    }
    #[cfg(not(madsim))]
    {
        tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_alive_tasks() as u64)
            .unwrap_or(0)
    }
}

/// The sending side of a [`batch_worker`]. Cheap to clone.
pub struct BatchSender<T> {
    #[cfg(not(madsim))]
    tx: std::sync::mpsc::Sender<T>,
    #[cfg(madsim)]
    tx: tokio::sync::mpsc::UnboundedSender<T>,
}

impl<T> Clone for BatchSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> BatchSender<T> {
    /// Queue `item`; gives it back if the worker has stopped.
    pub fn send(&self, item: T) -> Result<(), T> {
        self.tx.send(item).map_err(|e| e.0)
    }
}

/// Start a worker that runs blocking `work` on everything queued since its last run, in queue
/// order, until every sender is gone. In a normal build it is a dedicated OS thread: an fsync
/// loop pays one thread wake-up per batch instead of a task wake-up plus a hand-off through the
/// blocking pool and back. In simulation it is a task that runs the work inline, after waiting
/// out `simulated_delay()` on the simulated clock (a slow disk; real work takes real time, so a
/// normal build never calls it).
pub fn batch_worker<T, W, D>(
    name: &str,
    simulated_delay: D,
    mut work: W,
) -> std::io::Result<BatchSender<T>>
where
    T: Send + 'static,
    W: FnMut(Vec<T>) + Send + 'static,
    D: Fn() -> Duration + Send + 'static,
{
    #[cfg(not(madsim))]
    {
        let _ = simulated_delay;
        let (tx, rx) = std::sync::mpsc::channel::<T>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    work(batch);
                }
            })?;
        Ok(BatchSender { tx })
    }
    #[cfg(madsim)]
    {
        let _ = name;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<T>();
        spawn(async move {
            while let Some(first) = rx.recv().await {
                let delay = simulated_delay();
                if !delay.is_zero() {
                    sleep(delay).await;
                }
                buggify::delay("log-fsync-slow", Duration::from_millis(100)).await;
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                work(batch);
            }
        });
        Ok(BatchSender { tx })
    }
}

/// Run blocking work off the async workers. In simulation there are no real threads: it runs inline,
/// which keeps the schedule deterministic.
pub async fn spawn_blocking<F, T>(f: F) -> std::io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(madsim)]
    {
        Ok(f())
    }
    #[cfg(not(madsim))]
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(std::io::Error::other)
    }
}

/// Offer the core to another thread that is ready to run: long CPU-bound work (a hash of the
/// store, a large range) calls it between its pieces. Linux lets a running thread finish its time
/// slice (a few milliseconds) before a woken thread of the same priority takes its core, so on two
/// cores a scan that never sleeps made each hop of a put (gRPC, raft, the log, apply) wait for it:
/// under a flood of `HashKV` a writer's p99 went from 2 to 5 ms, at times over 10 ms (debug
/// build); with a yield after each piece it was back near 2 ms in most runs and the hashes ran as
/// fast (the rest of that fix is in `mvcc::hash`). Costs a system call when no one waits. Nothing
/// in simulation, where there is one thread.
pub fn yield_thread() {
    #[cfg(not(madsim))]
    std::thread::yield_now();
}

/// Run blocking work on the current worker thread while the runtime moves this worker's other tasks
/// to another thread, so they are not stuck behind it. Cheaper than [`spawn_blocking`] when the work
/// is short (no hand-off of the result). Inline in simulation.
pub fn block_in_place<F: FnOnce() -> T, T>(f: F) -> T {
    #[cfg(madsim)]
    {
        f()
    }
    #[cfg(not(madsim))]
    {
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
            _ => f(),
        }
    }
}

/// A random `u64` from the seam: madsim's seeded generator in simulation, the OS-seeded thread RNG
/// otherwise.
pub fn random_u64() -> u64 {
    #[cfg(madsim)]
    {
        madsim::rand::random::<u64>()
    }
    #[cfg(not(madsim))]
    {
        use rand::RngExt as _;
        rand::rng().random::<u64>()
    }
}
