//! The replicated auth state and the deterministic changes raft applies to it.
//!
//! Every member holds the same [`AuthStore`]: it changes only through [`AuthStore::apply`], called
//! from `apply` with a command from the log, and each change is also written to the engine batch of
//! that log entry (`Meta` keyspace, `auth/` prefix: `auth/state`, `auth/user/<name>`,
//! `auth/role/<name>`, values in etcd's `authpb` encoding), so restarts, snapshots and backups carry
//! it. Passwords arrive already hashed (bcrypt, at the API edge), so apply stays cheap and never
//! touches a random source. Every successful change bumps the auth revision, as in etcd.

use std::collections::BTreeMap;

use prost::Message;

use super::perms::{covers, Need};
use super::AuthError;
use crate::keys::prefix_end;
use crate::pb::authpb::{Permission, Role, User, UserAddOptions};
use crate::pb::metastore::{auth_command, AuthCommand};
use crate::storage::{Engine, Keyspace, StorageError, WriteBatch};

/// The name of the root user and of the root role (which bypasses every permission check).
pub const ROOT: &str = "root";

/// The `Meta` key of the enabled flag and auth revision ([`state_record`]).
pub const STATE_KEY: &[u8] = b"auth/state";
/// Prefix of the `Meta` keys of users ([`user_record_key`]).
pub const USER_PREFIX: &[u8] = b"auth/user/";
/// Prefix of the `Meta` keys of roles ([`role_record_key`]).
pub const ROLE_PREFIX: &[u8] = b"auth/role/";

/// Users, roles, the enabled flag and the auth revision.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    /// The auth revision at which auth was last enabled (in memory only): tokens issued before it
    /// belong to an earlier enabled period and are void, as etcd drops its tokens on disable.
    enabled_at: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

/// The auth revision of a store that never changed: etcd's store bumps a revision of 0 to 1 when
/// it opens, so `AuthStatus` on a new cluster answers 1 and the first change makes it 2.
const FIRST_REVISION: u64 = 1;

