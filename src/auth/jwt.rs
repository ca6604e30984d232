//! etcd's JWT auth tokens (`--auth-token jwt,sign-method=...,pub-key=...,priv-key=...,ttl=...`).
//!
//! A JWT is self-contained: its signed claims name the user (`username`), the auth revision when it
//! was issued (`revision`) and when it stops being valid (`exp`, Unix seconds), so no member keeps a
//! table of them and every member that has the verifying key accepts every token, whichever member
//! signed it. Unlike a simple token, use does not renew it. As in etcd 3.4:
//! - a private key signs (RSA, RSA-PSS, ECDSA: PEM; HMAC: the `priv-key` file's bytes are the
//!   secret) and its public half verifies; with only a public key the member verifies tokens but
//!   cannot issue any ("token signing attempted with verify-only key");
//! - a token whose signature, method or claims do not check out, or whose `exp` has passed, is an
//!   "invalid auth token".
//!
//! Expiry is judged on the wall clock (`rt::wall_clock`): `exp` must be meaningful to every member
//! and to clients, which a process-local monotonic instant is not.

use std::path::Path;
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::config::{JwtSignMethod, JwtSpec};
use crate::limits;

/// The claims of one of our tokens, with etcd's names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtClaims {
    /// The authenticated user.
    pub username: String,
    /// The auth revision when the token was issued.
    pub revision: u64,
    /// Unix time (seconds) from which the token is no longer valid.
    pub exp: u64,
}

/// Why the keys of `--auth-token jwt,...` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtKeyError {
    #[error("cannot read {option}= file {path}: {message}")]
    Read {
        option: &'static str,
        path: String,
        message: String,
    },
    #[error("{option}= is not a {method} key: {message}")]
    Parse {
        option: &'static str,
        method: &'static str,
        message: String,
    },
    #[error("missing key data: {0}")]
    Missing(&'static str),
    #[error("public and private keys don't match")]
    Mismatch,
}

/// Signs and verifies this member's JWTs.
pub struct JwtTokens {
    method: JwtSignMethod,
    /// `None`: verify-only (only a public key was given).
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    // Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("method", &self.method.name())
            .field("verify_only", &self.signing.is_none())
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn algorithm(method: JwtSignMethod) -> Algorithm {
    match method {
        JwtSignMethod::HS256 => Algorithm::HS256,
        JwtSignMethod::HS384 => Algorithm::HS384,
        JwtSignMethod::HS512 => Algorithm::HS512,
        JwtSignMethod::RS256 => Algorithm::RS256,
        JwtSignMethod::RS384 => Algorithm::RS384,
        JwtSignMethod::RS512 => Algorithm::RS512,
        JwtSignMethod::PS256 => Algorithm::PS256,
        JwtSignMethod::PS384 => Algorithm::PS384,
        JwtSignMethod::PS512 => Algorithm::PS512,
        JwtSignMethod::ES256 => Algorithm::ES256,
        JwtSignMethod::ES384 => Algorithm::ES384,
    }
}

/// Unix seconds of `time` (0 before the epoch).
fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_key(option: &'static str, path: &Path) -> Result<Vec<u8>, JwtKeyError> {
    let refuse = |message: String| JwtKeyError::Read {
        option,
        path: path.display().to_string(),
        message,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| refuse(e.to_string()))?
        .len();
    if len > limits::AUTH_JWT_KEY_FILE_BYTES_MAX {
        return Err(refuse(format!(
            "{len} bytes, more than the {} a key may have",
            limits::AUTH_JWT_KEY_FILE_BYTES_MAX
        )));
    }
    std::fs::read(path).map_err(|e| refuse(e.to_string()))
}

impl JwtTokens {
    /// Read and check the keys `spec` names.
    pub fn load(spec: &JwtSpec) -> Result<Self, JwtKeyError> {
        let public = spec
            .pub_key
            .as_deref()
            .map(|p| read_key("pub-key", p))
            .transpose()?;
        let private = spec
            .priv_key
            .as_deref()
            .map(|p| read_key("priv-key", p))
            .transpose()?;
        Self::from_keys(
            spec.sign_method,
            public.as_deref(),
            private.as_deref(),
            spec.ttl,
        )
    }

