//! The one place that knows which kind of auth token this member issues and accepts
//! (`--auth-token`): etcd's simple tokens ([`super::tokens`]) or JWTs ([`super::jwt`]).
//!
//! The kinds differ in where a token lives: a simple token is a random string every member must
//! record (so `Authenticate` replicates it through the log and apply records it here), a JWT
//! carries its own signed claims (so it is handed out at once and verified anywhere). Both are
//! voided by the same rules when used: the user is gone, or auth was disabled and enabled again
//! since the token was issued; a simple token also dies with a password change. A JWT keeps the
//! auth revision it was issued at, and [`TokenUser::revision`] hands it to the permission check,
//! which refuses it once auth has changed since ("revision of auth store is old"), as etcd 3.4
//! does: the client logs in again.

use std::time::Duration;

use super::jwt::{JwtKeyError, JwtTokens};
use super::tokens::{new_token, TokenInfo, TokenTable};
use super::{AuthError, AuthStore};
use crate::config::AuthTokenSpec;
use crate::limits;
use crate::rt;

/// How this member's auth tokens are made and checked.
pub enum TokenProvider {
    /// Random tokens recorded on every member through the log (`simple`).
    Simple(TokenTable),
    /// Signed JSON Web Tokens (`jwt,...`).
    Jwt(JwtTokens),
}

/// A new token from [`TokenProvider::issue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewToken {
    /// A simple token: valid only once every member has recorded it, so it must go through the
    /// log (a `TokenIssue` command) before it is handed out.
    Replicate(String),
    /// A JWT: valid as it is.
    Signed(String),
}

/// Who a presented token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    /// The authenticated user.
    pub user: String,
    /// The auth revision the token was issued at, if it is fixed in the token (a JWT); `None`
    /// for a simple token, which stands for the current auth state while it lives.
    pub revision: Option<u64>,
}

impl TokenProvider {
    /// The provider `spec` asks for; simple tokens live `simple_ttl` after their last use. Reads
    /// and checks the JWT key files.
    pub fn open(spec: &AuthTokenSpec, simple_ttl: Duration) -> Result<Self, JwtKeyError> {
        Ok(match spec {
            AuthTokenSpec::Simple => Self::Simple(TokenTable::new(simple_ttl)),
            AuthTokenSpec::Jwt(jwt) => Self::Jwt(JwtTokens::load(jwt)?),
        })
    }

    /// A new token for `user`, whose password was checked at `auth_revision`.
    pub fn issue(&self, user: &str, auth_revision: u64) -> Result<NewToken, AuthError> {
        match self {
            Self::Simple(_) => Ok(NewToken::Replicate(new_token())),
            Self::Jwt(jwt) => jwt
                .sign(user, auth_revision, rt::wall_clock())
                .map(NewToken::Signed),
        }
    }

    /// Record a simple token that a committed `TokenIssue` carries. A JWT member has nothing to
    /// record: such an entry can only come from a member configured for simple tokens, whose
    /// tokens this member does not accept.
    pub fn record(&self, token: String, info: TokenInfo) {
        match self {
            Self::Simple(table) => table.insert(token, info),
            Self::Jwt(_) => {}
        }
    }

    /// The user `token` stands for under the auth state `auth` (enabled), or "invalid auth
    /// token" if it is unknown, expired, forged, or void.
    pub fn resolve(&self, token: &str, auth: &AuthStore) -> Result<TokenUser, AuthError> {
        if token.len() > limits::AUTH_TOKEN_BYTES_MAX {
            return Err(AuthError::InvalidAuthToken);
        }
        match self {
            Self::Simple(table) => {
                let TokenInfo {
                    user,
                    password_hash,
                    revision,
                } = table.lookup(token).ok_or(AuthError::InvalidAuthToken)?;
                let current = auth
                    .user(&user)
                    .is_some_and(|u| u.password == password_hash && revision >= auth.enabled_at());
                if !current {
                    table.revoke(token);
                    return Err(AuthError::InvalidAuthToken);
                }
                Ok(TokenUser {
                    user,
                    revision: None,
                })
            }
            Self::Jwt(jwt) => {
                let claims = jwt
                    .verify(token, rt::wall_clock())
                    .ok_or(AuthError::InvalidAuthToken)?;
                // A password change is not visible here (the token does not carry the hash), but
                // it moves the auth revision, which the permission check compares.
                let current =
                    auth.user(&claims.username).is_some() && claims.revision >= auth.enabled_at();
                if !current {
                    return Err(AuthError::InvalidAuthToken);
                }
                Ok(TokenUser {
                    user: claims.username,
                    revision: Some(claims.revision),
                })
            }
        }
    }
}
