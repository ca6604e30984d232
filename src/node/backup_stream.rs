//! A `Maintenance.Snapshot` stream's state under a watchdog: a client that stops asking for
//! pieces for [`limits::SNAPSHOT_STREAM_STALL`] loses the stream's place and engine view, so two
//! clients that read a piece and stopped cannot keep every other backup waiting for as long as
//! their connections live. (A stream is asked for its next piece only when the connection has room
//! for it, so time without a poll is time the client has not been reading.)

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::limits;
use crate::raft::etcd_snapshot::writer::SnapshotWriter;
use crate::rt;

type Held = (SnapshotWriter, OwnedSemaphorePermit);

struct Slot {
    /// The writer (with its view) and the place, while the stream may still go on.
    held: Option<Held>,
    /// When the stream last asked for a piece or finished reading one.
    touched: rt::Instant,
}

/// The stream's side: the watchdog ends with it (its drop closes `_ended`).
pub(super) struct Backup {
    slot: Arc<parking_lot::Mutex<Slot>>,
    _ended: tokio::sync::oneshot::Sender<()>,
}

impl Backup {
    /// The state of a new stream, and a watchdog task that drops it once the client has taken no
    /// piece for [`limits::SNAPSHOT_STREAM_STALL`].
    pub(super) fn watched(writer: SnapshotWriter, place: OwnedSemaphorePermit) -> Self {
        let slot = Arc::new(parking_lot::Mutex::new(Slot {
            held: Some((writer, place)),
            touched: rt::now(),
        }));
        let (ended, mut on_end) = tokio::sync::oneshot::channel::<()>();
        let watched = slot.clone();
        rt::spawn(async move {
            loop {
                let since = watched.lock().touched;
                // At least a fraction of the limit: a piece that takes longer than the limit to
                // read (nothing held meanwhile) must not make this loop spin.
                let due = limits::SNAPSHOT_STREAM_STALL
                    .saturating_sub(since.elapsed())
                    .max(limits::SNAPSHOT_STREAM_STALL / 8);
                tokio::select! {
                    biased;
                    _ = &mut on_end => return,
                    _ = rt::sleep(due) => {}
                }
                let mut slot = watched.lock();
                // Nothing held while a piece is being read; the stream touches it again after.
                if slot.touched.elapsed() >= limits::SNAPSHOT_STREAM_STALL && slot.held.is_some() {
                    let dropped = slot.held.take();
                    drop(slot);
                    drop(dropped);
                    return;
                }
            }
        });
        Self {
            slot,
            _ended: ended,
        }
    }

    /// The writer and place for the next piece: `None` if the watchdog dropped them.
    pub(super) fn take(&self) -> Option<Held> {
        let mut slot = self.slot.lock();
        slot.touched = rt::now();
        slot.held.take()
    }

    /// Give back the writer and place after a piece.
    pub(super) fn put_back(&self, writer: SnapshotWriter, place: OwnedSemaphorePermit) {
        let mut slot = self.slot.lock();
        slot.touched = rt::now();
        slot.held = Some((writer, place));
    }
}