    /// Tokens signed by `method` with PEM keys (`private` is the secret for the HMAC methods),
    /// valid for `ttl` from their issue. A signing key is checked by signing a probe token and
    /// verifying it, which catches a key of the wrong type or curve and a mismatched pair.
    pub fn from_keys(
        method: JwtSignMethod,
        public: Option<&[u8]>,
        private: Option<&[u8]>,
        ttl: Duration,
    ) -> Result<Self, JwtKeyError> {
        let alg = algorithm(method);
        let parse = |option: &'static str| {
            move |e: jsonwebtoken::errors::Error| JwtKeyError::Parse {
                option,
                method: method.name(),
                message: e.to_string(),
            }
        };
        let (signing, verifying) = if method.is_hmac() {
            let secret = private
                .filter(|s| !s.is_empty())
                .ok_or(JwtKeyError::Missing(
                    "an HMAC method needs priv-key= (the secret)",
                ))?;
            (
                Some(EncodingKey::from_secret(secret)),
                DecodingKey::from_secret(secret),
            )
        } else {
            let ec = matches!(method, JwtSignMethod::ES256 | JwtSignMethod::ES384);
            let signing = match private {
                None => None,
                Some(pem) if ec && contains(pem, b"BEGIN EC PRIVATE KEY") => {
                    return Err(JwtKeyError::Parse {
                        option: "priv-key",
                        method: method.name(),
                        message: "an \"EC PRIVATE KEY\" (SEC1) is not read; convert it to \
                                  PKCS#8 (`openssl pkcs8 -topk8 -nocrypt -in KEY`)"
                            .into(),
                    });
                }
                Some(pem) if ec => Some(EncodingKey::from_ec_pem(pem).map_err(parse("priv-key"))?),
                Some(pem) => Some(EncodingKey::from_rsa_pem(pem).map_err(parse("priv-key"))?),
            };
            let verifying = match (public, &signing) {
                (Some(pem), _) if ec => DecodingKey::from_ec_pem(pem).map_err(parse("pub-key"))?,
                (Some(pem), _) => DecodingKey::from_rsa_pem(pem).map_err(parse("pub-key"))?,
                // etcd verifies with the private key's public half when no public key is given.
                (None, Some(key)) => Jwk::from_encoding_key(key, alg)
                    .and_then(|jwk| DecodingKey::from_jwk(&jwk))
                    .map_err(parse("priv-key"))?,
                (None, None) => {
                    return Err(JwtKeyError::Missing(
                        "give priv-key= to sign tokens, pub-key= to verify them",
                    ))
                }
            };
            (signing, verifying)
        };
        let mut validation = Validation::new(alg);
        // `exp` is checked by `verify` on the seam's wall clock, with no leeway (as etcd's JWT
        // library does); the claims struct makes it required. No audience is issued or expected.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.leeway = 0;
        let tokens = Self {
            method,
            signing,
            verifying,
            validation,
            ttl,
        };
        if tokens.signing.is_some() {
            let now = SystemTime::UNIX_EPOCH;
            let probe = tokens
                .sign("probe", 1, now)
                .map_err(|e| JwtKeyError::Parse {
                    option: "priv-key",
                    method: method.name(),
                    message: e.to_string(),
                })?;
            if tokens.verify(&probe, now).is_none() {
                return Err(JwtKeyError::Mismatch);
            }
        }
        Ok(tokens)
    }

    /// The method tokens are signed with.
    pub fn method(&self) -> JwtSignMethod {
        self.method
    }

    /// A token for `username` at `auth_revision`, issued at `now`.
    pub fn sign(
        &self,
        username: &str,
        auth_revision: u64,
        now: SystemTime,
    ) -> Result<String, AuthError> {
        let key = self.signing.as_ref().ok_or(AuthError::VerifyOnly)?;
        let claims = JwtClaims {
            username: username.to_string(),
            revision: auth_revision,
            exp: unix_secs(now + self.ttl),
        };
        jsonwebtoken::encode(&Header::new(algorithm(self.method)), &claims, key)
            .map_err(|e| AuthError::TokenSign(e.to_string()))
    }

