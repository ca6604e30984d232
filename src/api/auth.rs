//! The `etcdserverpb.Auth` service: enabling auth, logging in, and managing users, roles and
//! permissions.
//!
//! Changes go through raft as [`AuthCommand`]s; passwords are bcrypt-hashed here first (with
//! `--bcrypt-cost` and a salt from the runtime's random source), so apply stays cheap and
//! deterministic and no plaintext password is replicated or stored. `Authenticate` checks the
//! password on this member; a new simple token then goes through the log, so every member knows
//! it (as etcd 3.4 does), while a JWT is signed here and handed out at once: it carries its own
//! claims (see `auth::provider`).
//! Everything but `Authenticate` and `AuthStatus` needs the root role while auth is enabled; a user
//! may also read its own record and the roles it holds, as etcd 3.4 allows. `AuthStatus` answers
//! anyone, as etcd 3.7 does (a client that signs its own JWTs needs the auth revision to sign with).

use super::access::cert_user;
use super::status;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::Access;
use crate::apply::Applied;
use crate::auth::{AuthError, NewToken};
use crate::node::Node;
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::*;
use crate::pb::metastore::{auth_command, command, AuthCommand, Requester, TokenIssue};
use crate::rt;

/// Serves etcd's Auth RPCs.
pub struct AuthService {
    node: Arc<Node>,
    access: Arc<Access>,
}

impl AuthService {
    /// An auth service over `node`, sharing `access` (its tokens) with the other services.
    pub fn new(node: Arc<Node>, access: Arc<Access>) -> Self {
        Self { node, access }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(self.node.header(revision))
    }

    fn current_header(&self) -> Option<ResponseHeader> {
        self.header(self.node.current_revision())
    }

    /// Replicate an auth change asked for by a caller with root rights; the header revision.
    async fn change<T>(
        &self,
        request: &Request<T>,
        op: auth_command::Op,
    ) -> Result<Option<ResponseHeader>, Status> {
        let requester = self
            .access
            .permit_admin(request.metadata(), cert_user(request.extensions()))?;
        self.propose(op, requester).await
    }

    async fn propose(
        &self,
        op: auth_command::Op,
        requester: Requester,
    ) -> Result<Option<ResponseHeader>, Status> {
        let cmd = command::Op::Auth(AuthCommand { op: Some(op) });
        match self.node.propose_as(cmd, Some(requester)).await? {
            Applied::Auth(revision) => Ok(self.header(revision)),
            other => Err(status::unexpected_apply(&format!("{other:?}"))),
        }
    }

