//! The Auth service in the differential test: users, roles and permissions over the generator's key
//! space, enabling and disabling auth, and logging in. A connection keeps the token of its last
//! successful `Authenticate` and sends it with every later request of every service, so while auth
//! is on the other requests run as someone (root, a user with some permissions, a stale token, or
//! nobody) and their permission checks are compared too.

use std::time::Duration;

use metastore::pb::authpb::{Permission, UserAddOptions};
use metastore::pb::etcdserverpb::{
    auth_client::AuthClient, AuthDisableRequest, AuthDisableResponse, AuthEnableRequest,
    AuthEnableResponse, AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest,
    AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest,
    AuthRoleListResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse,
    AuthUserChangePasswordRequest, AuthUserChangePasswordResponse, AuthUserDeleteRequest,
    AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest,
    AuthenticateResponse, ResponseHeader,
};
use tonic::transport::Channel;

/// User names: `root` (auth can only be enabled once it exists with the root role), two others
/// and the empty name (an error wherever a name is needed).
pub const USERS: [&str; 4] = ["root", "u1", "u2", ""];
/// Role names, likewise.
pub const ROLES: [&str; 4] = ["root", "r1", "r2", ""];
/// Passwords: the one most users get, the empty one, a wrong one.
pub const PASSWORDS: [&str; 3] = ["pw", "", "other"];

/// A client-side bcrypt hash of `pw` (etcd 3.5's `hashedPassword`), fixed so a replay sends the
/// same bytes.
pub fn hashed_pw() -> String {
    bcrypt::hash_with_salt("pw", 4, [0x5a; 16])
        .expect("bcrypt")
        .to_string()
}

/// An Auth request, or a client-side step of the login state.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthReq {
    Enable,
    Disable,
    Status,
    /// On success the connection keeps the token for every later request.
    Authenticate(AuthenticateRequest),
    /// The connection drops its token (no request is sent).
    Logout,
    UserAdd(AuthUserAddRequest),
    UserGet(AuthUserGetRequest),
    UserList,
    UserDelete(AuthUserDeleteRequest),
    UserChangePassword(AuthUserChangePasswordRequest),
    UserGrantRole(AuthUserGrantRoleRequest),
    UserRevokeRole(AuthUserRevokeRoleRequest),
    RoleAdd(AuthRoleAddRequest),
    RoleGet(AuthRoleGetRequest),
    RoleList,
    RoleDelete(AuthRoleDeleteRequest),
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

/// A server's answer to an [`AuthReq`] that succeeded.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthOut {
    Enable(AuthEnableResponse),
    Disable(AuthDisableResponse),
    Status(AuthStatusResponse),
    Authenticate(AuthenticateResponse),
    LoggedOut,
    UserAdd(AuthUserAddResponse),
    UserGet(AuthUserGetResponse),
    UserList(AuthUserListResponse),
    UserDelete(AuthUserDeleteResponse),
    UserChangePassword(AuthUserChangePasswordResponse),
    UserGrantRole(AuthUserGrantRoleResponse),
    UserRevokeRole(AuthUserRevokeRoleResponse),
    RoleAdd(AuthRoleAddResponse),
    RoleGet(AuthRoleGetResponse),
    RoleList(AuthRoleListResponse),
    RoleDelete(AuthRoleDeleteResponse),
    RoleGrantPermission(AuthRoleGrantPermissionResponse),
    RoleRevokePermission(AuthRoleRevokePermissionResponse),
}

/// Wrap `msg` for sending, with `token` (if any) in the `token` metadata etcd's clients use.
pub fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        if let Ok(v) = t.parse() {
            req.metadata_mut().insert("token", v);
        }
    }
    req
}

