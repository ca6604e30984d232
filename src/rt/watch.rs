//! A watch channel for openraft written over `tokio::sync::Notify`.
//!
//! `tokio::sync::watch` picks a waker slot with tokio's process-wide RNG, which makes two runs of one
//! seed diverge inside the simulator. This channel draws no randomness: a version counter, a
//! read-write lock around the value and one `Notify` for all receivers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::async_runtime::watch::{RecvError, SendError};
use openraft::async_runtime::{Watch, WatchReceiver, WatchSender};
use openraft::{OptionalSend, OptionalSync};
use tokio::sync::Notify;

/// The watch channel family handed to openraft.
pub struct SeamWatch;

struct Shared<T> {
    value: RwLock<T>,
    version: AtomicU64,
    senders: AtomicUsize,
    receivers: AtomicUsize,
    closed: AtomicBool,
    notify: Notify,
}

impl<T> Shared<T> {
    fn read(&self) -> RwLockReadGuard<'_, T> {
        self.value.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sending half: every clone may publish a new value.
pub struct SeamWatchSender<T> {
    shared: Arc<Shared<T>>,
}

/// Receiving half: remembers the last version it has seen.
pub struct SeamWatchReceiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

impl Watch for SeamWatch {
    type Sender<T: OptionalSend + OptionalSync> = SeamWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = SeamWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = RwLockReadGuard<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Arc::new(Shared {
            value: RwLock::new(init),
            version: AtomicU64::new(0),
            senders: AtomicUsize::new(1),
            receivers: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        });
        (
            SeamWatchSender {
                shared: shared.clone(),
            },
            SeamWatchReceiver { shared, seen: 0 },
        )
    }
}

impl<T> Clone for SeamWatchSender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::SeqCst);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for SeamWatchSender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.closed.store(true, Ordering::SeqCst);
            self.shared.notify.notify_waiters();
        }
    }
}

impl<T> Clone for SeamWatchReceiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::SeqCst);
        Self {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

impl<T> Drop for SeamWatchReceiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<SeamWatch, T> for SeamWatchSender<T> {
    fn send(&self, value: T) -> Result<(), SendError<T>> {
        if self.shared.receivers.load(Ordering::SeqCst) == 0 {
            return Err(SendError(value));
        }
        self.send_if_modified(|current| {
            *current = value;
            true
        });
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let modified = {
            let mut guard = self.shared.value.write().unwrap_or_else(|e| e.into_inner());
            let modified = modify(&mut guard);
            if modified {
                self.shared.version.fetch_add(1, Ordering::SeqCst);
            }
            modified
        };
        if modified {
            self.shared.notify.notify_waiters();
        }
        modified
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    fn subscribe(&self) -> SeamWatchReceiver<T> {
        self.shared.receivers.fetch_add(1, Ordering::SeqCst);
        SeamWatchReceiver {
            shared: self.shared.clone(),
            seen: self.shared.version.load(Ordering::SeqCst),
        }
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<SeamWatch, T> for SeamWatchReceiver<T> {
    async fn changed(&mut self) -> Result<(), RecvError> {
        loop {
            let notified = self.shared.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking, so a send between the check and the await is not missed.
            notified.as_mut().enable();
            let version = self.shared.version.load(Ordering::SeqCst);
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(RecvError(()));
            }
            notified.await;
        }
    }

    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.shared.read()
    }

    fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        let guard = self.shared.read();
        self.seen = self.shared.version.load(Ordering::SeqCst);
        guard
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receiver_sees_each_change_and_close() {
        let (tx, mut rx) = SeamWatch::channel(1u32);
        assert_eq!(*rx.borrow_watched(), 1);
        tx.send(2).unwrap_or_else(|_| panic!("receiver alive"));
        rx.changed()
            .await
            .unwrap_or_else(|_| panic!("sender alive"));
        assert_eq!(*rx.borrow_and_update(), 2);
        assert!(!tx.send_if_modified(|_| false));
        let waiter = tokio::spawn(async move {
            let first = rx.changed().await;
            let second = rx.changed().await;
            (first.is_ok(), second.is_err())
        });
        tokio::task::yield_now().await;
        tx.send(3).unwrap_or_else(|_| panic!("receiver alive"));
        drop(tx);
        assert_eq!(waiter.await.unwrap_or((false, false)), (true, true));
    }
}