impl Default for AuthStore {
    fn default() -> Self {
        AuthStore {
            enabled: false,
            revision: FIRST_REVISION,
            enabled_at: FIRST_REVISION,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

fn key(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn corrupt(reason: String) -> StorageError {
    StorageError::Corrupt {
        ks: Keyspace::Meta,
        reason,
    }
}

/// The `Meta` record of the enabled flag and auth revision, for a state brought in from elsewhere
/// (an etcd snapshot restored by `raft::etcd_snapshot`): the same bytes [`AuthStore`] writes.
pub fn state_record(enabled: bool, revision: u64) -> (Vec<u8>, Vec<u8>) {
    let mut state = vec![u8::from(enabled)];
    state.extend_from_slice(&revision.to_be_bytes());
    (STATE_KEY.to_vec(), state)
}

/// The enabled flag and auth revision of a [`state_record`] value; `None` if it is malformed.
pub fn decode_state_record(value: &[u8]) -> Option<(bool, u64)> {
    let [flag, rev @ ..] = value else {
        return None;
    };
    Some((*flag == 1, u64::from_be_bytes(rev.try_into().ok()?)))
}

/// The `Meta` key of user `name` (its value: the `authpb.User`).
pub fn user_record_key(name: &str) -> Vec<u8> {
    key(USER_PREFIX, name)
}

/// The `Meta` key of role `name` (its value: the `authpb.Role`).
pub fn role_record_key(name: &str) -> Vec<u8> {
    key(ROLE_PREFIX, name)
}

impl AuthStore {
    /// Read the auth state from `engine` (empty on a new member).
    pub fn load(engine: &dyn Engine) -> Result<Self, StorageError> {
        let mut store = AuthStore::default();
        if let Some(state) = engine.get(Keyspace::Meta, STATE_KEY)? {
            let (enabled, revision) = decode_state_record(&state)
                .ok_or_else(|| corrupt("auth state of the wrong size".into()))?;
            store.enabled = enabled;
            store.revision = revision.max(FIRST_REVISION);
            store.enabled_at = store.revision;
        }
        let mut failed = None;
        engine.scan(
            Keyspace::Meta,
            USER_PREFIX,
            Some(&prefix_end(USER_PREFIX)),
            &mut |_, v| match User::decode(v) {
                Ok(u) => {
                    store
                        .users
                        .insert(String::from_utf8_lossy(&u.name).into_owned(), u);
                    true
                }
                Err(e) => {
                    failed = Some(corrupt(format!("auth user record: {e}")));
                    false
                }
            },
        )?;
        engine.scan(
            Keyspace::Meta,
            ROLE_PREFIX,
            Some(&prefix_end(ROLE_PREFIX)),
            &mut |_, v| match Role::decode(v) {
                Ok(r) => {
                    store
                        .roles
                        .insert(String::from_utf8_lossy(&r.name).into_owned(), r);
                    true
                }
                Err(e) => {
                    failed = Some(corrupt(format!("auth role record: {e}")));
                    false
                }
            },
        )?;
        match failed {
            Some(e) => Err(e),
            None => Ok(store),
        }
    }

    /// Whether auth is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: bumped by every change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The auth revision at which auth was last enabled.
    pub fn enabled_at(&self) -> u64 {
        self.enabled_at
    }

    /// A user's record.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// A role's record.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Whether `user` holds the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// May `user` (`None`: no token was given) administer auth and membership? Always, while auth
    /// is disabled (etcd's `IsAdminPermitted`).
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.ok_or(AuthError::UserEmpty)?;
        if !self.users.contains_key(name) {
            return Err(AuthError::UserNotFound);
        }
        if !self.is_root(name) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// Does `user` have everything in `needs`? Always, while auth is disabled; the root role has
    /// everything; a user without roles has nothing.
    pub fn check(&self, user: Option<&str>, needs: &[Need]) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.ok_or(AuthError::UserEmpty)?;
        // A user that no longer exists is simply denied, as in etcd's isOpPermitted.
        let u = self.users.get(name).ok_or(AuthError::PermissionDenied)?;
        if u.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let perms: Vec<&Permission> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.key_permission.iter())
            .collect();
        if needs.iter().all(|n| covers(perms.iter().copied(), n)) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    fn commit(&mut self, batch: &mut WriteBatch) {
        self.revision += 1;
        self.save_state(batch);
    }

    /// Store the enabled flag and the revision as they are.
    fn save_state(&self, batch: &mut WriteBatch) {
        let (key, state) = state_record(self.enabled, self.revision);
        batch.put(Keyspace::Meta, key, state);
    }

    fn save_user(&mut self, name: &str, user: User, batch: &mut WriteBatch) {
        batch.put(Keyspace::Meta, key(USER_PREFIX, name), user.encode_to_vec());
        self.users.insert(name.to_string(), user);
    }

    fn save_role(&mut self, name: &str, role: Role, batch: &mut WriteBatch) {
        batch.put(Keyspace::Meta, key(ROLE_PREFIX, name), role.encode_to_vec());
        self.roles.insert(name.to_string(), role);
    }

    /// Apply one auth change; on success its records are in `batch`. A rejected change leaves the
    /// store and `batch` untouched.
    pub fn apply(&mut self, cmd: AuthCommand, batch: &mut WriteBatch) -> Result<(), AuthError> {
        use auth_command::Op;
        let Some(op) = cmd.op else {
            return Err(AuthError::InvalidAuthMgmt);
        };
        match op {
            Op::Enable(_) => {
                if self.enabled {
                    // As etcd: enabling twice is accepted and changes nothing.
                    return Ok(());
                }
                match self.users.get(ROOT) {
                    None => return Err(AuthError::RootUserNotExist),
                    Some(u) if !u.roles.iter().any(|r| r == ROOT) => {
                        return Err(AuthError::RootRoleNotExist)
                    }
                    Some(_) => {}
                }
                // Enabling is the one change etcd makes without a new auth revision (disabling
                // makes one): tokens of an earlier enabled period are older than that disable.
                self.enabled = true;
                self.save_state(batch);
                self.enabled_at = self.revision;
            }
            Op::Disable(_) => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
                self.commit(batch);
            }
            Op::UserAdd(req) => {
                if req.name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&req.name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
                let user = User {
                    name: req.name.clone().into_bytes(),
                    password: if no_password {
                        Vec::new()
                    } else {
                        req.hashed_password.into_bytes()
                    },
                    roles: Vec::new(),
                    options: Some(UserAddOptions { no_password }),
                };
                self.save_user(&req.name, user, batch);
                self.commit(batch);
            }
            Op::UserDelete(req) => {
                if self.enabled && req.name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.users.remove(&req.name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                batch.delete(Keyspace::Meta, key(USER_PREFIX, &req.name));
                self.commit(batch);
            }
            Op::UserChangePassword(req) => {
                let mut user = self
                    .users
                    .get(&req.name)
                    .cloned()
                    .ok_or(AuthError::UserNotFound)?;
                // A user added without a password keeps none, and its options, as in etcd 3.5
                // (3.4 made it a password user).
                if !user.options.as_ref().is_some_and(|o| o.no_password) {
                    user.password = req.hashed_password.into_bytes();
                }
                self.save_user(&req.name, user, batch);
                self.commit(batch);
            }
            Op::UserGrantRole(req) => {
                let mut user = self
                    .users
                    .get(&req.user)
                    .cloned()
                    .ok_or(AuthError::UserNotFound)?;
                // The root role may be granted before it exists as a role record, as in etcd.
                if req.role != ROOT && !self.roles.contains_key(&req.role) {
                    return Err(AuthError::RoleNotFound);
                }
                match user.roles.binary_search(&req.role) {
                    // Granting a role twice is accepted and changes nothing, as in etcd.
                    Ok(_) => return Ok(()),
                    Err(at) => user.roles.insert(at, req.role.clone()),
                }
                self.save_user(&req.user, user, batch);
                self.commit(batch);
            }
            Op::UserRevokeRole(req) => {
                if self.enabled && req.name == ROOT && req.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let mut user = self
                    .users
                    .get(&req.name)
                    .cloned()
                    .ok_or(AuthError::UserNotFound)?;
                let at = user
                    .roles
                    .iter()
                    .position(|r| *r == req.role)
                    .ok_or(AuthError::RoleNotGranted)?;
                user.roles.remove(at);
                self.save_user(&req.name, user, batch);
                self.commit(batch);
            }
            Op::RoleAdd(req) => {
                if req.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&req.name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                let role = Role {
                    name: req.name.clone().into_bytes(),
                    key_permission: Vec::new(),
                };
                self.save_role(&req.name, role, batch);
                self.commit(batch);
            }
            Op::RoleDelete(req) => {
                if self.enabled && req.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.roles.remove(&req.role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                batch.delete(Keyspace::Meta, key(ROLE_PREFIX, &req.role));
                // No user keeps a role that is gone, as in etcd.
                let holders: Vec<String> = self
                    .users
                    .iter()
                    .filter(|(_, u)| u.roles.contains(&req.role))
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in holders {
                    let mut user = self.users[&name].clone();
                    user.roles.retain(|r| *r != req.role);
                    self.save_user(&name, user, batch);
                }
                self.commit(batch);
            }
            Op::RoleGrantPermission(req) => {
                let perm = req.perm.ok_or(AuthError::PermissionNotGiven)?;
                let mut role = self
                    .roles
                    .get(&req.name)
                    .cloned()
                    .ok_or(AuthError::RoleNotFound)?;
                // As etcd 3.5 keeps them: sorted by key alone, grants of one key in the order
                // they came. A grant replaces the type of the first permission of its key when
                // that one has the same range end, and is added after that key's others
                // otherwise (so etcd, and we, may hold the same range twice).
                let first = role.key_permission.partition_point(|p| p.key < perm.key);
                match role.key_permission.get_mut(first) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type
                    }
                    _ => {
                        let after = role.key_permission.partition_point(|p| p.key <= perm.key);
                        role.key_permission.insert(after, perm);
                    }
                }
                self.save_role(&req.name, role, batch);
                self.commit(batch);
            }
            Op::TokenIssue(issue) => {
                // Not a change of the auth state: no revision bump, nothing stored. The caller
                // records the token in the member's token table.
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                let current = self.users.get(&issue.user).is_some_and(|u| {
                    u.password == issue.password_hash
                        && !u.options.as_ref().is_some_and(|o| o.no_password)
                });
                if !current {
                    return Err(AuthError::AuthFailed);
                }
            }
            Op::RoleRevokePermission(req) => {
                let mut role = self
                    .roles
                    .get(&req.role)
                    .cloned()
                    .ok_or(AuthError::RoleNotFound)?;
                // Every permission of that exact range goes, as in etcd.
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| p.key != req.key || p.range_end != req.range_end);
                if role.key_permission.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                self.save_role(&req.role, role, batch);
                self.commit(batch);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PermKind;
    use crate::pb::authpb::permission::Type as PermType;
    use crate::pb::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
        AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
        AuthUserDeleteRequest, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest,
    };
    use crate::storage::{Durability, MemoryEngine};
    use auth_command::Op;

    fn run(store: &mut AuthStore, engine: &MemoryEngine, op: Op) -> Result<(), AuthError> {
        let mut batch = WriteBatch::new();
        let result = store.apply(AuthCommand { op: Some(op) }, &mut batch);
        if result.is_err() {
            assert!(batch.is_empty(), "a rejected change writes nothing");
        }
        engine.write(batch, Durability::Buffered).expect("write");
        result
    }

    /// Everything but the in-memory `enabled_at`.
    fn replicated(s: &AuthStore) -> (bool, u64, &BTreeMap<String, User>, &BTreeMap<String, Role>) {
        (s.enabled, s.revision, &s.users, &s.roles)
    }

    fn user_add(name: &str, hash: &str) -> Op {
        Op::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: hash.into(),
            ..Default::default()
        })
    }

    fn grant_role(user: &str, role: &str) -> Op {
        Op::UserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
    }

    #[test]
    fn enable_needs_root_with_root_role_and_admin_rules_follow_etcd() {
        let engine = MemoryEngine::new();
        let mut s = AuthStore::default();
        let enable = || Op::Enable(AuthEnableRequest {});
        assert_eq!(
            run(&mut s, &engine, enable()),
            Err(AuthError::RootUserNotExist)
        );
        run(&mut s, &engine, user_add(ROOT, "$2b$hash")).unwrap();
        assert_eq!(
            run(&mut s, &engine, enable()),
            Err(AuthError::RootRoleNotExist)
        );
        run(&mut s, &engine, grant_role(ROOT, ROOT)).unwrap();
        assert!(
            s.role(ROOT).is_none(),
            "granting root does not create the role record"
        );
        // etcd 3.5.1 (asked with `etcdctl auth status`): enabling keeps the auth revision,
        // disabling an enabled store bumps it, disabling a disabled one changes nothing.
        let before = s.revision();
        run(&mut s, &engine, enable()).unwrap();
        assert!(s.enabled());
        assert_eq!(s.revision(), before);
        run(&mut s, &engine, enable()).unwrap();
        assert_eq!(s.revision(), before, "enabling twice changes nothing");

        let revoke_root = Op::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: ROOT.into(),
            role: ROOT.into(),
        });
        assert_eq!(
            run(&mut s, &engine, revoke_root),
            Err(AuthError::InvalidAuthMgmt)
        );
        let del_root = Op::UserDelete(AuthUserDeleteRequest { name: ROOT.into() });
        assert_eq!(
            run(&mut s, &engine, del_root),
            Err(AuthError::InvalidAuthMgmt)
        );
        let del_root_role = Op::RoleDelete(AuthRoleDeleteRequest { role: ROOT.into() });
        assert_eq!(
            run(&mut s, &engine, del_root_role),
            Err(AuthError::InvalidAuthMgmt)
        );

