//! The one-way shutdown signal every listener and connection of the member waits on (over the
//! seam's `tokio`, so the simulator's members have it too).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A one-way shutdown signal shared by every listener.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<(AtomicBool, Notify)>,
}

impl Shutdown {
    /// A signal not yet raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raise the signal: every waiter returns.
    pub fn trigger(&self) {
        self.inner.0.store(true, Ordering::SeqCst);
        self.inner.1.notify_waiters();
    }

    /// Wait until the signal is raised.
    pub async fn wait(&self) {
        loop {
            let notified = self.inner.1.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.inner.0.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// Wait for the process to be told to stop: Ctrl-C (SIGINT) or, on Unix, SIGTERM (what `kill` and
/// service managers send). In simulation only madsim's Ctrl-C, which no test sends.
pub async fn stop_signal() {
    #[cfg(all(unix, not(madsim)))]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    biased;
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(all(unix, not(madsim))))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