/// Send `req` on `client` with `token`; a successful `Authenticate` replaces `token`, `Logout`
/// clears it.
pub async fn exec(
    client: &mut AuthClient<Channel>,
    token: &mut Option<String>,
    req: &AuthReq,
    t: Duration,
) -> Result<AuthOut, tonic::Status> {
    use tokio::time::timeout;
    let tok = token.clone();
    let tok = tok.as_deref();
    let late = |_| tonic::Status::deadline_exceeded("differential: no answer in time");
    macro_rules! call {
        ($method:ident, $msg:expr, $variant:ident) => {
            timeout(t, client.$method(with_token($msg, tok)))
                .await
                .map_err(late)?
                .map(|r| AuthOut::$variant(r.into_inner()))
        };
    }
    match req {
        AuthReq::Enable => call!(auth_enable, AuthEnableRequest {}, Enable),
        AuthReq::Disable => {
            // etcd drops every token when auth goes off and, while it is off, still refuses an
            // unknown token on requests that go through raft; MetaStore ignores tokens while auth
            // is off (tests/etcd36_api.rs). The client forgets its token, as one that logs in
            // again after auth comes back does.
            let out = call!(auth_disable, AuthDisableRequest {}, Disable)?;
            *token = None;
            Ok(out)
        }
        AuthReq::Status => call!(auth_status, AuthStatusRequest {}, Status),
        AuthReq::Authenticate(r) => {
            let out = call!(authenticate, r.clone(), Authenticate)?;
            if let AuthOut::Authenticate(a) = &out {
                *token = Some(a.token.clone());
            }
            Ok(out)
        }
        AuthReq::Logout => {
            *token = None;
            Ok(AuthOut::LoggedOut)
        }
        AuthReq::UserAdd(r) => call!(user_add, r.clone(), UserAdd),
        AuthReq::UserGet(r) => call!(user_get, r.clone(), UserGet),
        AuthReq::UserList => call!(user_list, AuthUserListRequest {}, UserList),
        AuthReq::UserDelete(r) => call!(user_delete, r.clone(), UserDelete),
        AuthReq::UserChangePassword(r) => {
            call!(user_change_password, r.clone(), UserChangePassword)
        }
        AuthReq::UserGrantRole(r) => call!(user_grant_role, r.clone(), UserGrantRole),
        AuthReq::UserRevokeRole(r) => call!(user_revoke_role, r.clone(), UserRevokeRole),
        AuthReq::RoleAdd(r) => call!(role_add, r.clone(), RoleAdd),
        AuthReq::RoleGet(r) => call!(role_get, r.clone(), RoleGet),
        AuthReq::RoleList => call!(role_list, AuthRoleListRequest {}, RoleList),
        AuthReq::RoleDelete(r) => call!(role_delete, r.clone(), RoleDelete),
        AuthReq::RoleGrantPermission(r) => {
            call!(role_grant_permission, r.clone(), RoleGrantPermission)
        }
        AuthReq::RoleRevokePermission(r) => {
            call!(role_revoke_permission, r.clone(), RoleRevokePermission)
        }
    }
}

/// Mask what may differ in an auth answer: the headers (as everywhere) and the token's text
/// (random per server; whether one was given is kept).
pub fn mask(out: &mut AuthOut, mask_header: impl Fn(&mut Option<ResponseHeader>)) {
    match out {
        AuthOut::Enable(r) => mask_header(&mut r.header),
        AuthOut::Disable(r) => mask_header(&mut r.header),
        AuthOut::Status(r) => mask_header(&mut r.header),
        AuthOut::Authenticate(r) => {
            mask_header(&mut r.header);
            if !r.token.is_empty() {
                r.token = "masked".into();
            }
        }
        AuthOut::LoggedOut => {}
        AuthOut::UserAdd(r) => mask_header(&mut r.header),
        AuthOut::UserGet(r) => mask_header(&mut r.header),
        AuthOut::UserList(r) => mask_header(&mut r.header),
        AuthOut::UserDelete(r) => mask_header(&mut r.header),
        AuthOut::UserChangePassword(r) => mask_header(&mut r.header),
        AuthOut::UserGrantRole(r) => mask_header(&mut r.header),
        AuthOut::UserRevokeRole(r) => mask_header(&mut r.header),
        AuthOut::RoleAdd(r) => mask_header(&mut r.header),
        AuthOut::RoleGet(r) => mask_header(&mut r.header),
        AuthOut::RoleList(r) => mask_header(&mut r.header),
        AuthOut::RoleDelete(r) => mask_header(&mut r.header),
        AuthOut::RoleGrantPermission(r) => mask_header(&mut r.header),
        AuthOut::RoleRevokePermission(r) => mask_header(&mut r.header),
    }
}

/// A user-add request: a name, a password (or a client-side hash, or none with `no_password`).
pub fn user_add(name: &str, password: &str, hashed: Option<String>, no_password: bool) -> AuthReq {
    AuthReq::UserAdd(AuthUserAddRequest {
        name: name.into(),
        password: password.into(),
        options: Some(UserAddOptions { no_password }),
        hashed_password: hashed.unwrap_or_default(),
    })
}

/// A permission of type `perm_type` over `[key, range_end)`.
pub fn grant(role: &str, perm_type: i32, key: Vec<u8>, range_end: Vec<u8>) -> AuthReq {
    AuthReq::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type,
            key,
            range_end,
        }),
    })
}
