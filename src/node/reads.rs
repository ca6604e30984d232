//! Serving reads in place: ranges and read-only transactions behind the read barrier (linearizable)
//! or at once (serializable), permissions checked at the auth state they are served at, large reads
//! in bounded places and in pieces so writes go on between them.

use super::{wait_for_place, Node, NodeError};
use crate::apply::{self, ApplyError};
use crate::auth::{AuthError, AuthStore};
use crate::limits;
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use crate::rt;

impl Node {
    /// Serve a range. Linearizable reads first confirm, through a read index obtained from the
    /// leader, that nothing newer has committed, and wait until this member applied it;
    /// serializable reads are served from local state at once.
    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse, NodeError> {
        self.range_checked(req, |_| Ok(())).await
    }

    /// [`Node::range`] that first asks `permitted` about the auth state the read is served at
    /// (after the read index, as etcd checks a read's permissions).
    pub async fn range_checked(
        &self,
        req: &RangeRequest,
        permitted: impl FnOnce(&AuthStore) -> Result<(), AuthError>,
    ) -> Result<RangeResponse, NodeError> {
        let checked_at = self.read_gate(req.serializable, permitted).await?;
        self.metrics.mvcc_range.inc();
        let resp = self
            .read_in_place(|may_grow| apply::range_in_pieces(|| self.state.read(), req, may_grow))
            .await?;
        self.auth_unchanged(checked_at)?;
        Ok(resp)
    }

    /// Serve a read-only transaction ([`apply::is_read_only`]) as a read, without raft, as etcd
    /// does: behind the read barrier unless every range in it is serializable, then pinned at
    /// one revision and read in pieces (see [`apply::read_only_txn_in_pieces`]). Before, it went
    /// through the log and apply read it whole under the store's write lock, so a flood of
    /// large read-only transactions held up every write.
    pub async fn read_only_txn_checked(
        &self,
        req: &TxnRequest,
        permitted: impl FnOnce(&AuthStore) -> Result<(), AuthError>,
    ) -> Result<TxnResponse, NodeError> {
        let checked_at = self
            .read_gate(apply::is_serializable(req), permitted)
            .await?;
        let resp = self
            .read_in_place(|may_grow| {
                apply::read_only_txn_in_pieces(|| self.state.read(), req, may_grow)
            })
            .await?;
        self.auth_unchanged(checked_at)?;
        // Counted as apply counts a transaction: once, and once more for its ranges.
        self.metrics.mvcc_txn.inc();
        if !resp.responses.is_empty() {
            self.metrics.mvcc_range.inc();
        }
        Ok(resp)
    }

    /// Run `read`, a read in pieces that stops past its first piece (returning `None`) when the
    /// `may_grow` it is given says no. A read larger than one piece goes on only in a place of
    /// `large_reads`; when none is free it stops there (keeping nothing), waits for one (at most
    /// `LARGE_READ_WAIT`, then "too many requests") and starts over in it. Writes go on between
    /// the pieces whatever the read's size.
    pub(super) async fn read_in_place<T>(
        &self,
        read: impl Fn(&dyn Fn() -> bool) -> Result<Option<T>, ApplyError>,
    ) -> Result<T, NodeError> {
        let place = parking_lot::Mutex::new(None);
        let may_grow = || {
            let mut place = place.lock();
            if place.is_none() {
                *place = self.large_reads.clone().try_acquire_owned().ok();
            }
            place.is_some()
        };
        loop {
            if let Some(done) = read(&may_grow)? {
                return Ok(done);
            }
            let waited = wait_for_place(&self.large_reads, limits::LARGE_READ_WAIT).await?;
            *place.lock() = Some(waited);
        }
    }

    /// What every read passes before it reads: a linearizable one the read barrier, then
    /// `permitted` with the auth state it is served at. Returns the auth revision checked (`None`
    /// with auth off) for [`Node::auth_unchanged`].
    pub(super) async fn read_gate(
        &self,
        serializable: bool,
        permitted: impl FnOnce(&AuthStore) -> Result<(), AuthError>,
    ) -> Result<Option<u64>, NodeError> {
        if !serializable {
            match rt::timeout(self.config.request_timeout, self.read_barrier()).await {
                Err(rt::Elapsed) => return Err(NodeError::Timeout),
                Ok(result) => result?,
            }
        }
        let auth = self.auth();
        permitted(&auth).map_err(ApplyError::Auth)?;
        Ok(auth.enabled().then(|| auth.revision()))
    }

    /// Refuse a read whose permissions were checked at auth revision `checked_at` when auth has
    /// changed since: they may no longer hold (etcd's check after a serialized read).
    pub(super) fn auth_unchanged(&self, checked_at: Option<u64>) -> Result<(), NodeError> {
        if checked_at.is_some_and(|rev| rev != self.auth().revision()) {
            return Err(ApplyError::Auth(AuthError::AuthOldRevision).into());
        }
        Ok(())
    }

    /// Wait (at most the request timeout) until this member has applied everything committed
    /// before the call, so what it reads next is linearizable (auth queries go through raft in
    /// etcd).
    pub async fn linearize(&self) -> Result<(), NodeError> {
        match rt::timeout(self.config.request_timeout, self.read_barrier()).await {
            Err(rt::Elapsed) => Err(NodeError::Timeout),
            Ok(result) => result,
        }
    }
}
