//! Who is calling and what they may do: the one place where a request's token becomes a user and a
//! request becomes the permissions it needs (`auth::perms`), checked against the auth state.
//!
//! The token arrives in gRPC metadata `token` (what etcdctl and the etcd clients send after
//! `Authenticate`; etcd's gateway's `authorization` works too). While auth is disabled every
//! request may do everything and tokens are ignored. While it is enabled a request without a token
//! has no user ("user name is empty"), one with an unknown or expired token fails with "invalid
//! auth token", and a token is void once its user is deleted, changes password (simple tokens), or
//! auth was disabled since it was issued (`auth::provider`). A JWT also keeps the auth revision it
//! was issued at: key access with one issued before the latest auth change is refused with
//! "revision of auth store is old", as in etcd 3.4. A write carries the [`Requester`] it was
//! checked as, so apply can refuse it if auth changed before it committed.

use std::sync::Arc;

use tonic::metadata::MetadataMap;

use crate::auth::perms::{self, Need, PermKind};
use crate::auth::{AuthError, AuthStore, TokenUser};
use crate::node::{wait_for_place, Node, NodeError};
use crate::pb::metastore::Requester;
use crate::{limits, rt};

pub use crate::net::request_conn::{cert_user, cert_valid_for};

/// gRPC metadata keys that carry the token.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// The caller of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// `None`: no token (or auth is disabled).
    user: Option<String>,
    /// The auth revision fixed in the caller's token (a JWT); `None` when the caller stands for
    /// the current auth state (a simple token, a client certificate, no token).
    token_revision: Option<u64>,
}

impl Caller {
    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Check that this caller has every one of `needs` under the auth state `auth`. As etcd's
    /// isOpPermitted, a token issued before the latest auth change is refused first.
    pub fn check_in(&self, auth: &AuthStore, needs: &[Need]) -> Result<(), AuthError> {
        if auth.enabled() && self.token_revision.is_some_and(|r| r < auth.revision()) {
            return Err(AuthError::AuthOldRevision);
        }
        auth.check(self.user(), needs)
    }
}

/// Token resolution and permission checks for every client service of one member.
pub struct Access {
    node: Arc<Node>,
    /// Places for password work (bcrypt, slow on purpose) running at once, at most
    /// [`limits::heavy_work_places`]: a flood of logins with a wrong password, which anyone can
    /// send, cannot take every core from the member's other work.
    password_work: Arc<tokio::sync::Semaphore>,
}

impl Access {
    /// Access control over `node` (its token provider is the node's: simple tokens come through
    /// the log).
    pub fn new(node: Arc<Node>) -> Arc<Self> {
        Arc::new(Self {
            node,
            password_work: Arc::new(tokio::sync::Semaphore::new(limits::heavy_work_places())),
        })
    }

