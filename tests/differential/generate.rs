//! The request generator: a seeded walk through the space of etcd v3 requests, drawn over a tiny key
//! space (so collisions, overlapping ranges and sort ties are frequent) and steered by the revisions
//! the reference server reported so far (so history reads, compactions and watches hit the past, the
//! present, the future and the compacted past).

use std::collections::HashSet;

use metastore::keys::prefix_end;
use metastore::pb::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleDeleteRequest, AuthRoleGetRequest, AuthRoleRevokePermissionRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, AuthenticateRequest,
};

use metastore::pb::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use metastore::pb::v3lockpb::{LockRequest, UnlockRequest};

use crate::auth::{self, AuthReq, PASSWORDS, ROLES, USERS};
use metastore::pb::etcdserverpb::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, HashKvRequest,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    MemberListRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
};

/// SplitMix64: small, fast and fully determined by the seed (no dependency on a crate's stream).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6d65_7461_7374_6f72)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }

    /// An index drawn with the given weights.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        unreachable!()
    }
}

/// The keys every request draws from: ten keys (so no range ever matches more than ten, and Go's
/// `sort.Sort`, an insertion sort below 12 elements, keeps ties in key order as our sort must), with
/// shared prefixes, a NUL and a 0xff byte.
pub const KEYS: [&[u8]; 10] = [
    b"a", b"ab", b"a\0", b"b", b"b/1", b"b/2", b"ba", b"c", b"\0", b"\xff",
];

/// The most keys of [`KEYS`] a range sorted by version, revision or value may cover (see
/// `Gen::range`).
const MAX_SORTED_KEYS: usize = 6;

/// How many keys of [`KEYS`] `[key, range_end)` covers, as etcd reads a range (an empty end is
/// the key alone, `\0` is every key from `key` on), and, from a key on, a lock key per name and
/// an election key per name.
pub fn keys_in(key: &[u8], range_end: &[u8]) -> usize {
    let generated = KEYS
        .iter()
        .filter(|k| match range_end {
            [] => **k == key,
            [0] => **k >= key,
            end => **k >= key && **k < end,
        })
        .count();
    // A range from a key on may also hold a lock's key and a leader's key for each name.
    let locks = if range_end == [0] {
        LOCK_NAMES.len() + ELECTION_NAMES.len()
    } else {
        0
    };
    generated + locks
}

/// Values: few, so VALUE compares and sorts tie often; the empty value too.
const VALUES: [&[u8]; 7] = [b"", b"x", b"y", b"xy", b"1", b"10", b"2"];

/// Lease ids the generator grants, revokes and attaches (unknown ones are attached too).
pub const LEASES: [i64; 6] = [1, 2, 3, 0x1234, 7_777_777, i64::MAX];

/// One request of a sequence: what is sent to both servers.
#[derive(Clone, Debug, PartialEq)]
pub enum Req {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
    LeaseGrant(LeaseGrantRequest),
    LeaseRevoke(LeaseRevokeRequest),
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    LeaseLeases,
    /// One LeaseKeepAlive stream: this request, its answer, then the stream is closed.
    LeaseKeepAlive(LeaseKeepAliveRequest),
    /// One Watch stream: create (this request), collect until caught up, cancel.
    Watch(WatchCreateRequest),
    /// One Watch stream with several watchers: every create, then a progress request or not,
    /// then cancels of watch ids (created, or not); see `exec::watch_many`.
    WatchMany(Vec<WatchStep>),
    Status,
    MemberList(MemberListRequest),
    Defragment,
    MoveLeader(MoveTarget),
    HashKv(HashKvRequest),
    AlarmGet,
    /// An Auth request (or a logout), see `differential/auth.rs`.
    Auth(AuthReq),
    /// v3lock's Lock, only on a name the generator believes free (a held one would block).
    Lock(LockRequest),
    /// v3lock's Unlock of a key a Lock answered, or of another key.
    Unlock(UnlockRequest),
    /// v3election's Campaign, on a name the generator believes free, or held by the same lease
    /// (a campaign behind another candidate would block).
    Campaign(CampaignRequest),
    /// Proclaim as a leader a Campaign answered (or a changed or made-up leader key).
    Proclaim(ProclaimRequest),
    /// Who leads a name.
    Leader(LeaderRequest),
    /// One Observe stream: its first answer, then the stream is closed. Only on a name the
    /// generator believes held (on another one it waits for a leader).
    Observe(LeaderRequest),
    /// Resign as a leader a Campaign answered (or a changed or made-up leader key).
    Resign(ResignRequest),
}

