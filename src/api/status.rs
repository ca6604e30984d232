//! The only place that builds a `tonic::Status`: every error gets etcd's gRPC code and exact message,
//! so clients that match on them (clientv3's `rpctypes`, etcdctl) behave as they do against etcd.

use tonic::{Code, Status};

use super::json::GatewayError;
use super::peer::PeerRefusal;
use super::validate::ValidationError;
use crate::apply::ApplyError;
use crate::auth::AuthError;
use crate::cluster::version::DowngradeError;
use crate::cluster::MembershipError;
use crate::node::NodeError;

fn status(code: Code, msg: &str) -> Status {
    Status::new(code, msg)
}

/// The gRPC health service's answer for a service name it does not know (grpc-go's text).
pub fn unknown_health_service() -> Status {
    status(Code::NotFound, "unknown service")
}

impl From<ValidationError> for Status {
    fn from(e: ValidationError) -> Self {
        match e {
            ValidationError::EmptyKey => {
                status(Code::InvalidArgument, "etcdserver: key is not provided")
            }
            ValidationError::TooManyOps => status(
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            ValidationError::DuplicateKey => status(
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            ValidationError::InvalidSortOption => {
                status(Code::InvalidArgument, "etcdserver: invalid sort option")
            }
            ValidationError::ValueProvided => {
                status(Code::InvalidArgument, "etcdserver: value is provided")
            }
            ValidationError::LeaseProvided => {
                status(Code::InvalidArgument, "etcdserver: lease is provided")
            }
            ValidationError::EmptyRequestOp => {
                status(Code::InvalidArgument, "etcdserver: key not found")
            }
            ValidationError::LeaseTtlTooLarge => {
                status(Code::OutOfRange, "etcdserver: too large lease TTL")
            }
            // etcd 3.7 builds these two in its KV service, without the `etcdserver: ` prefix.
            ValidationError::StreamSortUnsupported => status(
                Code::Unimplemented,
                "RangeStream does not support custom sort orders",
            ),
            ValidationError::StreamRevisionFiltersUnsupported => status(
                Code::Unimplemented,
                "RangeStream does not support revision filters",
            ),
            // etcd's ErrUnknownMethod is not in rpctypes: code Unknown.
            ValidationError::UnknownMethod => status(Code::Unknown, "etcdserver: unknown method"),
            ValidationError::WrongDowngradeVersionFormat => DowngradeError::WrongFormat.into(),
        }
    }
}

impl From<ApplyError> for Status {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Compacted => status(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            ApplyError::FutureRevision => status(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            ApplyError::KeyNotFound => status(Code::InvalidArgument, "etcdserver: key not found"),
            ApplyError::LeaseNotFound => {
                status(Code::NotFound, "etcdserver: requested lease not found")
            }
            ApplyError::LeaseExists => {
                status(Code::FailedPrecondition, "etcdserver: lease already exists")
            }
            ApplyError::EmptyCommand => {
                status(Code::Internal, "etcdserver: undecodable replicated command")
            }
            ApplyError::Storage(e) => status(Code::Internal, &format!("etcdserver: {e}")),
            // The member stops on this; a client waiting for the entry learns only that.
            ApplyError::Invariant(_) => status(Code::Unavailable, "etcdserver: server stopped"),
            ApplyError::Auth(e) => e.into(),
            ApplyError::Downgrade(e) => e.into(),
        }
    }
}

impl From<DowngradeError> for Status {
    fn from(e: DowngradeError) -> Self {
        let code = match e {
            DowngradeError::WrongFormat | DowngradeError::InvalidTarget => Code::InvalidArgument,
            DowngradeError::InProcess | DowngradeError::NoInflight => Code::FailedPrecondition,
        };
        status(code, &format!("etcdserver: {e}"))
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        // etcd's rpctypes codes for each auth error.
        let code = match e {
            // Errors of etcd's auth store and token provider that rpctypes does not map: code
            // Unknown and the auth store's own text.
            AuthError::VerifyOnly | AuthError::TokenSign(_) | AuthError::NoPasswordUser => {
                return status(Code::Unknown, &format!("auth: {e}"))
            }
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::InvalidAuthMgmt
            | AuthError::AuthOldRevision
            | AuthError::PermissionNotGiven => Code::InvalidArgument,
            AuthError::UserAlreadyExist
            | AuthError::UserNotFound
            | AuthError::RoleAlreadyExist
            | AuthError::RoleNotFound
            | AuthError::RoleNotGranted
            | AuthError::PermissionNotGranted
            | AuthError::AuthNotEnabled
            | AuthError::RootUserNotExist
            | AuthError::RootRoleNotExist => Code::FailedPrecondition,
            AuthError::PermissionDenied => Code::PermissionDenied,
            AuthError::InvalidAuthToken => Code::Unauthenticated,
        };
        status(code, &format!("etcdserver: {e}"))
    }
}

/// The status of a refused `Maintenance` admin call (defragment, snapshot, hash, hashkv): etcd's
/// maintenance server returns the auth store's own error, which reaches the client as code Unknown
/// with an `auth: ` message (`etcdctl defrag` prints "auth: permission denied").
pub fn maintenance_denied(e: AuthError) -> Status {
    status(Code::Unknown, &format!("auth: {e}"))
}

/// A watch create request refused because its stream holds
/// [`crate::limits::WATCH_STREAM_WATCHERS_MAX`] watchers (a limit etcd does not have, so the text
/// is our own).
pub fn watch_stream_full_reason() -> String {
    format!(
        "metastore: too many watchers on one watch stream (at most {}); cancel some or open another stream",
        crate::limits::WATCH_STREAM_WATCHERS_MAX
    )
}

/// How a watch stream ends when it is evicted: while the member's watch buffers were full it
/// held some and its client took nothing for too long (`watch::WatchBudget`). `Unavailable`, as
/// for a member going away: clients open a new stream and resume each watcher from its last
/// revision (etcd's Go client does so for this code).
pub fn watch_stream_evicted() -> Status {
    Status::unavailable(
        "metastore: watch stream evicted: it took no events for too long while the member's watch buffers were full",
    )
}

/// Why a watch create is refused when the member holds `max` watchers (`--max-watchers`).
pub fn watch_member_full_reason(max: usize) -> String {
    format!(
        "metastore: too many watchers on this member (at most {max}, --max-watchers); try again later"
    )
}

/// A watch create request refused for `e`: etcd cancels it with the error's full gRPC text as the
/// reason.
pub fn watch_cancel_reason(e: AuthError) -> String {
    let s = Status::from(e);
    format!(
        "rpc error: code = {} desc = {}",
        grpc_code_name(s.code()),
        s.message()
    )
}

/// The name grpc-go prints for a code (`codes.Code.String()`).
fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

impl From<MembershipError> for Status {
    fn from(e: MembershipError) -> Self {
        let code = match &e {
            MembershipError::MemberNotFound => Code::NotFound,
            MembershipError::PeerUrlExists
            | MembershipError::LearnerNotReady
            | MembershipError::NotLearner
            | MembershipError::TooManyLearners
            | MembershipError::NotEnoughStarted
            | MembershipError::NotLeader
            | MembershipError::BadLeaderTransferee => Code::FailedPrecondition,
            MembershipError::BadUrls => Code::InvalidArgument,
            MembershipError::NoLeader
            | MembershipError::Busy
            | MembershipError::Timeout
            | MembershipError::Other(_) => Code::Unavailable,
        };
        status(code, &e.to_string())
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::RequestTooLarge => {
                status(Code::InvalidArgument, "etcdserver: request is too large")
            }
            NodeError::Timeout => status(Code::Unavailable, "etcdserver: request timed out"),
            NodeError::NoLeader => status(Code::Unavailable, "etcdserver: no leader"),
            NodeError::LeaderChanged => status(Code::Unavailable, "etcdserver: leader changed"),
            NodeError::LeaderFailed => status(
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to previous leader failure",
            ),
            NodeError::Membership(e) => e.into(),
            NodeError::Stopped => status(Code::Unavailable, "etcdserver: server stopped"),
            // etcd's text for a server that cannot take more work now.
            NodeError::TooManyRequests => {
                status(Code::ResourceExhausted, "etcdserver: too many requests")
            }
            // The client stopped taking pieces; it gets this if it ever reads again.
            NodeError::SnapshotStalled => status(
                Code::DeadlineExceeded,
                &format!("etcdserver: {}", NodeError::SnapshotStalled),
            ),
            NodeError::NoSpace => status(
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            NodeError::Corrupt => status(Code::DataLoss, "etcdserver: corrupt cluster"),
            NodeError::Apply(e) => e.into(),
            NodeError::Storage(e) => status(Code::Internal, &format!("etcdserver: {e}")),
            NodeError::Raft(e) | NodeError::Defrag(e) => {
                status(Code::Unavailable, &format!("etcdserver: {e}"))
            }
            NodeError::PeerMessage(e) | NodeError::Work(e) => {
                status(Code::Unavailable, &format!("etcdserver: {e}"))
            }
            NodeError::PeerDial(e) => status(Code::Unavailable, &format!("etcdserver: {e}")),
            NodeError::UnexpectedOutcome(what) => unexpected_apply(what),
        }
    }
}

impl From<PeerRefusal> for Status {
    fn from(e: PeerRefusal) -> Self {
        let code = match &e {
            PeerRefusal::CertificateRefused
            | PeerRefusal::ClusterIdMismatch
            | PeerRefusal::MemberUnnamed
            | PeerRefusal::NotAMember(_)
            | PeerRefusal::ForeignCommand { .. } => Code::PermissionDenied,
            PeerRefusal::Undecodable(_)
            | PeerRefusal::UndecodableCommand(_)
            | PeerRefusal::ChunkAfterLast
            | PeerRefusal::BadChunk(_)
            | PeerRefusal::BatchTooLong(_)
            | PeerRefusal::EmptySnapshot => Code::InvalidArgument,
            PeerRefusal::Unencodable(_) => Code::Internal,
            PeerRefusal::SnapshotBusy => Code::Unavailable,
            PeerRefusal::SnapshotSuperseded | PeerRefusal::SnapshotCut => Code::Aborted,
            PeerRefusal::SnapshotChunkLate => Code::DeadlineExceeded,
        };
        Status::new(code, e.to_string())
    }
}

/// An apply result of another kind than the command's (a bug: apply answers each command with
/// its own kind).
pub fn unexpected_apply(what: &str) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result for {what}"))
}

/// The key a lock was just granted under is gone from the txn's own answer (a bug).
pub fn lock_key_vanished() -> Status {
    Status::internal("etcdserver: lock key vanished")
}

/// bcrypt failed to hash a password.
pub fn password_hash_failed(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("etcdserver: cannot hash password: {e}"))
}

