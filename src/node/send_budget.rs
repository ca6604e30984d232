//! The member's budget for large answers on their way to clients.
//!
//! A unary answer is encoded whole before HTTP/2 sends it, and HTTP/2 sends only as fast as the
//! client opens its flow-control window. A client that asks for a large list and never opens its
//! window (a few dozen bytes of request) made the member keep the whole encoded answer for as long
//! as the connection lived: eight such requests for a 118 MB prefix took a member from 189 to
//! 1,453 MB. So an answer larger than the HTTP/2 initial window ([`limits::SEND_HELD_MIN_BYTES`],
//! which a client takes without opening anything) is counted here from when it exists until the
//! connection has taken all of it (`api::held_body`): the answers held at once stay within
//! [`limits::SEND_BUDGET_BYTES`], except one of any size when nothing else is held (a list may be
//! larger than the budget). A read whose answer does not fit drops it, waits for room (at most
//! [`limits::LARGE_READ_WAIT`], then `etcdserver: too many requests`) and reads again; an answer that cannot
//! be read again (a transaction's: its writes are applied) is counted whatever is held. And an
//! answer is held at most [`limits::send_deadline`] for its size: a client that has not taken it
//! by then loses the stream, and the member its bytes.
//!
//! Smaller answers are not counted: HTTP/2 sends them whole without waiting for the client.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::limits;
use crate::node::NodeError;
use crate::rt;

/// Bytes of large answers held, against a total.
pub struct SendBudget {
    total: usize,
    held: parking_lot::Mutex<usize>,
    freed: Notify,
}

/// Bytes counted in a [`SendBudget`] until this is dropped.
pub struct Held {
    budget: Arc<SendBudget>,
    bytes: usize,
}

impl SendBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(Self {
            total,
            held: parking_lot::Mutex::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        *self.held.lock()
    }

    /// Count `bytes` if they fit: within the budget with what is held, or nothing is held.
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Option<Held> {
        let mut held = self.held.lock();
        if *held != 0 && held.saturating_add(bytes) > self.total {
            return None;
        }
        *held += bytes;
        Some(Held {
            budget: self.clone(),
            bytes,
        })
    }

    /// Count `bytes` whatever is held: an answer that exists and must go as it is.
    pub fn hold_anyway(self: &Arc<Self>, bytes: usize) -> Held {
        *self.held.lock() += bytes;
        Held {
            budget: self.clone(),
            bytes,
        }
    }

    /// Count `bytes` once they fit ([`SendBudget::try_hold`]), waiting at most `wait`; then
    /// [`NodeError::TooManyRequests`].
    pub async fn hold(
        self: &Arc<Self>,
        bytes: usize,
        wait: std::time::Duration,
    ) -> Result<Held, NodeError> {
        let fits = async {
            loop {
                let freed = self.freed.notified();
                let mut freed = std::pin::pin!(freed);
                freed.as_mut().enable();
                if let Some(held) = self.try_hold(bytes) {
                    return held;
                }
                freed.await;
            }
        };
        rt::timeout(wait, fits)
            .await
            .map_err(|rt::Elapsed| NodeError::TooManyRequests)
    }
}

impl Held {
    /// How many bytes this counts.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Count `bytes` instead (an answer read again after a wait may have grown or shrunk).
    pub fn resize(&mut self, bytes: usize) {
        let mut held = self.budget.held.lock();
        *held = *held - self.bytes + bytes;
        self.bytes = bytes;
        drop(held);
        self.budget.freed.notify_waiters();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.budget.held.lock();
        debug_assert!(
            *held >= self.bytes,
            "a budget gives back more than it counted"
        );
        *held -= self.bytes;
        drop(held);
        self.budget.freed.notify_waiters();
    }
}

/// Whether an answer of `bytes` is large enough to count ([`limits::SEND_HELD_MIN_BYTES`]).
pub fn counts(bytes: usize) -> bool {
    bytes > limits::SEND_HELD_MIN_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_fit_within_the_budget_or_alone() {
        let budget = SendBudget::new(100);
        let alone = budget
            .try_hold(250)
            .expect("one answer of any size when nothing is held");
        assert!(
            budget.try_hold(1).is_none(),
            "nothing beside one over the budget"
        );
        drop(alone);
        assert_eq!(budget.held(), 0);
        let a = budget.try_hold(60).expect("fits");
        assert!(budget.try_hold(41).is_none(), "60 + 41 > 100");
        let mut b = budget.try_hold(40).expect("60 + 40 fits");
        b.resize(10);
        assert_eq!(budget.held(), 70);
        let c = budget.hold_anyway(500);
        assert_eq!(budget.held(), 570);
        drop((a, b, c));
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_answer_gets_the_room_that_is_freed_or_too_many_requests() {
        let budget = SendBudget::new(100);
        let first = budget.try_hold(80).expect("fits");
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.hold(50, std::time::Duration::from_secs(5)).await })
        };
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "80 + 50 does not fit");
        drop(first);
        let held = waiting.await.expect("task").expect("room was freed");
        assert_eq!(held.bytes(), 50);
        let late = budget.hold(60, std::time::Duration::from_secs(5)).await;
        assert!(
            matches!(late, Err(NodeError::TooManyRequests)),
            "no room within the wait"
        );
        assert_eq!(budget.held(), 50, "a refused wait counts nothing");
    }
}