    /// The claims of `token` if this member's key signed it with its method and it is still valid
    /// at `now` (valid while `now` is before `exp`, as etcd's JWT library judges it).
    pub fn verify(&self, token: &str, now: SystemTime) -> Option<JwtClaims> {
        let data =
            jsonwebtoken::decode::<JwtClaims>(token, &self.verifying, &self.validation).ok()?;
        (unix_secs(now) < data.claims.exp).then_some(data.claims)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn ec_pair() -> (String, String) {
        let pair = rcgen::KeyPair::generate().expect("generate P-256 key");
        (pair.serialize_pem(), pair.public_key_pem())
    }

    fn es256(public: Option<&str>, private: Option<&str>) -> Result<JwtTokens, JwtKeyError> {
        JwtTokens::from_keys(
            JwtSignMethod::ES256,
            public.map(str::as_bytes),
            private.map(str::as_bytes),
            Duration::from_secs(2),
        )
    }

    fn part(token: &str, i: usize) -> serde_json::Value {
        let text = token.split('.').nth(i).expect("part");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[test]
    fn signed_tokens_verify_until_they_expire() {
        let (private, public) = ec_pair();
        let tokens = es256(Some(&public), Some(&private)).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = tokens.sign("alice", 7, t0).unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(part(&token, 0)["alg"], "ES256");
        let claims = part(&token, 1);
        assert_eq!(claims["username"], "alice");
        assert_eq!(claims["revision"], 7);
        assert_eq!(claims["exp"], 1_700_000_002);
        let expect = JwtClaims {
            username: "alice".into(),
            revision: 7,
            exp: 1_700_000_002,
        };
        assert_eq!(tokens.verify(&token, t0), Some(expect.clone()));
        assert_eq!(
            tokens.verify(&token, t0 + Duration::from_millis(1999)),
            Some(expect)
        );
        assert_eq!(tokens.verify(&token, t0 + Duration::from_secs(2)), None);

        // A member with only the public key accepts the token but cannot issue one.
        let verifier = es256(Some(&public), None).unwrap();
        assert!(verifier.verify(&token, t0).is_some());
        assert_eq!(verifier.sign("alice", 7, t0), Err(AuthError::VerifyOnly));
        // One with only the private key verifies with its public half, as etcd does.
        let signer = es256(None, Some(&private)).unwrap();
        assert!(signer.verify(&token, t0).is_some());
    }

    #[test]
    fn forged_altered_and_foreign_tokens_are_refused() {
        let (private, public) = ec_pair();
        let tokens = es256(Some(&public), Some(&private)).unwrap();
        let (other_private, other_public) = ec_pair();
        let other = es256(Some(&other_public), Some(&other_private)).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let foreign = other.sign("root", 1, now).unwrap();
        assert_eq!(tokens.verify(&foreign, now), None, "signed by another key");

        // Claims changed after signing.
        let token = tokens.sign("alice", 7, now).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"username":"root","revision":7,"exp":1700000002}"#);
        let altered = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(tokens.verify(&altered, now), None);

        // Another method with a key that happens to verify (HS256 with the public PEM as the
        // secret: the classic algorithm-confusion forgery) is refused: the method is pinned.
        let confused = JwtTokens::from_keys(
            JwtSignMethod::HS256,
            None,
            Some(public.as_bytes()),
            Duration::from_secs(60),
        )
        .unwrap()
        .sign("root", 7, now)
        .unwrap();
        assert_eq!(tokens.verify(&confused, now), None);
        // Unsigned ("alg":"none") and garbage.
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            tokens.verify(&format!("{header}.{forged_claims}."), now),
            None
        );
        assert_eq!(tokens.verify("abc.def.ghi", now), None);
        assert_eq!(tokens.verify("nope.1", now), None);
    }

    #[test]
    fn hmac_secrets_sign_and_verify() {
        let secret = b"a shared secret\n";
        let tokens = JwtTokens::from_keys(
            JwtSignMethod::HS512,
            None,
            Some(secret),
            Duration::from_secs(60),
        )
        .unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let token = tokens.sign("bob", 3, now).unwrap();
        assert_eq!(part(&token, 0)["alg"], "HS512");
        assert_eq!(
            tokens.verify(&token, now).map(|c| c.username),
            Some("bob".into())
        );
        let other = JwtTokens::from_keys(
            JwtSignMethod::HS512,
            None,
            Some(b"other"),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(other.verify(&token, now), None);
        assert!(matches!(
            JwtTokens::from_keys(
                JwtSignMethod::HS256,
                None,
                Some(b""),
                Duration::from_secs(60)
            ),
            Err(JwtKeyError::Missing(_))
        ));
    }

    #[test]
    fn unusable_keys_are_refused_at_load() {
        let (private, public) = ec_pair();
        let (_, other_public) = ec_pair();
        assert_eq!(
            es256(Some(&other_public), Some(&private)).err(),
            Some(JwtKeyError::Mismatch)
        );
        assert!(matches!(
            es256(Some("not a key"), None),
            Err(JwtKeyError::Parse {
                option: "pub-key",
                ..
            })
        ));
        assert!(matches!(
            es256(None, Some(&public)),
            Err(JwtKeyError::Parse {
                option: "priv-key",
                ..
            })
        ));
        // A P-256 key cannot sign ES384.
        assert!(matches!(
            JwtTokens::from_keys(
                JwtSignMethod::ES384,
                None,
                Some(private.as_bytes()),
                Duration::from_secs(60)
            ),
            Err(JwtKeyError::Parse { .. })
        ));
        // An ECDSA key for an RSA method.
        assert!(matches!(
            JwtTokens::from_keys(
                JwtSignMethod::RS256,
                None,
                Some(private.as_bytes()),
                Duration::from_secs(60)
            ),
            Err(JwtKeyError::Parse { .. })
        ));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            es256(None, Some(sec1)),
            Err(JwtKeyError::Parse { message, .. }) if message.contains("PKCS#8")
        ));
        assert!(matches!(es256(None, None), Err(JwtKeyError::Missing(_))));

        let dir = tempfile::tempdir().unwrap();
        let spec = JwtSpec {
            sign_method: JwtSignMethod::ES256,
            pub_key: Some(dir.path().join("absent.pem")),
            priv_key: None,
            ttl: Duration::from_secs(60),
        };
        assert!(matches!(
            JwtTokens::load(&spec),
            Err(JwtKeyError::Read {
                option: "pub-key",
                ..
            })
        ));
    }
}