/// A large answer the client did not take within its deadline (`api::held_body`).
pub fn answer_not_taken() -> Status {
    Status::deadline_exceeded("etcdserver: the client did not take its answer in time")
}

/// etcd's v3election errors, as its in-process client answers them (code Unknown).
pub fn election_not_leader() -> Status {
    Status::unknown("election: not leader")
}

/// No leader in the election (v3election's `ErrElectionNoLeader`).
pub fn election_no_leader() -> Status {
    Status::unknown("election: no leader")
}

/// Proclaim and Resign without a leader key (etcd 3.5 checks this before anything else).
pub fn election_missing_leader_key() -> Status {
    Status::unknown(r#""leader" field must be provided"#)
}

impl From<GatewayError> for Status {
    /// A unary gateway request whose body could not be read, as grpc-gateway reports it.
    fn from(e: GatewayError) -> Self {
        match &e {
            GatewayError::BadJson(_) | GatewayError::UnexpectedEof => {
                status(Code::InvalidArgument, &e.to_string())
            }
            GatewayError::TooLarge(max) => status(
                Code::ResourceExhausted,
                &format!("grpc: received message larger than max (more than {max} bytes)"),
            ),
            GatewayError::NoService(service) => {
                status(Code::Unimplemented, &format!("unknown service {service}"))
            }
        }
    }
}

/// An error of a v3lock or v3election call: etcd serves those through an in-process client,
/// whose errors are not gRPC statuses, so the caller gets code Unknown with etcd's text
/// (`etcdserver: requested lease not found`, `etcdserver: user name is empty`, ...), as the
/// differential test asks etcd 3.5.1.
pub fn through_client(s: Status) -> Status {
    status(Code::Unknown, s.message())
}

/// The first request of a streaming gateway call could not be read: grpc-gateway reports the
/// decoder's error as it is, with code Unknown.
pub fn gateway_stream_error(e: GatewayError) -> Status {
    match e {
        GatewayError::BadJson(_) | GatewayError::UnexpectedEof => {
            status(Code::Unknown, &e.to_string())
        }
        other => other.into(),
    }
}

/// The HTTP status grpc-gateway (v1, as in etcd 3.4 and 3.5) answers a gRPC code with.
/// `FailedPrecondition` is 400, not 412 (grpc-gateway maps it so on purpose; etcd 3.5.1 answers
/// "role name not found" with 400, as the JSON differential test asks it).
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 408,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(s: Status) -> (Code, String) {
        (s.code(), s.message().to_string())
    }

    #[test]
    fn auth_codes_and_texts_match_etcd() {
        let cases = [
            (
                AuthError::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                AuthError::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                AuthError::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                AuthError::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                AuthError::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            (
                AuthError::RootRoleNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                AuthError::AuthOldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            (
                AuthError::InvalidAuthMgmt,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
            (
                AuthError::UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            // etcd's ErrVerifyOnly is not in rpctypes: Unknown, with the auth store's text.
            (
                AuthError::VerifyOnly,
                Code::Unknown,
                "auth: token signing attempted with verify-only key",
            ),
        ];
        for (e, code, text) in cases {
            assert_eq!(pair(e.into()), (code, text.to_string()));
        }
        assert_eq!(
            watch_cancel_reason(AuthError::PermissionDenied),
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        );
        assert_eq!(
            pair(maintenance_denied(AuthError::PermissionDenied)),
            (Code::Unknown, "auth: permission denied".into())
        );
    }

    #[test]
    fn etcd_codes_and_texts() {
        assert_eq!(
            pair(NodeError::Timeout.into()),
            (Code::Unavailable, "etcdserver: request timed out".into())
        );
        assert_eq!(
            pair(NodeError::RequestTooLarge.into()),
            (
                Code::InvalidArgument,
                "etcdserver: request is too large".into()
            )
        );
        assert_eq!(
            pair(NodeError::NoSpace.into()),
            (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded".into()
            )
        );
        assert_eq!(
            pair(NodeError::Corrupt.into()),
            (Code::DataLoss, "etcdserver: corrupt cluster".into())
        );
        assert_eq!(
            pair(NodeError::Apply(ApplyError::Compacted).into()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted".into()
            )
        );
        assert_eq!(
            pair(ValidationError::DuplicateKey.into()),
            (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request".into()
            )
        );
    }

    #[test]
    fn downgrade_codes_and_texts_are_etcd_3_6s() {
        let cases: [(Status, Code, &str); 6] = [
            (
                ValidationError::UnknownMethod.into(),
                Code::Unknown,
                "etcdserver: unknown method",
            ),
            (
                ValidationError::WrongDowngradeVersionFormat.into(),
                Code::InvalidArgument,
                "etcdserver: wrong downgrade target version format",
            ),
            (
                DowngradeError::InvalidTarget.into(),
                Code::InvalidArgument,
                "etcdserver: invalid downgrade target version",
            ),
            (
                DowngradeError::InProcess.into(),
                Code::FailedPrecondition,
                "etcdserver: cluster has a downgrade job in progress",
            ),
            (
                DowngradeError::NoInflight.into(),
                Code::FailedPrecondition,
                "etcdserver: no inflight downgrade job",
            ),
            (
                NodeError::Apply(ApplyError::Downgrade(DowngradeError::InProcess)).into(),
                Code::FailedPrecondition,
                "etcdserver: cluster has a downgrade job in progress",
            ),
        ];
        for (status, code, text) in cases {
            assert_eq!(pair(status), (code, text.to_string()));
        }
    }
}
