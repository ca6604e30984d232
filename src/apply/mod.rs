//! What a request means: deterministic, synchronous execution of KV commands against the MVCC store,
//! and of auth commands against the auth store.
//!
//! Nothing here reads a clock or a random source, so every member that applies the same log reaches
//! the same state. Requests arrive already validated by `api::validate`; what can only be judged
//! against the store (a missing key for `ignore_value`, an unknown lease, a compacted revision) is
//! checked here, before the first write, so a rejected command changes nothing. A client's command
//! carries the auth revision its permissions were checked at; if auth changed since, it is refused
//! here ("revision of auth store is old"), as etcd's apply does, so a revoked permission can never
//! be used by a request that was already on its way.

mod range;
mod range_stream;
mod txn;

pub use range::execute_range;
pub use range_stream::RangeStream;
pub use txn::{has_top_level_put, is_read_only, is_serializable};

use std::ops::Deref;

use crate::auth::{AuthError, AuthStore};
use crate::cluster::version::{DowngradeError, Version, VersionState};
use crate::limits::RANGE_PIECE_KEYS;
use crate::mvcc::{MvccError, MvccStore, RangeEnd, RangeRead};
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::AlarmType;
use crate::pb::etcdserverpb::{AlarmMember, AlarmResponse, LeaseCheckpointResponse};
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, TxnRequest, TxnResponse,
};
use crate::pb::metastore::{command, Command};
use crate::pb::mvccpb::KeyValue;
use crate::storage::{StorageError, WriteBatch};

