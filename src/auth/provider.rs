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
    /// Signed JSON Web Tokens (`jwt,...`); boxed: its keys are several times a table's size.
    Jwt(Box<JwtTokens>),
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
            AuthTokenSpec::Jwt(jwt) => Self::Jwt(Box::new(JwtTokens::load(jwt)?)),
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

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use crate::auth::ROOT;
    use crate::config::JwtSignMethod;
    use crate::pb::etcdserverpb::{
        AuthDisableRequest, AuthEnableRequest, AuthUserAddRequest, AuthUserChangePasswordRequest,
        AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    };
    use crate::pb::metastore::{auth_command::Op, AuthCommand};
    use crate::storage::WriteBatch;

    fn run(auth: &mut AuthStore, op: Op) {
        auth.apply(AuthCommand { op: Some(op) }, &mut WriteBatch::new())
            .expect("auth change");
    }

    fn user_add(name: &str) -> Op {
        Op::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: format!("hash of {name}"),
            ..Default::default()
        })
    }

    /// Auth enabled, with root and alice.
    fn enabled_store() -> AuthStore {
        let mut auth = AuthStore::default();
        run(&mut auth, user_add(ROOT));
        run(
            &mut auth,
            Op::UserGrantRole(AuthUserGrantRoleRequest {
                user: ROOT.into(),
                role: ROOT.into(),
            }),
        );
        run(&mut auth, user_add("alice"));
        run(&mut auth, Op::Enable(AuthEnableRequest {}));
        auth
    }

    fn jwt() -> TokenProvider {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let tokens = JwtTokens::from_keys(
            JwtSignMethod::ES256,
            None,
            Some(pair.serialize_pem().as_bytes()),
            Duration::from_secs(60),
        )
        .expect("keys");
        TokenProvider::Jwt(Box::new(tokens))
    }

    fn signed(new: NewToken) -> String {
        match new {
            NewToken::Signed(token) => token,
            other => panic!("expected a JWT, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_jwt_names_its_user_and_revision_until_the_user_or_auth_goes() {
        let provider = jwt();
        let mut auth = enabled_store();
        let token = signed(provider.issue("alice", auth.revision()).unwrap());
        let alice = TokenUser {
            user: "alice".into(),
            revision: Some(auth.revision()),
        };
        assert_eq!(provider.resolve(&token, &auth), Ok(alice.clone()));
        // Recording is for simple tokens; a JWT provider keeps nothing.
        provider.record(
            "x.1".into(),
            TokenInfo {
                user: "alice".into(),
                password_hash: Vec::new(),
                revision: 1,
            },
        );
        assert_eq!(
            provider.resolve("x.1", &auth),
            Err(AuthError::InvalidAuthToken)
        );
        // A password change leaves the user (the permission check sees the revision move).
        run(
            &mut auth,
            Op::UserChangePassword(AuthUserChangePasswordRequest {
                name: "alice".into(),
                hashed_password: "new hash".into(),
                ..Default::default()
            }),
        );
        assert_eq!(provider.resolve(&token, &auth), Ok(alice));
        assert!(auth.revision() > 1);

        // Deleted user: void, and still void once a user of that name is back.
        let mut gone = enabled_store();
        let token = signed(provider.issue("alice", gone.revision()).unwrap());
        run(
            &mut gone,
            Op::UserDelete(AuthUserDeleteRequest {
                name: "alice".into(),
            }),
        );
        assert_eq!(
            provider.resolve(&token, &gone),
            Err(AuthError::InvalidAuthToken)
        );

        // Auth disabled and enabled again since the token was issued: void.
        let mut again = enabled_store();
        let token = signed(provider.issue("alice", again.revision()).unwrap());
        run(&mut again, Op::Disable(AuthDisableRequest {}));
        run(&mut again, Op::Enable(AuthEnableRequest {}));
        assert_eq!(
            provider.resolve(&token, &again),
            Err(AuthError::InvalidAuthToken)
        );

        let huge = "a".repeat(limits::AUTH_TOKEN_BYTES_MAX + 1);
        assert_eq!(
            provider.resolve(&huge, &again),
            Err(AuthError::InvalidAuthToken)
        );
    }

    #[tokio::test]
    async fn a_simple_token_is_recorded_through_the_log_and_dies_with_a_new_password() {
        let provider = TokenProvider::Simple(TokenTable::new(Duration::from_secs(60)));
        let mut auth = enabled_store();
        let NewToken::Replicate(token) = provider.issue("alice", auth.revision()).unwrap() else {
            panic!("a simple token goes through the log");
        };
        assert_eq!(
            provider.resolve(&token, &auth),
            Err(AuthError::InvalidAuthToken),
            "not recorded yet"
        );
        provider.record(
            token.clone(),
            TokenInfo {
                user: "alice".into(),
                password_hash: b"hash of alice".to_vec(),
                revision: auth.revision(),
            },
        );
        assert_eq!(
            provider.resolve(&token, &auth),
            Ok(TokenUser {
                user: "alice".into(),
                revision: None,
            })
        );
        run(
            &mut auth,
            Op::UserChangePassword(AuthUserChangePasswordRequest {
                name: "alice".into(),
                hashed_password: "new hash".into(),
                ..Default::default()
            }),
        );
        assert_eq!(
            provider.resolve(&token, &auth),
            Err(AuthError::InvalidAuthToken)
        );
    }
}
