//! etcd's "simple" auth tokens: random strings held in memory, valid until their TTL passes without
//! use (each use renews it, as etcd's token keeper does). A login goes through the log, so every
//! member records the token (as etcd applies its InternalAuthenticateRequest everywhere) and runs
//! its own TTL clock for it. Tokens are not replicated state: they do not survive a restart, and a
//! member that catches up from a snapshot misses the logins the snapshot covers (as in etcd); a
//! client told "invalid auth token" logs in again, as clientv3 and etcd-client do. A token records who it was issued to,
//! that user's password hash and the auth revision at issue, so the caller can void it once the user
//! is deleted, changes password, or auth was disabled and enabled again since.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::limits;
use crate::rt;

/// What a live token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The authenticated user.
    pub user: String,
    /// The user's password hash when the token was issued.
    pub password_hash: Vec<u8>,
    /// The auth revision when the token was issued.
    pub revision: u64,
}

struct Entry {
    info: TokenInfo,
    expires: rt::Instant,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, Entry>,
}

/// The tokens this member issued.
pub struct TokenTable {
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl TokenTable {
    /// An empty table whose tokens live `ttl` after their last use.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record `token` for `info`, alive for the TTL from now.
    pub fn insert(&self, token: String, info: TokenInfo) {
        let now = rt::now();
        let mut inner = self.lock();
        inner.tokens.retain(|_, e| e.expires > now);
        if inner.tokens.len() >= limits::AUTH_TOKENS_MAX {
            let soonest = inner
                .tokens
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(t, _)| t.clone());
            if let Some(t) = soonest {
                inner.tokens.remove(&t);
            }
        }
        inner.tokens.insert(
            token,
            Entry {
                info,
                expires: now + self.ttl,
            },
        );
    }

    /// What `token` stands for, renewing its TTL; `None` if it is unknown or expired.
    pub fn lookup(&self, token: &str) -> Option<TokenInfo> {
        let now = rt::now();
        let mut inner = self.lock();
        let entry = inner.tokens.get_mut(token)?;
        if entry.expires <= now {
            inner.tokens.remove(token);
            return None;
        }
        entry.expires = now + self.ttl;
        Some(entry.info.clone())
    }

    /// Forget `token` (it was found void).
    pub fn revoke(&self, token: &str) {
        self.lock().tokens.remove(token);
    }

    /// How many tokens are held (expired ones may still count until the next insert).
    pub fn len(&self) -> usize {
        self.lock().tokens.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A fresh token in etcd's simple-token shape (`<random letters>.<number>`), drawn from the
/// runtime's random source (seeded in simulation).
pub fn new_token() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let letters: String = (0..limits::AUTH_TOKEN_RANDOM_CHARS)
        .map(|_| LETTERS[(rt::random_u64() % LETTERS.len() as u64) as usize] as char)
        .collect();
    format!("{letters}.{}", rt::random_u64() >> 40)
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    fn info(user: &str) -> TokenInfo {
        TokenInfo {
            user: user.into(),
            password_hash: b"h".to_vec(),
            revision: 3,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_after_the_ttl_unless_used() {
        let table = TokenTable::new(Duration::from_secs(2));
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        table.insert(a.clone(), info("a"));
        table.insert(b.clone(), info("b"));
        assert_eq!(
            a.split_once('.').unwrap().0.len(),
            limits::AUTH_TOKEN_RANDOM_CHARS
        );
        assert_eq!(table.lookup(&a), Some(info("a")));
        assert_eq!(table.lookup("nope.1"), None);
        tokio::time::advance(Duration::from_millis(1500)).await;
        // Using `a` renews it; `b` is left to expire.
        assert!(table.lookup(&a).is_some());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(table.lookup(&a).is_some(), "renewed by its last use");
        assert_eq!(table.lookup(&b), None, "expired");
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert_eq!(table.lookup(&a), None);
        table.insert(new_token(), info("c"));
        assert_eq!(table.len(), 1, "expired tokens are swept on insert");
    }
}