/// Why a command was rejected. A rejected command leaves every state untouched; the variants that
/// are not [`ApplyError::is_fatal`] are the client's answer, the others stop the member.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("command has no operation")]
    EmptyCommand,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Downgrade(#[from] DowngradeError),
    /// The store's own invariants do not hold: the member must stop.
    #[error("mvcc invariant broken: {0}")]
    Invariant(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ApplyError {
    /// Whether the member must stop (its state or its disk can no longer be trusted) rather than
    /// answer the client with the error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ApplyError::Storage(_) | ApplyError::Invariant(_))
    }
}

impl From<MvccError> for ApplyError {
    fn from(e: MvccError) -> Self {
        match e {
            MvccError::Compacted => ApplyError::Compacted,
            MvccError::FutureRevision => ApplyError::FutureRevision,
            MvccError::Invariant(s) => ApplyError::Invariant(s),
            MvccError::Storage(s) => ApplyError::Storage(s),
        }
    }
}

/// The successful outcome of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(LeaseCheckpointResponse),
    /// A member's attributes were recorded.
    Publish,
    /// An alarm was raised or cleared; the alarms it changed.
    Alarm(AlarmResponse),
    /// An auth change was applied; the store revision for the response header.
    Auth(i64),
    /// A downgrade was enabled or cancelled: the store revision for the response header and the
    /// cluster version before the change (what etcd's `Downgrade` answers with).
    Downgrade {
        revision: i64,
        before: Version,
    },
    /// A login was accepted: every member records `token` for `user` (issued at auth revision
    /// `auth_revision`); the store revision for the response header.
    TokenIssued {
        revision: i64,
        user: String,
        token: String,
        password_hash: Vec<u8>,
        auth_revision: u64,
    },
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Refuse a client's command whose permissions were checked against an auth state that has changed
/// since, or that carried no user while auth is now enabled (etcd's apply-time check).
fn check_requester(auth: &AuthStore, cmd: &Command) -> Result<(), AuthError> {
    let Some(requester) = &cmd.requester else {
        return Ok(());
    };
    if !auth.enabled() {
        return Ok(());
    }
    if requester.username.is_empty() {
        return Err(AuthError::UserEmpty);
    }
    if requester.auth_revision < auth.revision() {
        return Err(AuthError::AuthOldRevision);
    }
    Ok(())
}

/// Execute `cmd` against `store`, `auth` and the cluster's `versions`: whole, or not at all. On
/// success the returned batch holds every engine change; the caller adds its own bookkeeping
/// (applied index) and writes it atomically. The in-memory state (key index, leases, auth,
/// versions) is already updated then, so the caller must write the batch or stop the member. On an
/// error nothing has changed: MVCC writes are staged in a [`crate::mvcc::WriteTxn`] that is
/// dropped unfinished, and every other command checks before it changes anything.
pub fn apply(
    store: &mut MvccStore,
    auth: &mut AuthStore,
    versions: &mut VersionState,
    cmd: Command,
) -> Result<(Applied, WriteBatch), ApplyError> {
    check_requester(auth, &cmd)?;
    match cmd.op.ok_or(ApplyError::EmptyCommand)? {
        command::Op::Auth(change) => {
            let mut batch = WriteBatch::new();
            let issue = match &change.op {
                Some(crate::pb::metastore::auth_command::Op::TokenIssue(t)) => Some(t.clone()),
                _ => None,
            };
            if issue.is_some() {
                // A login changes no auth state: checked against the store as it is.
                auth.apply(change, &mut batch)?;
            } else {
                // Applied to a copy that replaces the store only once the change succeeded: a
                // refused change leaves the auth state as it was, whatever the change's own checks.
                let mut staged = auth.clone();
                staged.apply(change, &mut batch)?;
                *auth = staged;
            }
            let revision = store.current_revision();
            let applied = match issue {
                Some(t) => Applied::TokenIssued {
                    revision,
                    user: t.user,
                    token: t.token,
                    password_hash: t.password_hash,
                    auth_revision: auth.revision(),
                },
                None => Applied::Auth(revision),
            };
            Ok((applied, batch))
        }
        command::Op::Put(req) => {
            let mut txn = store.write_txn();
            txn::check_put(&txn, &req)?;
            let resp = txn::put(&mut txn, req)?;
            let (batch, rev) = txn.finish();
            Ok((
                Applied::Put(PutResponse {
                    header: header(rev),
                    ..resp
                }),
                batch,
            ))
        }
        command::Op::DeleteRange(req) => {
            let mut txn = store.write_txn();
            let resp = txn::delete_range(&mut txn, req)?;
            let (batch, rev) = txn.finish();
            Ok((
                Applied::DeleteRange(DeleteRangeResponse {
                    header: header(rev),
                    ..resp
                }),
                batch,
            ))
        }
        command::Op::Txn(req) => {
            let mut txn = store.write_txn();
            let resp = match txn::execute_txn(&mut txn, &req) {
                Ok(resp) => resp,
                Err(e) => {
                    #[cfg(feature = "sim-bug-partial-txn")]
                    txn.leak_unfinished();
                    return Err(e);
                }
            };
            let (batch, rev) = txn.finish();
            Ok((
                Applied::Txn(TxnResponse {
                    header: header(rev),
                    ..resp
                }),
                batch,
            ))
        }
        command::Op::LeaseGrant(req) => {
            let ttl = req.ttl.max(crate::limits::LEASE_MIN_TTL_SECS);
            let mut batch = WriteBatch::new();
            if !store.lease_grant(req.id, ttl, &mut batch) {
                return Err(ApplyError::LeaseExists);
            }
            let rev = store.current_revision();
            let resp = LeaseGrantResponse {
                header: header(rev),
                id: req.id,
                ttl,
                error: String::new(),
            };
            Ok((Applied::LeaseGrant(resp), batch))
        }
        command::Op::LeaseRevoke(req) => {
            let mut txn = store.write_txn();
            if !txn.lease_revoke(req.id)? {
                return Err(ApplyError::LeaseNotFound);
            }
            let (batch, rev) = txn.finish();
            Ok((
                Applied::LeaseRevoke(LeaseRevokeResponse {
                    header: header(rev),
                }),
                batch,
            ))
        }
        command::Op::LeaseCheckpoint(req) => {
            let mut batch = WriteBatch::new();
            for cp in req.checkpoints {
                // A lease revoked meanwhile is simply skipped.
                store.lease_checkpoint(cp.id, cp.remaining_ttl, &mut batch);
            }
            let rev = store.current_revision();
            Ok((
                Applied::LeaseCheckpoint(LeaseCheckpointResponse {
                    header: header(rev),
                }),
                batch,
            ))
        }
        command::Op::Alarm(req) => {
            let mut batch = WriteBatch::new();
            let changed = vec![AlarmMember {
                member_id: req.member_id,
                alarm: req.alarm,
            }];
            let alarms = match req.action() {
                // etcd raises no alarm of type NONE.
                AlarmAction::Activate if req.alarm == AlarmType::None as i32 => Vec::new(),
                AlarmAction::Activate => {
                    crate::cluster::put_alarm(&mut batch, req.member_id, req.alarm);
                    changed
                }
                AlarmAction::Deactivate => {
                    // etcd names the alarm it cleared, and none if it was not raised. (Read from
                    // the engine: an alarm raised by an entry applied in the same batch as this
                    // one is not seen there, and then only this answer names none.)
                    let raised = crate::cluster::alarm_raised(
                        store.engine().as_ref(),
                        req.member_id,
                        req.alarm,
                    )?;
                    crate::cluster::delete_alarm(&mut batch, req.member_id, req.alarm);
                    if raised {
                        changed
                    } else {
                        Vec::new()
                    }
                }
                AlarmAction::Get => Vec::new(),
            };
            let rev = store.current_revision();
            Ok((
                Applied::Alarm(AlarmResponse {
                    header: header(rev),
                    alarms,
                }),
                batch,
            ))
        }
        command::Op::Downgrade(change) => {
            let mut batch = WriteBatch::new();
            let before = versions.apply(&change, &mut batch)?;
            let revision = store.current_revision();
            Ok((Applied::Downgrade { revision, before }, batch))
        }
        command::Op::Publish(attrs) => {
            let mut batch = WriteBatch::new();
            crate::cluster::put_attributes(&mut batch, &attrs);
            Ok((Applied::Publish, batch))
        }
        command::Op::Compaction(CompactionRequest { revision, .. }) => {
            let mut batch = WriteBatch::new();
            store.compact(revision, &mut batch)?;
            let rev = store.current_revision();
            Ok((
                Applied::Compaction(CompactionResponse {
                    header: header(rev),
                }),
                batch,
            ))
        }
    }
}

/// Serve a read-only range from the newest committed state.
pub fn range(store: &MvccStore, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
    execute_range(&StoreView(store), req)
}

/// [`range`] on a store behind a lock that `lock` takes: the range is read in pieces of at most
/// [`RANGE_PIECE_KEYS`] keys of the key index, each under its own short hold of the lock, and its
/// records are read from an engine view after the last one, without it (see
/// [`crate::mvcc::RangeRead`]). Writers wait for one piece at most, whatever the size of the
/// range; the answer is still exactly the state at the revision read.
///
/// A range that keeps records and is larger than its first piece goes on only if `may_grow` says
/// so (the caller's bound on large reads at once); otherwise it stops there and this returns
/// `None`, having kept nothing.
pub fn range_in_pieces<G>(
    lock: impl Fn() -> G,
    req: &RangeRequest,
    may_grow: &dyn Fn() -> bool,
) -> Result<Option<RangeResponse>, ApplyError>
where
    G: Deref<Target = MvccStore>,
{
    range_gated(lock, req, RANGE_PIECE_KEYS, may_grow)
}

/// [`range_in_pieces`] with pieces of `piece_keys` keys.
fn range_gated<G>(
    lock: impl Fn() -> G,
    req: &RangeRequest,
    piece_keys: usize,
    may_grow: &dyn Fn() -> bool,
) -> Result<Option<RangeResponse>, ApplyError>
where
    G: Deref<Target = MvccStore>,
{
    let view = PiecewiseView {
        lock,
        piece_keys,
        may_grow,
        held_back: std::cell::Cell::new(false),
    };
    let resp = execute_range(&view, req)?;
    Ok((!view.held_back.get()).then_some(resp))
}

/// [`range_in_pieces`] with pieces of `piece_keys` keys (tests use small ones), never held back.
#[cfg(test)]
pub(crate) fn range_in_pieces_of<G>(
    lock: impl Fn() -> G,
    req: &RangeRequest,
    piece_keys: usize,
) -> Result<RangeResponse, ApplyError>
where
    G: Deref<Target = MvccStore>,
{
    let resp = range_gated(lock, req, piece_keys, &|| true)?;
    resp.ok_or_else(|| ApplyError::Invariant("a range allowed to grow was held back".into()))
}

/// A read-only transaction ([`txn::is_read_only`]) served outside apply, as etcd serves one
/// without raft: pinned at the head revision when it starts, its compares and ranges each read in
/// pieces as [`range_in_pieces`] reads a range (a range at revision 0 reads the pinned one), so
/// writers wait for one piece at most. `may_grow` is asked as there, and `None` returned when it
/// said no.
pub fn read_only_txn_in_pieces<G>(
    lock: impl Fn() -> G,
    req: &TxnRequest,
    may_grow: &dyn Fn() -> bool,
) -> Result<Option<TxnResponse>, ApplyError>
where
    G: Deref<Target = MvccStore>,
{
    read_only_txn_gated(lock, req, RANGE_PIECE_KEYS, may_grow)
}

/// [`read_only_txn_in_pieces`] with pieces of `piece_keys` keys.
fn read_only_txn_gated<G>(
    lock: impl Fn() -> G,
    req: &TxnRequest,
    piece_keys: usize,
    may_grow: &dyn Fn() -> bool,
) -> Result<Option<TxnResponse>, ApplyError>
where
    G: Deref<Target = MvccStore>,
{
    if !txn::is_read_only(req) {
        return Err(ApplyError::Invariant(
            "a transaction that writes was served as a read".into(),
        ));
    }
    let (at, compacted) = {
        let store = lock();
        (store.current_revision(), store.compact_revision())
    };
    let mut view = PinnedView {
        pieces: PiecewiseView {
            lock,
            piece_keys,
            may_grow,
            held_back: std::cell::Cell::new(false),
        },
        at,
        compacted,
    };
    let resp = txn::execute_txn(&mut view, req)?;
    if view.pieces.held_back.get() {
        return Ok(None);
    }
    Ok(Some(TxnResponse {
        header: header(at),
        ..resp
    }))
}

/// Ranges in pieces at revision `at` unless they name their own ([`read_only_txn_in_pieces`]).
struct PinnedView<'a, F> {
    pieces: PiecewiseView<'a, F>,
    at: i64,
    compacted: i64,
}

