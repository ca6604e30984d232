//! Users, roles, permissions and tokens: etcd's v3 auth model.
//!
//! - [`store`]: the replicated auth state (enabled flag, auth revision, users with bcrypt hashes,
//!   roles with key permissions), changed only by applied raft commands and kept in the engine's
//!   `Meta` keyspace under `auth/`, so it survives restarts and travels in snapshots and backups.
//! - [`perms`]: what a request needs (key ranges and read/write) and whether a user's roles cover it.
//! - [`tokens`]: etcd's "simple" tokens, which every member records in memory (they are issued
//!   through the log) and which expire after a TTL that every use renews.
//! - [`jwt`]: etcd's JWT tokens, signed and self-contained: no member holds them, any member with
//!   the verifying key accepts them until their `exp`.
//! - [`provider`]: which of the two this member issues and accepts (`--auth-token`), and the rules
//!   that void a token when it is used.
//!
//! Nothing here knows gRPC; `api::status` maps [`AuthError`] to etcd's codes and texts.

pub mod jwt;
pub mod perms;
pub mod provider;
pub mod store;
pub mod tokens;

pub use perms::{Need, PermKind};
pub use provider::{NewToken, TokenProvider, TokenUser};
pub use store::{AuthStore, ROOT};
pub use tokens::TokenTable;

/// Why an auth operation or a permission check failed. Each is an expected answer to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name already exists")]
    UserAlreadyExist,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleAlreadyExist,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// Logging in as a user added without a password, or a password change whose client-side
    /// hash is not base64 (etcd 3.5 reuses the one error for both).
    #[error("authentication failed, password was given for no password user")]
    NoPasswordUser,
    #[error("permission denied")]
    PermissionDenied,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("permission not given")]
    PermissionNotGiven,
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    #[error("invalid auth token")]
    InvalidAuthToken,
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    #[error("revision of auth store is old")]
    AuthOldRevision,
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("cannot sign a token: {0}")]
    TokenSign(String),
}