/// Lock names: their keys (`name/<lease hex>`) sort after every key and range end of the other
/// requests, so only a range from a key on (`\0` end) covers them; [`keys_in`] counts them there.
/// (An empty name, which etcd 3.5.1 grants, is tested in tests/lock.rs: its keys `/<hex>` would
/// sit among the generator's keys.)
/// Neither name is a prefix of the other's keys (a Lock waits for every older key under its
/// `name/`).
pub const LOCK_NAMES: [&[u8]; 2] = [b"\xff\xff\xfflk", b"\xff\xff\xffmu"];

/// Election names, placed as [`LOCK_NAMES`] are and for the same reasons (a leader's key is
/// `name/<lease hex>`, and a campaign waits for every older key under `name/`).
pub const ELECTION_NAMES: [&[u8]; 2] = [b"\xff\xff\xffel", b"\xff\xff\xffvo"];

/// A request on a watch stream of [`Req::WatchMany`].
#[derive(Clone, Debug, PartialEq)]
pub enum WatchStep {
    Create(WatchCreateRequest),
    Progress,
    Cancel(i64),
}

/// The target of a MoveLeader request (member ids differ between the two servers).
#[derive(Clone, Debug, PartialEq)]
pub enum MoveTarget {
    /// `targetID` 0.
    Zero,
    /// The member's own id (a single member already leads).
    SelfId,
    /// An id no member has.
    Unknown(u64),
}

/// What the generator knows of the reference server's state, from its responses so far.
#[derive(Clone, Debug, Default)]
pub struct Ctx {
    /// The highest header revision seen.
    pub rev: i64,
    /// The highest revision compacted successfully (0: none yet).
    pub compacted: i64,
    /// Whether that compaction was `physical` (etcd answered once its backend had dropped the
    /// compacted revisions; otherwise it drops them in the background).
    pub compacted_physically: bool,
    /// Whether etcd has defragmented its backend (see [`Gen::watch`]).
    pub defragmented: bool,
    /// Whether etcd last answered that auth is on (an `AuthEnable` succeeded since the last
    /// successful `AuthDisable`).
    pub auth_enabled: bool,
    /// The user whose token the connection holds, as far as etcd's answers tell: set by a
    /// successful `Authenticate`, cleared when auth goes off, that user is deleted or gets a new
    /// password (etcd then drops its tokens), or etcd calls the token invalid.
    pub logged_in: Option<String>,
    /// The key etcd's last successful Lock of each name answered, while the generator believes
    /// it held: until its Unlock, the revoke of its lease, or any delete or txn that may have
    /// removed it (then the name is left alone).
    /// (name → the key and its lease; `None`: maybe removed, left alone.)
    pub locks: std::collections::BTreeMap<Vec<u8>, Option<(Vec<u8>, i64)>>,
    /// The leader key etcd's last successful Campaign of each name answered, while the generator
    /// believes it leads: until its Resign, the revoke of its lease, or anything that may have
    /// removed or replaced its key (then the name is left alone, `None`).
    pub elections: std::collections::BTreeMap<Vec<u8>, Option<LeaderKey>>,
}

/// The generator of one seed.
pub struct Gen {
    rng: Rng,
    /// Request classes left out (`METASTORE_DIFF_SKIP`, for hunting past a known divergence):
    /// whole requests `range`, `put`, `delete`, `txn`, `compact`, `lease_grant`, `lease_revoke`,
    /// `lease_ttl`, `lease_leases`, `lease_keepalive`, `watch`, `status`, `member_list`, `defragment`,
    /// `move_leader`, `hash_kv`, `alarm`, `auth`, `lock`, `election`, `watch_many`; features `empty_key`, `invalid_sort_order`,
    /// `invalid_compare` (unknown compare targets and results), `invalid_filter` (watch),
    /// `empty_op` (a txn op with no request), `nested_txn`, `many_ops` (txns at the op limit),
    /// `watch_negative_start`, `invalid_perm` (unknown permission types), `hashed_password`
    /// (client-side hashes in user add and password change).
    skip: HashSet<String>,
}

impl Gen {
    pub fn new(seed: u64, skip: HashSet<String>) -> Gen {
        Gen {
            rng: Rng::new(seed),
            skip,
        }
    }

    fn on(&self, class: &str) -> bool {
        !self.skip.contains(class)
    }