    /// A bcrypt hash of `password` at the configured cost, computed off the async workers in
    /// one of the member's places for password work.
    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.node.config().bcrypt_cost;
        let mut salt = [0u8; 16];
        for chunk in salt.chunks_mut(8) {
            chunk.copy_from_slice(&rt::random_u64().to_le_bytes());
        }
        self.access
            .password_work(move || bcrypt::hash_with_salt(password.as_bytes(), cost, salt))
            .await?
            .map(|parts| parts.to_string())
            .map_err(status::password_hash_failed)
    }

    /// Root may read anything; another user only what `own` says is its own (a caller without a
    /// user is asked about as the user named "").
    fn check_read<T>(
        &self,
        request: &Request<T>,
        own: impl Fn(&str) -> bool,
    ) -> Result<(), Status> {
        let caller = self
            .access
            .caller(request.metadata(), cert_user(request.extensions()))?;
        match self.access.check_admin(&caller) {
            Ok(_) => Ok(()),
            Err(AuthError::PermissionDenied) if caller.user().is_some_and(&own) => Ok(()),
            // etcd compares the name asked for with the caller's, the empty one for a caller
            // without a user: such a caller may ask after user "" (and is told it is not found).
            Err(AuthError::UserEmpty) if caller.user().is_none() && own("") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self
            .change(&request, auth_command::Op::Enable(AuthEnableRequest {}))
            .await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self
            .change(&request, auth_command::Op::Disable(AuthDisableRequest {}))
            .await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        // etcd 3.7 answers without a token (3.5 and 3.6 want root). A token that is sent must
        // still be valid: etcd resolves it before proposing the request.
        self.access
            .caller(request.metadata(), cert_user(request.extensions()))?;
        self.node.linearize().await?;
        let (enabled, auth_revision) = {
            let auth = self.node.auth();
            (auth.enabled(), auth.revision())
        };
        Ok(Response::new(AuthStatusResponse {
            header: self.current_header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        self.node.linearize().await?;
        // The hash and the auth revision it belongs to, read together: a token names the
        // revision its password was checked at.
        let (hash, checked_revision) = {
            let auth = self.node.auth();
            if !auth.enabled() {
                return Err(AuthError::AuthNotEnabled.into());
            }
            let user = auth.user(&req.name).ok_or(AuthError::AuthFailed)?;
            if user.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(AuthError::NoPasswordUser.into());
            }
            (user.password.clone(), auth.revision())
        };
        let stored = String::from_utf8(hash.clone()).map_err(|_| AuthError::AuthFailed)?;
        let password = req.password;
        let matches = self
            .access
            .password_work(move || bcrypt::verify(password.as_bytes(), &stored))
            .await?
            .unwrap_or(false);
        if !matches {
            return Err(AuthError::AuthFailed.into());
        }
        let token = match self.node.tokens().issue(&req.name, checked_revision)? {
            // A JWT needs no member to record it: hand it out as it is.
            NewToken::Signed(token) => {
                return Ok(Response::new(AuthenticateResponse {
                    header: self.current_header(),
                    token,
                }))
            }
            NewToken::Replicate(token) => token,
        };
        let issue = TokenIssue {
            user: req.name,
            token,
            password_hash: hash,
        };
        let cmd = command::Op::Auth(AuthCommand {
            op: Some(auth_command::Op::TokenIssue(issue)),
        });
        let (header, token) = match self.node.propose(cmd).await? {
            Applied::TokenIssued {
                revision, token, ..
            } => (self.header(revision), token),
            other => return Err(status::unexpected_apply(&format!("{other:?}"))),
        };
        Ok(Response::new(AuthenticateResponse { header, token }))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let requester = self
            .access
            .permit_admin(request.metadata(), cert_user(request.extensions()))?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(AuthError::UserEmpty.into());
        }
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        let hashed_password = if no_password {
            String::new()
        } else {
            self.hash(req.password).await?
        };
        let change = AuthUserAddRequest {
            name: req.name,
            password: String::new(),
            options: req.options,
            hashed_password,
        };
        let header = self
            .propose(auth_command::Op::UserAdd(change), requester)
            .await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.check_read(&request, |me| me == name)?;
        self.node.linearize().await?;
        let roles = self
            .node
            .auth()
            .user(&name)
            .map(|u| u.roles.clone())
            .ok_or(AuthError::UserNotFound)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.current_header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.access
            .permit_admin(request.metadata(), cert_user(request.extensions()))?;
        self.node.linearize().await?;
        let users = self.node.auth().user_names();
        Ok(Response::new(AuthUserListResponse {
            header: self.current_header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let op = auth_command::Op::UserDelete(request.get_ref().clone());
        let header = self.change(&request, op).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let requester = self
            .access
            .permit_admin(request.metadata(), cert_user(request.extensions()))?;
        let req = request.into_inner();
        let no_password = match self.node.auth().user(&req.name) {
            None => return Err(AuthError::UserNotFound.into()),
            Some(user) => user.options.as_ref().is_some_and(|o| o.no_password),
        };
        let hashed_password = if !req.password.is_empty() {
            self.hash(req.password).await?
        } else if no_password {
            // A user added without a password keeps none (apply leaves it so).
            String::new()
        } else {
            client_hash(&req.hashed_password)?
        };
        let change = AuthUserChangePasswordRequest {
            name: req.name,
            password: String::new(),
            hashed_password,
        };
        let header = self
            .propose(auth_command::Op::UserChangePassword(change), requester)
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let op = auth_command::Op::UserGrantRole(request.get_ref().clone());
        let header = self.change(&request, op).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let op = auth_command::Op::UserRevokeRole(request.get_ref().clone());
        let header = self.change(&request, op).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        if request.get_ref().name.is_empty() {
            self.access
                .permit_admin(request.metadata(), cert_user(request.extensions()))?;
            return Err(AuthError::RoleEmpty.into());
        }
        let op = auth_command::Op::RoleAdd(request.get_ref().clone());
        let header = self.change(&request, op).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let name = request.get_ref().role.clone();
        let node = self.node.clone();
        self.check_read(&request, |me| {
            node.auth()
                .user(me)
                .is_some_and(|u| u.roles.contains(&name))
        })?;
        self.node.linearize().await?;
        let perm = self
            .node
            .auth()
            .role(&name)
            .map(|r| r.key_permission.clone())
            .ok_or(AuthError::RoleNotFound)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.current_header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.access
            .permit_admin(request.metadata(), cert_user(request.extensions()))?;
        self.node.linearize().await?;
        let roles = self.node.auth().role_names();
        Ok(Response::new(AuthRoleListResponse {
            header: self.current_header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let op = auth_command::Op::RoleDelete(request.get_ref().clone());
        let header = self.change(&request, op).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        // Any permission type is stored as it is, as etcd 3.5 does; one it does not know grants
        // nothing.
        if request.get_ref().perm.is_none() {
            self.access
                .permit_admin(request.metadata(), cert_user(request.extensions()))?;
            return Err(AuthError::PermissionNotGiven.into());
        }
        let op = auth_command::Op::RoleGrantPermission(request.get_ref().clone());
        let header = self.change(&request, op).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let op = auth_command::Op::RoleRevokePermission(request.get_ref().clone());
        let header = self.change(&request, op).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}

/// The password hash a client sent itself in a password change without a password (etcd 3.5's
/// `hashedPassword`: a bcrypt hash, base64-encoded). Text that is not base64 is refused with
/// etcd's error for it. Decoded bytes that are not text cannot be a bcrypt hash: stored as no
/// hash, which no password matches, as etcd's stored bytes would match none.
fn client_hash(encoded: &str) -> Result<String, AuthError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| AuthError::NoPasswordUser)?;
    Ok(String::from_utf8(bytes).unwrap_or_default())
}