impl<F, G> ReadView for PinnedView<'_, F>
where
    F: Fn() -> G,
    G: Deref<Target = MvccStore>,
{
    fn range(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    ) -> Result<crate::mvcc::RangeResult, MvccError> {
        let rev = if rev > 0 { rev } else { self.at };
        self.pieces
            .range(key, end, rev, limit, count_only, keys_only)
    }
}

impl<F, G> txn::TxnView for PinnedView<'_, F>
where
    F: Fn() -> G,
    G: Deref<Target = MvccStore>,
{
    fn begin_rev(&self) -> i64 {
        self.at
    }

    fn compact_rev(&self) -> i64 {
        self.compacted
    }

    fn check_put(&self, _: &PutRequest) -> Result<(), ApplyError> {
        Err(read_only_wrote())
    }

    fn put(&mut self, _: PutRequest) -> Result<PutResponse, ApplyError> {
        Err(read_only_wrote())
    }

    fn delete_range(&mut self, _: DeleteRangeRequest) -> Result<DeleteRangeResponse, ApplyError> {
        Err(read_only_wrote())
    }
}

fn read_only_wrote() -> ApplyError {
    ApplyError::Invariant("a read-only transaction came to a write".into())
}

/// Something a range can be served from: the committed store, or a transaction in progress.
pub trait ReadView {
    /// See [`MvccStore::range`]; `keys_only` lets the view leave the values out (the caller drops
    /// them in any case).
    fn range(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    ) -> Result<crate::mvcc::RangeResult, MvccError>;