    /// The next request, given what the reference server has reported so far.
    pub fn next(&mut self, ctx: &Ctx) -> Req {
        // With auth on and no token, most requests would only be refused: log in often.
        if self.on("auth") && ctx.auth_enabled && ctx.logged_in.is_none() && self.rng.chance(40) {
            return Req::Auth(self.login());
        }
        {
            let classes: [(&str, u64); 21] = [
                ("range", 20),
                ("put", 22),
                ("delete", 8),
                ("txn", 22),
                ("compact", 3),
                ("lease_grant", 4),
                ("lease_revoke", 2),
                ("lease_ttl", 2),
                ("lease_leases", 1),
                ("lease_keepalive", 2),
                ("watch", 3),
                ("watch_many", 2),
                ("status", 1),
                ("member_list", 1),
                ("defragment", 1),
                ("move_leader", 1),
                ("hash_kv", 2),
                ("alarm", 1),
                ("auth", 14),
                ("lock", 3),
                ("election", 4),
            ];
            // With auth on, MetaStore refuses a caller without a user on every RPC but
            // Authenticate and AuthStatus, where etcd 3.5 lets one through on those it does not
            // check (a decision of our security review, tested in tests/auth.rs): not sent then.
            let anonymous = ctx.auth_enabled && ctx.logged_in.is_none();
            let unchecked_by_etcd = [
                "status",
                "alarm",
                "member_list",
                "compact",
                "lease_grant",
                "lease_revoke",
                "lease_ttl",
                "lease_leases",
                "lease_keepalive",
                "move_leader",
            ];
            let weights: Vec<u64> = classes
                .iter()
                .map(|(name, w)| {
                    if !self.on(name) || (anonymous && unchecked_by_etcd.contains(name)) {
                        0
                    } else {
                        *w
                    }
                })
                .collect();
            let class = classes[self.rng.weighted(&weights)].0;
            match class {
                "range" => Req::Range(self.range(ctx, false)),
                "put" => Req::Put(self.put()),
                "delete" => Req::DeleteRange(self.delete()),
                "txn" => Req::Txn(loop {
                    let t = self.txn(ctx, 0);
                    if !kills_etcd(&t) {
                        break t;
                    }
                }),
                "compact" => Req::Compact(CompactionRequest {
                    revision: self.revision(ctx),
                    physical: self.rng.chance(50),
                }),
                "lease_grant" => Req::LeaseGrant(LeaseGrantRequest {
                    // Long enough that nothing expires during a seed (expiry would race the requests).
                    ttl: if self.rng.chance(5) {
                        9_000_000_001 // over etcd's MaxLeaseTTL
                    } else {
                        self.rng.pick(&[60, 300, 3600, 9_000_000_000])
                    },
                    id: self.lease_id(),
                }),
                "lease_revoke" => Req::LeaseRevoke(LeaseRevokeRequest {
                    id: self.lease_id(),
                }),
                "lease_ttl" => Req::LeaseTimeToLive(LeaseTimeToLiveRequest {
                    id: self.lease_id(),
                    keys: self.rng.chance(70),
                }),
                "lease_leases" => Req::LeaseLeases,
                "lease_keepalive" => Req::LeaseKeepAlive(LeaseKeepAliveRequest {
                    id: self.lease_id(),
                }),
                "watch" => Req::Watch(self.watch(ctx)),
                "watch_many" => Req::WatchMany(self.watch_many(ctx)),
                "status" => Req::Status,
                "member_list" => Req::MemberList(MemberListRequest {
                    linearizable: self.rng.chance(50),
                }),
                "defragment" => Req::Defragment,
                "move_leader" => Req::MoveLeader(match self.rng.below(3) {
                    0 => MoveTarget::Zero,
                    1 => MoveTarget::SelfId,
                    _ => MoveTarget::Unknown(self.rng.pick(&[1, 42, u64::MAX])),
                }),
                "hash_kv" => Req::HashKv(HashKvRequest {
                    revision: self.revision(ctx),
                }),
                "alarm" => Req::AlarmGet,
                "auth" => Req::Auth(self.auth()),
                "lock" => self.lock(ctx),
                "election" => self.election(ctx),
                _ => unreachable!(),
            }
        }
    }