    /// Run password `work` (a bcrypt hash or check) off the async workers once one of the
    /// member's places for it is free. A request that waits the whole request timeout for one
    /// is refused with etcd's "too many requests".
    pub async fn password_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let place = wait_for_place(&self.password_work, self.node.config().request_timeout).await?;
        // The place goes with the work: a caller that leaves cannot stop a check that started,
        // so its place is given back only when the check ends.
        rt::spawn_blocking(move || {
            let out = work();
            drop(place);
            out
        })
        .await
        .map_err(NodeError::Work)
    }

    /// The caller of a request with `metadata`, over a connection whose verified client
    /// certificate names `cert_user` (see [`cert_user`]).
    pub fn caller(
        &self,
        metadata: &MetadataMap,
        cert_user: Option<&str>,
    ) -> Result<Caller, AuthError> {
        let auth = self.node.auth();
        if !auth.enabled() {
            return Ok(Caller::default());
        }
        let Some(token) = TOKEN_KEYS
            .iter()
            .find_map(|k| metadata.get(*k))
            .map(|v| v.to_str().map_err(|_| AuthError::InvalidAuthToken))
            .transpose()?
        else {
            // etcd's AuthInfoFromTLS: without a token, a client whose certificate the trusted CA
            // signed (`--client-cert-auth`) acts as the user its common name names.
            return Ok(Caller {
                user: cert_user.map(str::to_string),
                token_revision: None,
            });
        };
        let TokenUser { user, revision } = self.node.tokens().resolve(token, &auth)?;
        Ok(Caller {
            user: Some(user),
            token_revision: revision,
        })
    }

    /// Check that `caller` has every one of `needs` now; the requester to propose a write with.
    pub fn check(&self, caller: &Caller, needs: &[Need]) -> Result<Requester, AuthError> {
        let auth = self.node.auth();
        caller.check_in(&auth, needs)?;
        Ok(requester(caller, auth.revision()))
    }

    /// Check that `caller` may administer auth and membership (holds the root role).
    pub fn check_admin(&self, caller: &Caller) -> Result<Requester, AuthError> {
        let auth = self.node.auth();
        auth.check_admin(caller.user())?;
        Ok(requester(caller, auth.revision()))
    }

    /// The caller of `metadata`, checked for `needs`.
    pub fn permit(
        &self,
        metadata: &MetadataMap,
        cert_user: Option<&str>,
        needs: &[Need],
    ) -> Result<Requester, AuthError> {
        let caller = self.caller(metadata, cert_user)?;
        self.check(&caller, needs)
    }

    /// The caller of `metadata`, who must be a user that exists while auth is enabled: what every
    /// RPC etcd 3.4 leaves unchecked (Status, Alarm, MemberList, Compact, the lease RPCs) asks for
    /// here, so an unauthenticated client reaches nothing but `Authenticate`, `AuthStatus` (as in
    /// etcd 3.7) and the HTTP health, version and metrics endpoints.
    pub fn authenticated(
        &self,
        metadata: &MetadataMap,
        cert_user: Option<&str>,
    ) -> Result<Requester, AuthError> {
        self.permit(metadata, cert_user, &[])
    }

    /// The caller of `metadata`, checked for admin rights.
    pub fn permit_admin(
        &self,
        metadata: &MetadataMap,
        cert_user: Option<&str>,
    ) -> Result<Requester, AuthError> {
        let caller = self.caller(metadata, cert_user)?;
        self.check_admin(&caller)
    }

    /// What a put needs: its own needs and, if it attaches a lease, write access to every key
    /// already attached to that lease (etcd: a user who could not revoke the lease may not attach
    /// to it).
    pub fn put_needs(&self, req: &crate::pb::etcdserverpb::PutRequest) -> Vec<Need> {
        let mut needs = perms::put_needs(req);
        if req.lease != 0 && self.node.auth().enabled() {
            needs.extend(self.lease_needs(req.lease));
        }
        needs
    }

    /// What revoking lease `id` needs: write access to every key attached to it.
    pub fn lease_needs(&self, id: i64) -> Vec<Need> {
        self.node
            .lease_keys(id)
            .iter()
            .map(|k| Need::new(PermKind::Write, k, &[]))
            .collect()
    }

    /// What listing the keys attached to lease `id` needs: read access to each of them.
    pub fn lease_read_needs(&self, id: i64) -> Vec<Need> {
        self.node
            .lease_keys(id)
            .iter()
            .map(|k| Need::new(PermKind::Read, k, &[]))
            .collect()
    }

    /// What a prefix `name/…` lock or election needs: to read and write its keys.
    pub fn prefix_needs(prefix: &[u8]) -> Vec<Need> {
        let end = crate::keys::prefix_end(prefix);
        vec![
            Need::new(PermKind::Read, prefix, &end),
            Need::new(PermKind::Write, prefix, &end),
        ]
    }

    /// What deleting or overwriting one key after comparing it needs.
    pub fn key_rw_needs(key: &[u8]) -> Vec<Need> {
        vec![
            Need::new(PermKind::Read, key, &[]),
            Need::new(PermKind::Write, key, &[]),
        ]
    }
}

fn requester(caller: &Caller, auth_revision: u64) -> Requester {
    Requester {
        username: caller.user().unwrap_or_default().to_string(),
        auth_revision,
    }
}