        assert_eq!(s.check_admin(None), Err(AuthError::UserEmpty));
        assert_eq!(s.check_admin(Some("ghost")), Err(AuthError::UserNotFound));
        assert_eq!(s.check_admin(Some(ROOT)), Ok(()));
        run(&mut s, &engine, user_add("u", "h")).unwrap();
        assert_eq!(s.check_admin(Some("u")), Err(AuthError::PermissionDenied));
    }

    /// etcd 3.5.1, asked with etcdctl (`role grant-permission r write a b`, `... write a
    /// --from-key`, `... read a --from-key`, `... readwrite a b`, `role revoke-permission r a
    /// --from-key` twice, `role get r` between): one key's grants stay in the order they came, a
    /// grant updates only the first permission of its key, a revoke removes every copy.
    #[test]
    fn permissions_keep_etcds_order_and_its_duplicates() {
        let engine = MemoryEngine::new();
        let mut s = AuthStore::default();
        run(
            &mut s,
            &engine,
            Op::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
        )
        .unwrap();
        let grant = |end: &str, t: PermType| {
            Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "r".into(),
                perm: Some(Permission {
                    perm_type: t as i32,
                    key: b"a".to_vec(),
                    range_end: end.into(),
                }),
            })
        };
        let held = |s: &AuthStore| -> Vec<(String, i32)> {
            s.role("r")
                .unwrap()
                .key_permission
                .iter()
                .map(|p| {
                    (
                        String::from_utf8_lossy(&p.range_end).into_owned(),
                        p.perm_type,
                    )
                })
                .collect()
        };
        let (w, r, rw) = (
            PermType::Write as i32,
            PermType::Read as i32,
            PermType::Readwrite as i32,
        );
        run(&mut s, &engine, grant("b", PermType::Write)).unwrap();
        run(&mut s, &engine, grant("\0", PermType::Write)).unwrap();
        run(&mut s, &engine, grant("\0", PermType::Read)).unwrap();
        let (b, open) = ("b".to_string(), "\0".to_string());
        assert_eq!(
            held(&s),
            [(b.clone(), w), (open.clone(), w), (open.clone(), r)]
        );
        run(&mut s, &engine, grant("b", PermType::Readwrite)).unwrap();
        assert_eq!(held(&s), [(b.clone(), rw), (open.clone(), w), (open, r)]);
        let revoke = || {
            Op::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: b"a".to_vec(),
                range_end: b"\0".to_vec(),
            })
        };
        run(&mut s, &engine, revoke()).unwrap();
        assert_eq!(held(&s), [(b, rw)]);
        assert_eq!(
            run(&mut s, &engine, revoke()),
            Err(AuthError::PermissionNotGranted)
        );
    }

    #[test]
    fn users_roles_permissions_survive_a_reload_and_errors_match_etcd() {
        let engine = MemoryEngine::new();
        let mut s = AuthStore::default();
        run(&mut s, &engine, user_add("u", "hash-u")).unwrap();
        assert_eq!(
            run(&mut s, &engine, user_add("u", "x")),
            Err(AuthError::UserAlreadyExist)
        );
        assert_eq!(
            run(&mut s, &engine, user_add("", "x")),
            Err(AuthError::UserEmpty)
        );
        assert_eq!(
            run(&mut s, &engine, grant_role("u", "r")),
            Err(AuthError::RoleNotFound)
        );
        assert_eq!(
            run(&mut s, &engine, grant_role("x", ROOT)),
            Err(AuthError::UserNotFound)
        );
        let role_add = |n: &str| Op::RoleAdd(AuthRoleAddRequest { name: n.into() });
        run(&mut s, &engine, role_add("r")).unwrap();
        assert_eq!(
            run(&mut s, &engine, role_add("r")),
            Err(AuthError::RoleAlreadyExist)
        );
        assert_eq!(
            run(&mut s, &engine, role_add("")),
            Err(AuthError::RoleEmpty)
        );
        let grant = |key: &str, end: &str, t: PermType| {
            Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "r".into(),
                perm: Some(Permission {
                    perm_type: t as i32,
                    key: key.into(),
                    range_end: end.into(),
                }),
            })
        };
        run(&mut s, &engine, grant("p", "q", PermType::Write)).unwrap();
        run(&mut s, &engine, grant("a", "", PermType::Read)).unwrap();
        run(&mut s, &engine, grant("a", "", PermType::Readwrite)).unwrap();
        let keys: Vec<_> = s
            .role("r")
            .unwrap()
            .key_permission
            .iter()
            .map(|p| p.key.clone())
            .collect();
        assert_eq!(
            keys,
            vec![b"a".to_vec(), b"p".to_vec()],
            "sorted, one per range"
        );
        run(&mut s, &engine, grant_role("u", "r")).unwrap();
        let write_a = [Need::new(PermKind::Write, b"a", b"")];
        let read_p = [Need::new(PermKind::Read, b"p1", b"")];
        // Not yet enabled: everything is allowed.
        assert_eq!(s.check(None, &read_p), Ok(()));

        run(&mut s, &engine, user_add(ROOT, "hash-root")).unwrap();
        run(&mut s, &engine, grant_role(ROOT, ROOT)).unwrap();
        run(&mut s, &engine, Op::Enable(AuthEnableRequest {})).unwrap();
        assert_eq!(s.check(Some("u"), &write_a), Ok(()));
        assert_eq!(
            s.check(Some("u"), &read_p),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(s.check(None, &write_a), Err(AuthError::UserEmpty));
        assert_eq!(s.check(Some(ROOT), &read_p), Ok(()), "root bypasses checks");

        let reloaded = AuthStore::load(&engine).unwrap();
        assert_eq!(replicated(&reloaded), replicated(&s));

        let revoke = |key: &str| {
            Op::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: key.into(),
                range_end: Vec::new(),
            })
        };
        run(&mut s, &engine, revoke("a")).unwrap();
        assert_eq!(
            run(&mut s, &engine, revoke("a")),
            Err(AuthError::PermissionNotGranted)
        );
        assert_eq!(
            s.check(Some("u"), &write_a),
            Err(AuthError::PermissionDenied)
        );
        let revoke_role = Op::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "u".into(),
            role: ROOT.into(),
        });
        assert_eq!(
            run(&mut s, &engine, revoke_role),
            Err(AuthError::RoleNotGranted)
        );
        run(
            &mut s,
            &engine,
            Op::RoleDelete(AuthRoleDeleteRequest { role: "r".into() }),
        )
        .unwrap();
        assert!(
            s.user("u").unwrap().roles.is_empty(),
            "a deleted role leaves its users"
        );
        assert_eq!(
            replicated(&AuthStore::load(&engine).unwrap()),
            replicated(&s)
        );
    }

    #[test]
    fn stored_user_records_hold_no_plaintext_password() {
        let engine = MemoryEngine::new();
        let mut s = AuthStore::default();
        let password = "correct horse battery staple";
        let hash = bcrypt::hash_with_salt(password, 4, [7u8; 16])
            .unwrap()
            .to_string();
        run(&mut s, &engine, user_add("alice", &hash)).unwrap();
        let mut seen = 0;
        engine
            .scan(Keyspace::Meta, b"", None, &mut |k, v| {
                seen += 1;
                for part in [k, v] {
                    assert!(
                        !part
                            .windows(password.len())
                            .any(|w| w == password.as_bytes()),
                        "plaintext password stored"
                    );
                }
                true
            })
            .unwrap();
        assert!(seen >= 2, "the user and the auth state were written");
        let stored = s.user("alice").unwrap();
        assert!(bcrypt::verify(password, std::str::from_utf8(&stored.password).unwrap()).unwrap());
    }
}