    /// Whether every key of `[key, end)` at the view's own revision satisfies `holds`; `None`
    /// when the range has no key. `keys_only` as in [`Self::range`]. This default reads the whole
    /// range first; a view that can visit the keys one record at a time, stopping at the first
    /// that fails, does so.
    fn all_hold(
        &self,
        key: &[u8],
        end: &RangeEnd,
        keys_only: bool,
        holds: &mut dyn FnMut(&KeyValue) -> bool,
    ) -> Result<Option<bool>, MvccError> {
        all_hold_by_range(self, key, end, keys_only, holds)
    }
}

/// [`ReadView::all_hold`] by reading the whole range.
fn all_hold_by_range<V: ReadView + ?Sized>(
    view: &V,
    key: &[u8],
    end: &RangeEnd,
    keys_only: bool,
    holds: &mut dyn FnMut(&KeyValue) -> bool,
) -> Result<Option<bool>, MvccError> {
    let kvs = view.range(key, end, 0, 0, false, keys_only)?.kvs;
    Ok((!kvs.is_empty()).then(|| kvs.iter().all(holds)))
}

struct StoreView<'a>(&'a MvccStore);

impl ReadView for StoreView<'_> {
    fn range(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    ) -> Result<crate::mvcc::RangeResult, MvccError> {
        let mut read = RangeRead::new(key, end.clone(), rev, limit, count_only, keys_only);
        self.0.range_step(&mut read, usize::MAX)?;
        read.finish()
    }

    fn all_hold(
        &self,
        key: &[u8],
        end: &RangeEnd,
        keys_only: bool,
        holds: &mut dyn FnMut(&KeyValue) -> bool,
    ) -> Result<Option<bool>, MvccError> {
        self.0.all_hold(key, end, 0, keys_only, holds)
    }
}

