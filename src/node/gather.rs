//! Requests that arrive together leave together.
//!
//! A connection delivers several requests per read, and their handlers run one after another on
//! the same worker. But a task that one of them wakes (raft's core, a call to the leader) runs
//! next, ahead of the handlers still waiting, so whatever the first handler started went alone.
//! A [`Gathering`] lets the handlers meet first: each leaves its item, lets the other ready tasks
//! run once, and whoever resumes first takes everything left meanwhile and sends it on as one
//! (`forward_batch`, `propose_batch`).

use std::sync::Mutex;

use crate::rt;

/// Items left by callers that are about to be sent on together.
pub(super) struct Gathering<T> {
    queue: Mutex<Queue<T>>,
}

struct Queue<T> {
    next_id: u64,
    /// Each item with its caller's id (see [`Untaken`]).
    waiting: Vec<(u64, T)>,
}

impl<T> Default for Gathering<T> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                next_id: 0,
                waiting: Vec::new(),
            }),
        }
    }
}

/// Takes a caller's item out of the queue if the caller goes away before anyone took it: what a
/// client gave up on before it left is not sent later, with someone else's.
struct Untaken<'a, T> {
    gathering: &'a Gathering<T>,
    id: u64,
}

impl<T> Drop for Untaken<'_, T> {
    fn drop(&mut self) {
        // Usually taken already: then there is nothing of it left.
        self.gathering
            .lock()
            .waiting
            .retain(|(id, _)| *id != self.id);
    }
}

impl<T> Gathering<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave `item`, let the other ready tasks run once, and return everything left meanwhile, in
    /// the order it was left: `item` among it, or nothing when another caller took it first.
    pub(super) async fn gather(&self, item: T) -> Vec<T> {
        let untaken = {
            let mut queue = self.lock();
            queue.next_id += 1;
            let id = queue.next_id;
            queue.waiting.push((id, item));
            Untaken {
                gathering: self,
                id,
            }
        };
        // The other requests that arrived with this one get to join it.
        rt::yield_now().await;
        let taken = std::mem::take(&mut self.lock().waiting);
        drop(untaken);
        taken.into_iter().map(|(_, item)| item).collect()
    }

    /// Whether nothing is waiting to be taken.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.lock().waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn callers_that_meet_are_taken_together_in_order_and_a_departed_one_is_not() {
        let gathering = Gathering::default();
        // Three callers leave their items before any resumes; the second goes away.
        let mut first = Box::pin(gathering.gather(1));
        let mut second = Box::pin(gathering.gather(2));
        let mut third = Box::pin(gathering.gather(3));
        assert!(first.as_mut().now_or_never().is_none());
        assert!(second.as_mut().now_or_never().is_none());
        assert!(third.as_mut().now_or_never().is_none());
        drop(second);
        assert_eq!(first.await, vec![1, 3]);
        assert_eq!(third.await, Vec::<i32>::new());
        // Nothing is left behind for the next caller.
        assert!(gathering.is_empty());
        assert_eq!(gathering.gather(4).await, vec![4]);
    }
}