    /// An Auth request over [`USERS`], [`ROLES`] and permissions on the key space. The pair that
    /// lets auth be enabled (user root with role root) is drawn more often than chance would.
    fn auth(&mut self) -> AuthReq {
        let user = |g: &mut Gen| g.rng.pick(&USERS).to_string();
        let role = |g: &mut Gen| g.rng.pick(&ROLES).to_string();
        match self
            .rng
            .weighted(&[6, 3, 3, 8, 2, 10, 4, 2, 3, 3, 10, 3, 8, 4, 2, 2, 10, 4])
        {
            0 => AuthReq::Enable,
            1 => AuthReq::Disable,
            2 => AuthReq::Status,
            3 => self.login(),
            4 => AuthReq::Logout,
            5 => {
                let name = user(self);
                let (password, hashed) = self.password();
                let no_password = self.rng.chance(8);
                auth::user_add(&name, &password, hashed, no_password)
            }
            6 => AuthReq::UserGet(AuthUserGetRequest { name: user(self) }),
            7 => AuthReq::UserList,
            8 => AuthReq::UserDelete(AuthUserDeleteRequest { name: user(self) }),
            9 => {
                let name = user(self);
                let (password, hashed_password) = self.password();
                AuthReq::UserChangePassword(AuthUserChangePasswordRequest {
                    name,
                    password,
                    hashed_password: hashed_password.unwrap_or_default(),
                })
            }
            10 => AuthReq::UserGrantRole(if self.rng.chance(30) {
                AuthUserGrantRoleRequest {
                    user: "root".into(),
                    role: "root".into(),
                }
            } else {
                AuthUserGrantRoleRequest {
                    user: user(self),
                    role: role(self),
                }
            }),
            11 => AuthReq::UserRevokeRole(AuthUserRevokeRoleRequest {
                name: user(self),
                role: role(self),
            }),
            12 => AuthReq::RoleAdd(AuthRoleAddRequest { name: role(self) }),
            13 => AuthReq::RoleGet(AuthRoleGetRequest { role: role(self) }),
            14 => AuthReq::RoleList,
            15 => AuthReq::RoleDelete(AuthRoleDeleteRequest { role: role(self) }),
            16 => {
                let name = role(self);
                let perm_type = if self.on("invalid_perm") && self.rng.chance(3) {
                    self.rng.pick(&[3, 9])
                } else {
                    self.rng.below(3) as i32
                };
                let key = self.key();
                let range_end = self.range_end(&key);
                auth::grant(&name, perm_type, key, range_end)
            }
            _ => {
                let role = role(self);
                let key = self.key();
                let range_end = self.range_end(&key);
                AuthReq::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                    role,
                    key,
                    range_end,
                })
            }
        }
    }

    /// Lock a name no Lock holds (with a lease of [`LEASES`], granted or not, or an unknown
    /// one), or unlock a key a Lock answered, or another key.
    fn lock(&mut self, ctx: &Ctx) -> Req {
        let free: Vec<&[u8]> = LOCK_NAMES
            .iter()
            .copied()
            .filter(|n| !ctx.locks.contains_key(*n))
            .collect();
        let held: Vec<Vec<u8>> = ctx
            .locks
            .values()
            .flatten()
            .map(|(k, _)| k.clone())
            .collect();
        if !free.is_empty() && self.rng.chance(if held.is_empty() { 80 } else { 60 }) {
            return Req::Lock(LockRequest {
                name: self.rng.pick(&free).to_vec(),
                lease: self.lease_id(),
            });
        }
        let key = if !held.is_empty() && self.rng.chance(80) {
            self.rng.pick(&held)
        } else {
            self.rng
                .pick(&[&b"\xff\xff\xfflk/1"[..], b"a", b""])
                .to_vec()
        };
        Req::Unlock(UnlockRequest { key })
    }

    /// An Election request: a campaign on a free name (with a lease of [`LEASES`], granted or not,
    /// or an unknown one), a leader campaigning again (with another value or the same), Leader,
    /// Observe of a led name, Proclaim and Resign with a leader key a Campaign answered, changed
    /// (another revision or lease) or made up.
    fn election(&mut self, ctx: &Ctx) -> Req {
        let free: Vec<&[u8]> = ELECTION_NAMES
            .iter()
            .copied()
            .filter(|n| !ctx.elections.contains_key(*n))
            .collect();
        let held: Vec<LeaderKey> = ctx.elections.values().flatten().cloned().collect();
        let (any_free, any_held) = (!free.is_empty(), !held.is_empty());
        let when = |yes: bool, w: u64| if yes { w } else { 0 };
        match self.rng.weighted(&[
            when(any_free, 30),
            when(any_held, 8),
            18,
            when(any_held, 8),
            20,
            16,
        ]) {
            0 => Req::Campaign(CampaignRequest {
                name: self.rng.pick(&free).to_vec(),
                lease: self.lease_id(),
                value: self.value(),
            }),
            1 => {
                let leader = self.rng.pick(&held);
                Req::Campaign(CampaignRequest {
                    name: leader.name,
                    lease: leader.lease,
                    value: self.value(),
                })
            }
            2 => Req::Leader(LeaderRequest {
                // A lock's name and `b` (whose keys `b/1`, `b/2` the generator writes) have
                // leaders too: the oldest key under `name/`.
                name: self
                    .rng
                    .pick(&[
                        ELECTION_NAMES[0],
                        ELECTION_NAMES[1],
                        LOCK_NAMES[0],
                        b"b",
                        b"",
                    ])
                    .to_vec(),
            }),
            3 => Req::Observe(LeaderRequest {
                name: self.rng.pick(&held).name,
            }),
            4 => Req::Proclaim(ProclaimRequest {
                leader: self.leader_key(ctx, &held),
                value: self.value(),
            }),
            _ => Req::Resign(ResignRequest {
                leader: self.leader_key(ctx, &held),
            }),
        }
    }

    /// A leader key for Proclaim or Resign: mostly one a Campaign answered, now and then with
    /// another revision or lease; else one made up (a key of an election name with a lease of
    /// [`LEASES`] or an unknown one, at a revision above 0: at 0 a Proclaim would create it; now
    /// and then the empty key); rarely none.
    fn leader_key(&mut self, ctx: &Ctx, held: &[LeaderKey]) -> Option<LeaderKey> {
        if self.rng.chance(4) {
            return None;
        }
        if !held.is_empty() && self.rng.chance(75) {
            let mut leader = self.rng.pick(held);
            match self.rng.weighted(&[80, 10, 10]) {
                0 => {}
                1 => leader.rev += self.rng.pick(&[-1, 1]),
                _ => leader.lease = self.lease_id(),
            }
            return Some(leader);
        }
        let name = self.rng.pick(&ELECTION_NAMES).to_vec();
        let lease = self.lease_id();
        let mut key = name.clone();
        key.extend(format!("/{lease:x}").bytes());
        if self.on("empty_key") && self.rng.chance(5) {
            key.clear();
        }
        Some(LeaderKey {
            name,
            key,
            rev: self.rng.between(1, ctx.rev.max(1) + 1),
            lease,
        })
    }

    /// Log in: mostly as root with the right password, sometimes as another user or wrongly.
    fn login(&mut self) -> AuthReq {
        let name = USERS[self.rng.weighted(&[60, 25, 10, 5])].to_string();
        let password = if self.rng.chance(85) {
            "pw".to_string()
        } else {
            self.rng.pick(&PASSWORDS).to_string()
        };
        AuthReq::Authenticate(AuthenticateRequest { name, password })
    }

    /// A password for user add or change: mostly `pw`; sometimes a client-side hash instead.
    fn password(&mut self) -> (String, Option<String>) {
        let password = if self.rng.chance(80) {
            "pw".to_string()
        } else {
            self.rng.pick(&PASSWORDS).to_string()
        };
        if self.on("hashed_password") && self.rng.chance(8) {
            let hashed = if self.rng.chance(75) {
                auth::hashed_pw()
            } else {
                "not a bcrypt hash".to_string()
            };
            // Mostly without the plain password beside it.
            let password = if self.rng.chance(70) {
                String::new()
            } else {
                password
            };
            return (password, Some(hashed));
        }
        (password, None)
    }

    /// A key of the key space; the empty key now and then (a request error wherever a key is needed).
    fn key(&mut self) -> Vec<u8> {
        if self.on("empty_key") && self.rng.chance(3) {
            return Vec::new();
        }
        self.rng.pick(&KEYS).to_vec()
    }

    /// A range end for `key`: none (one key), the prefix end, from-key (`\0`), another key of the
    /// space (possibly below `key`: an empty range), or past every key.
    fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.rng.weighted(&[40, 20, 12, 20, 8]) {
            0 => Vec::new(),
            1 => prefix_end(key),
            2 => vec![0],
            3 => self.rng.pick(&KEYS).to_vec(),
            _ => self.rng.pick(&[&b"\xff"[..], b"\xff\xff", b"z"]).to_vec(),
        }
    }

    fn value(&mut self) -> Vec<u8> {
        self.rng.pick(&VALUES).to_vec()
    }

    fn lease_id(&mut self) -> i64 {
        match self.rng.weighted(&[85, 5, 10]) {
            0 => self.rng.pick(&LEASES),
            1 => -1,
            _ => self.rng.pick(&[99, 0x4321]), // never granted
        }
    }

    /// A revision relative to the reference's state: 0, current, a past one, the compacted one and
    /// just below it, future ones, negative ones.
    fn revision(&mut self, ctx: &Ctx) -> i64 {
        let cur = ctx.rev.max(1);
        match self.rng.weighted(&[15, 15, 25, 10, 8, 10, 5, 5, 7]) {
            0 => 0,
            1 => cur,
            2 => self.rng.between(ctx.compacted.max(1), cur),
            3 => ctx.compacted,
            4 => (ctx.compacted - 1).max(1),
            5 => cur + 1,
            6 => cur + self.rng.between(2, 50),
            7 => self.rng.pick(&[-1, -2, i64::MIN]),
            _ => self.rng.between(1, cur),
        }
    }

    fn range(&mut self, ctx: &Ctx, in_txn: bool) -> RangeRequest {
        let key = self.key();
        let range_end = self.range_end(&key);
        let sort_order = if self.on("invalid_sort_order") && self.rng.chance(2) {
            self.rng.pick(&[3, 7])
        } else {
            self.rng.pick(&[0, 0, 1, 2])
        };
        // Never an unknown sort target: etcd 3.5.1 does not check it and dies on it (a nil
        // `sort.Interface`), so it is no oracle there.
        let sort_target = self.rng.pick(&[0, 0, 1, 2, 3, 4]);
        let mut range_end = range_end;
        // A sort by anything but the key can tie; etcd sorts with Go's `sort.Sort`, stable only up
        // to 6 elements (above that a shell-sort pass with gap 6 reorders ties): keep such ranges
        // to at most 6 keys of the key space.
        let sorts_by_value = matches!(sort_order, 1 | 2) || (sort_order == 0 && sort_target != 0);
        if sorts_by_value && sort_target != 0 && keys_in(&key, &range_end) > MAX_SORTED_KEYS {
            range_end = prefix_end(&key);
            if keys_in(&key, &range_end) > MAX_SORTED_KEYS {
                range_end.clear();
            }
        }
        let revision = if self.rng.chance(if in_txn { 30 } else { 40 }) {
            self.revision(ctx)
        } else {
            0
        };
        let mut r = RangeRequest {
            key,
            range_end,
            limit: match self.rng.weighted(&[60, 30, 10]) {
                0 => 0,
                1 => self.rng.between(1, 4),
                _ => self.rng.pick(&[-1, -3, 12]),
            },
            revision,
            sort_order,
            sort_target,
            serializable: !in_txn && self.rng.chance(20),
            keys_only: self.rng.chance(15),
            count_only: self.rng.chance(10),
            ..Default::default()
        };
        if self.rng.chance(20) {
            let cur = ctx.rev.max(1);
            let which = self.rng.below(4);
            let bound = self.rng.between(0, cur + 1);
            match which {
                0 => r.min_mod_revision = bound,
                1 => r.max_mod_revision = bound,
                2 => r.min_create_revision = bound,
                _ => r.max_create_revision = bound,
            }
            if self.rng.chance(30) {
                r.max_mod_revision = self.rng.between(0, cur + 1);
                r.min_create_revision = self.rng.between(0, cur + 1);
            }
        }
        r
    }

    fn put(&mut self) -> PutRequest {
        let mut p = PutRequest {
            key: self.key(),
            value: self.value(),
            prev_kv: self.rng.chance(40),
            ..Default::default()
        };
        if self.rng.chance(25) {
            p.lease = self.lease_id();
        }
        if self.rng.chance(10) {
            p.ignore_value = true;
            // A value along with ignore_value is an error; mostly send none.
            if self.rng.chance(70) {
                p.value.clear();
            }
        }
        if self.rng.chance(10) {
            p.ignore_lease = true;
            // A lease along with ignore_lease is an error; mostly send none.
            if self.rng.chance(70) {
                p.lease = 0;
            }
        }
        p
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        let key = self.key();
        DeleteRangeRequest {
            range_end: self.range_end(&key),
            key,
            prev_kv: self.rng.chance(40),
        }
    }

    fn watch(&mut self, ctx: &Ctx) -> WatchCreateRequest {
        let key = if self.on("empty_key") && self.rng.chance(3) {
            Vec::new()
        } else {
            self.rng.pick(&KEYS).to_vec()
        };
        let range_end = self.range_end(&key);
        // A watch from exactly the compacted revision reads its tombstones from etcd's backend,
        // which a non-physical compaction is still deleting in the background: a race, not an
        // answer. Start one later then.
        let first_watchable = if ctx.compacted_physically {
            ctx.compacted.max(1)
        } else {
            (ctx.compacted + 1).max(1)
        };
        // etcd 3.5.1 may die (SIGBUS, `fatal error: fault` in `syncWatchers` → `kvsToEvents`) when
        // a watch catches up from history after a defragmentation: the catch-up decodes values
        // through pointers into bbolt's memory map after letting go of the read lock, and the
        // defragmented file no longer backs them (etcd#13505, fixed in 3.5.2). After a defragment
        // it is no oracle for a watch from the past, so watches start now or in the future.
        let history = if ctx.defragmented { 0 } else { 50 };
        let mut filters = Vec::new();
        if self.rng.chance(15) {
            filters.push(0); // NOPUT
        }
        if self.rng.chance(15) {
            filters.push(1); // NODELETE
        }
        if self.on("invalid_filter") && self.rng.chance(3) {
            filters.push(5);
        }
        WatchCreateRequest {
            key,
            range_end,
            start_revision: match self.rng.weighted(&[
                10,
                history,
                history * 15 / 50,
                history / 5,
                10,
                if self.on("watch_negative_start") {
                    history / 10
                } else {
                    0
                },
            ]) {
                0 => 0,
                1 => self
                    .rng
                    .between(first_watchable, ctx.rev.max(first_watchable)),
                2 => first_watchable,
                3 => (ctx.compacted - 1).max(1),
                4 => ctx.rev + self.rng.between(1, 3),
                _ => self.rng.pick(&[-1, -100]),
            },
            progress_notify: self.rng.chance(10),
            filters,
            prev_kv: self.rng.chance(50),
            watch_id: if self.rng.chance(20) {
                self.rng.pick(&[1, 7, 100])
            } else {
                0
            },
            fragment: self.rng.chance(10),
        }
    }

    /// Two to four creates on one stream (ids mostly chosen by the server, else ones that may
    /// collide), a progress request now and then, and up to three cancels of ids that were
    /// probably given, or not.
    fn watch_many(&mut self, ctx: &Ctx) -> Vec<WatchStep> {
        let mut steps = Vec::new();
        for _ in 0..self.rng.between(2, 4) {
            let mut create = self.watch(ctx);
            create.watch_id = if self.rng.chance(25) {
                self.rng.pick(&[1, 2, 7])
            } else {
                0
            };
            steps.push(WatchStep::Create(create));
        }
        // etcd 3.5.1 loses the catch-up of every watcher it syncs in the same round as one from
        // revision -1 (before any compaction -1 passes its check; its resync then reads history
        // from -1 as an empty range and marks them all synced: etcd#20693). MetaStore gives each
        // its events, so the generator does not ask etcd for that loss: beside a watch from the
        // past, a watch from -1 starts now instead.
        let catches_up = |step: &WatchStep| matches!(step, WatchStep::Create(c) if (1..=ctx.rev).contains(&c.start_revision));
        if steps.iter().any(catches_up) {
            for step in &mut steps {
                if let WatchStep::Create(c) = step {
                    if c.start_revision == -1 {
                        c.start_revision = 0;
                    }
                }
            }
        }
        if self.rng.chance(40) {
            steps.push(WatchStep::Progress);
        }
        for _ in 0..self.rng.between(0, 3) {
            steps.push(WatchStep::Cancel(self.rng.pick(&[0, 1, 2, 3, 7, 99, -1])));
        }
        steps
    }

    fn compare(&mut self, ctx: &Ctx) -> Compare {
        let key = self.key();
        let range_end = if self.rng.chance(25) {
            self.range_end(&key)
        } else {
            Vec::new()
        };
        let target = if self.on("invalid_compare") && self.rng.chance(3) {
            self.rng.pick(&[5, 9])
        } else {
            self.rng.below(5) as i32
        };
        let result = if self.on("invalid_compare") && self.rng.chance(3) {
            self.rng.pick(&[4, 8])
        } else {
            self.rng.below(4) as i32
        };
        let cur = ctx.rev.max(1);
        let int = |g: &mut Gen| match g.rng.weighted(&[20, 20, 20, 20, 10, 10]) {
            0 => 0,
            1 => g.rng.between(1, 3),
            2 => cur,
            3 => g.rng.between(1, cur),
            4 => cur + 1,
            _ => -1,
        };
        // Mostly the union that matches the target; sometimes none or another one.
        let union_kind = match self.rng.weighted(&[85, 8, 7]) {
            0 => target,
            1 => -1,
            _ => self.rng.below(5) as i32,
        };
        let target_union = match union_kind {
            0 => Some(compare::TargetUnion::Version(int(self))),
            1 => Some(compare::TargetUnion::CreateRevision(int(self))),
            2 => Some(compare::TargetUnion::ModRevision(int(self))),
            3 => Some(compare::TargetUnion::Value(self.value())),
            4 => Some(compare::TargetUnion::Lease(if self.rng.chance(40) {
                0
            } else {
                self.lease_id()
            })),
            _ => None,
        };
        Compare {
            result,
            target,
            key,
            range_end,
            target_union,
        }
    }

    fn op(&mut self, ctx: &Ctx, depth: u32) -> RequestOp {
        if self.on("empty_op") && self.rng.chance(2) {
            return RequestOp { request: None };
        }
        let nested = depth < 3 && self.on("nested_txn") && !nesting_unchecked_by_etcd(ctx);
        let request = match self
            .rng
            .weighted(&[35, 35, 18, if nested { 12 } else { 0 }])
        {
            0 => request_op::Request::RequestRange(self.range(ctx, true)),
            1 => request_op::Request::RequestPut(self.put()),
            2 => request_op::Request::RequestDeleteRange(self.delete()),
            _ => request_op::Request::RequestTxn(self.txn(ctx, depth + 1)),
        };
        RequestOp {
            request: Some(request),
        }
    }

    fn txn(&mut self, ctx: &Ctx, depth: u32) -> TxnRequest {
        if depth == 0 && self.on("many_ops") && self.rng.chance(2) {
            return self.big_txn(ctx);
        }
        let max_ops = if depth == 0 { 4 } else { 3 };
        let compares = self.rng.weighted(&[25, 40, 25, 10]);
        let mut t = TxnRequest::default();
        for _ in 0..compares {
            t.compare.push(self.compare(ctx));
        }
        for _ in 0..self.rng.between(0, max_ops) {
            t.success.push(self.op(ctx, depth));
        }
        for _ in 0..self.rng.between(0, max_ops) {
            t.failure.push(self.op(ctx, depth));
        }
        t
    }

    /// A txn at or just over the op limit (128, both servers' default) in one of its lists, or
    /// near it with a nested txn (etcd gives a nested txn what its parent's longest list leaves of
    /// the limit).
    fn big_txn(&mut self, ctx: &Ctx) -> TxnRequest {
        let n = self.rng.pick(&[124, 126, 127, 128, 129, 200]);
        let mut t = TxnRequest::default();
        let which = self.rng.below(3);
        for _ in 0..n {
            match which {
                0 => t.compare.push(self.compare(ctx)),
                _ => {
                    // Mostly ranges, which may repeat keys; a put now and then (a repeated put key
                    // is a duplicate-key error, which the op count check must precede).
                    let op = if self.rng.chance(3) {
                        request_op::Request::RequestPut(self.put())
                    } else {
                        request_op::Request::RequestRange(self.range(ctx, true))
                    };
                    let op = RequestOp { request: Some(op) };
                    if which == 1 {
                        t.success.push(op)
                    } else {
                        t.failure.push(op)
                    }
                }
            }
        }
        if self.rng.chance(50) && !nesting_unchecked_by_etcd(ctx) {
            // A nested txn with a few ops, in the list that is not full.
            let mut nested = TxnRequest::default();
            for _ in 0..self.rng.between(0, 5) {
                let op = request_op::Request::RequestRange(self.range(ctx, true));
                nested.success.push(RequestOp { request: Some(op) });
            }
            let op = RequestOp {
                request: Some(request_op::Request::RequestTxn(nested)),
            };
            if which == 1 {
                t.failure.push(op)
            } else {
                t.success.push(op)
            }
        }
        t
    }
}