struct PiecewiseView<'a, F> {
    lock: F,
    piece_keys: usize,
    may_grow: &'a dyn Fn() -> bool,
    /// Set when the range stopped after its first piece (`may_grow` said no).
    held_back: std::cell::Cell<bool>,
}

impl<F, G> ReadView for PiecewiseView<'_, F>
where
    F: Fn() -> G,
    G: Deref<Target = MvccStore>,
{
    fn range(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    ) -> Result<crate::mvcc::RangeResult, MvccError> {
        if self.held_back.get() {
            // An earlier range of the same transaction was held back: its answer is dropped.
            return Ok(crate::mvcc::RangeResult::default());
        }
        let mut read = RangeRead::new(key, end.clone(), rev, limit, count_only, keys_only);
        let mut piece = || -> Result<(), MvccError> {
            // The guard goes at the end of each piece: writers get their turn between pieces.
            let store = (self.lock)();
            store.range_step(&mut read, self.piece_keys).map(drop)
        };
        piece()?;
        if read.walked() && !read.has_view() {
            return read.finish();
        }
        // A count keeps nothing, however many keys it visits.
        if !count_only && !(self.may_grow)() {
            self.held_back.set(true);
            return Ok(crate::mvcc::RangeResult::default());
        }
        // A large range: the rest of it keeps this thread busy for a while, so the tasks queued
        // behind it (raft, apply, other requests) move to another thread meanwhile, and the core
        // is offered to whichever thread waits for it between pieces.
        crate::rt::block_in_place(|| {
            while !read.walked() {
                crate::rt::yield_thread();
                let store = (self.lock)();
                store.range_step(&mut read, self.piece_keys)?;
            }
            read.finish()
        })
    }
}

impl ReadView for crate::mvcc::WriteTxn<'_> {
    fn range(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        limit: usize,
        count_only: bool,
        keys_only: bool,
    ) -> Result<crate::mvcc::RangeResult, MvccError> {
        crate::mvcc::WriteTxn::range(self, key, end, rev, limit, count_only, keys_only)
    }

    fn all_hold(
        &self,
        key: &[u8],
        end: &RangeEnd,
        keys_only: bool,
        holds: &mut dyn FnMut(&KeyValue) -> bool,
    ) -> Result<Option<bool>, MvccError> {
        match crate::mvcc::WriteTxn::all_hold(self, key, end, keys_only, &mut *holds) {
            Some(decided) => decided,
            // It has written: its own changes are read with the rest.
            None => all_hold_by_range(self, key, end, keys_only, holds),
        }
    }
}

#[cfg(test)]
mod atomic_tests;
#[cfg(test)]
mod range_tests;
#[cfg(test)]
mod tests;