/// Whether a nested txn would reach etcd 3.5.1 unchecked: with auth on, it checks the
/// permissions of a txn's own compares and operations but not of its nested txns (later releases
/// do; MetaStore does, README "Where MetaStore differs"), so a user without the root role could
/// read and write through one what it may not. No nested txn is sent then.
fn nesting_unchecked_by_etcd(ctx: &Ctx) -> bool {
    ctx.auth_enabled && ctx.logged_in.as_deref() != Some("root")
}

/// Whether etcd 3.5.1 would die on `t` (so it is no oracle for it): its duplicate-key check reads a
/// delete's range end `\0` (from the key on) as an empty interval, so a put with `ignore_value` or
/// `ignore_lease` of a key that such a delete removed earlier in the same txn passes it, fails at
/// apply after the txn has written, and etcd panics ("unexpected error during txn"). Judged over
/// the whole txn tree, ignoring branches and order (a superset of the fatal cases).
pub fn kills_etcd(t: &TxnRequest) -> bool {
    fn walk<'a>(
        t: &'a TxnRequest,
        from_key_deletes: &mut Vec<&'a [u8]>,
        ignore_puts: &mut Vec<&'a [u8]>,
    ) {
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(request_op::Request::RequestDeleteRange(d)) if d.range_end == [0] => {
                    from_key_deletes.push(&d.key)
                }
                Some(request_op::Request::RequestPut(p)) if p.ignore_value || p.ignore_lease => {
                    ignore_puts.push(&p.key)
                }
                Some(request_op::Request::RequestTxn(t)) => walk(t, from_key_deletes, ignore_puts),
                _ => {}
            }
        }
    }
    let (mut deletes, mut puts) = (Vec::new(), Vec::new());
    walk(t, &mut deletes, &mut puts);
    deletes.iter().any(|d| puts.iter().any(|p| p >= d))
}
