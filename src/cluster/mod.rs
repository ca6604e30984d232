//! Cluster membership as etcd presents it: `--initial-cluster` parsing, member and cluster ids,
//! the attributes a member publishes through the log (name, client URLs), and the member list
//! built from raft's membership plus those attributes.

use std::collections::BTreeMap;

use prost::Message;
use serde::{Deserialize, Serialize};

pub use crate::config::initial_cluster::{
    check_self, parse_initial_cluster, ClusterConfigError, InitialCluster,
};
use crate::pb::metastore::MemberAttributes;
use crate::storage::{Engine, Keyspace, StorageError, WriteBatch};

pub mod version;

pub use version::{SERVER_VERSION, SNAPSHOT_FILE_VERSION};

/// Prefix of published attributes in the `Meta` keyspace (part of snapshots, like all replicated state).
const ATTRIBUTES_PREFIX: &[u8] = b"member/";

/// What raft's membership records about a member: its name and peer URLs. (Client URLs are
/// published through the log once the member runs, as etcd does.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// `--name` (empty for a member added but not started yet, as in etcd).
    pub name: String,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// FNV-1a over `parts` (each followed by a separator byte): stable ids without a dependency.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The id of a member of a new cluster: derived from its peer URLs and the cluster token (as
/// etcd derives it), so every member computes every other member's id alike. Never 0.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let joined = urls.join(",");
    fnv1a64(&[joined.as_bytes(), token.as_bytes()]).max(1)
}

/// The cluster id: derived from the founding members' ids and the token. Never 0.
pub fn cluster_id(member_ids: impl IntoIterator<Item = u64>, token: &str) -> u64 {
    let mut ids: Vec<u64> = member_ids.into_iter().collect();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a64(&[&bytes, token.as_bytes()]).max(1)
}

/// The founding members of a new cluster, keyed by id.
pub fn founding_members(cluster: &InitialCluster, token: &str) -> BTreeMap<u64, PeerNode> {
    cluster
        .iter()
        .map(|(name, urls)| {
            (
                member_id(urls, token),
                PeerNode {
                    name: name.clone(),
                    peer_urls: urls.clone(),
                },
            )
        })
        .collect()
}

fn attributes_key(member_id: u64) -> Vec<u8> {
    let mut key = ATTRIBUTES_PREFIX.to_vec();
    key.extend_from_slice(format!("{member_id:016x}").as_bytes());
    key
}

/// Record a member's published attributes (applied from the log).
pub fn put_attributes(batch: &mut WriteBatch, attrs: &MemberAttributes) {
    batch.put(
        Keyspace::Meta,
        attributes_key(attrs.member_id),
        attrs.encode_to_vec(),
    );
}

/// Forget a removed member's attributes.
pub fn delete_attributes(batch: &mut WriteBatch, member_id: u64) {
    batch.delete(Keyspace::Meta, attributes_key(member_id));
}

/// Every published attribute record, by member id.
pub fn read_attributes(
    engine: &dyn Engine,
) -> Result<BTreeMap<u64, MemberAttributes>, StorageError> {
    let mut out = BTreeMap::new();
    let mut end = ATTRIBUTES_PREFIX.to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    engine.scan(
        Keyspace::Meta,
        ATTRIBUTES_PREFIX,
        Some(&end),
        &mut |_, v| {
            if let Ok(attrs) = MemberAttributes::decode(v) {
                out.insert(attrs.member_id, attrs);
            }
            true
        },
    )?;
    Ok(out)
}

/// Prefix of raised alarms in the `Meta` keyspace: `alarm/<member id hex>/<alarm type>`.
const ALARMS_PREFIX: &[u8] = b"alarm/";

fn alarm_key(member_id: u64, alarm: i32) -> Vec<u8> {
    format!("alarm/{member_id:016x}/{alarm}").into_bytes()
}

/// Raise an alarm (applied from the log).
pub fn put_alarm(batch: &mut WriteBatch, member_id: u64, alarm: i32) {
    batch.put(Keyspace::Meta, alarm_key(member_id, alarm), Vec::new());
}

/// Clear an alarm (applied from the log).
pub fn delete_alarm(batch: &mut WriteBatch, member_id: u64, alarm: i32) {
    batch.delete(Keyspace::Meta, alarm_key(member_id, alarm));
}

/// Whether `member_id`'s alarm of type `alarm` is raised in `engine`.
pub fn alarm_raised(engine: &dyn Engine, member_id: u64, alarm: i32) -> Result<bool, StorageError> {
    Ok(engine
        .get(Keyspace::Meta, &alarm_key(member_id, alarm))?
        .is_some())
}

/// Every raised alarm as `(member id, alarm type)`, in order.
pub fn read_alarms(engine: &dyn Engine) -> Result<Vec<(u64, i32)>, StorageError> {
    let mut out = Vec::new();
    let mut end = ALARMS_PREFIX.to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    engine.scan(Keyspace::Meta, ALARMS_PREFIX, Some(&end), &mut |k, _| {
        let text = String::from_utf8_lossy(&k[ALARMS_PREFIX.len()..]).into_owned();
        if let Some((member, alarm)) = text.split_once('/') {
            if let (Ok(m), Ok(a)) = (u64::from_str_radix(member, 16), alarm.parse()) {
                out.push((m, a));
            }
        }
        true
    })?;
    Ok(out)
}

/// One member as `MemberList` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// A membership change a member asks the leader to make.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add a member (as a learner, or straight in as a voter).
    Add {
        id: u64,
        node: PeerNode,
        learner: bool,
    },
    /// Remove a voter or a learner.
    Remove { id: u64 },
    /// Replace a member's peer URLs.
    Update { id: u64, peer_urls: Vec<String> },
    /// Make a learner a voter (only once it has caught up).
    Promote { id: u64 },
}

/// Why a membership change was refused. Texts are etcd's where etcd has one.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipError {
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: given member URLs are invalid")]
    BadUrls,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("etcdserver: no leader")]
    NoLeader,
    /// Another membership change is not committed yet (or this leader has not committed an
    /// entry of its own term): nothing was written; the change is tried again.
    #[error("etcdserver: a previous membership change is not committed yet")]
    Busy,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_like_etcd() {
        let c = parse_initial_cluster(
            "a=http://1.1.1.1:2380, b=http://2.2.2.2:2380,a=http://1.1.1.1:2381/",
        )
        .expect("parses");
        assert_eq!(
            c["a"],
            vec![
                "http://1.1.1.1:2380".to_string(),
                "http://1.1.1.1:2381".to_string()
            ]
        );
        assert_eq!(c["b"], vec!["http://2.2.2.2:2380".to_string()]);
        assert!(matches!(
            parse_initial_cluster("a"),
            Err(ClusterConfigError::BadEntry(_))
        ));
        assert!(matches!(
            parse_initial_cluster("a=http://x:1,b=http://x:1"),
            Err(ClusterConfigError::DuplicateUrl(_))
        ));
    }

    #[test]
    fn ids_depend_on_urls_and_token_not_order() {
        let a = vec!["http://1:1".to_string(), "http://2:2".to_string()];
        let b = vec!["http://2:2".to_string(), "http://1:1".to_string()];
        assert_eq!(member_id(&a, "t"), member_id(&b, "t"));
        assert_ne!(member_id(&a, "t"), member_id(&a, "u"));
        assert_eq!(cluster_id([3, 1, 2], "t"), cluster_id([1, 2, 3], "t"));
        assert_ne!(cluster_id([1, 2], "t"), cluster_id([1, 2, 3], "t"));
    }

    #[test]
    fn self_must_be_listed_with_its_urls() {
        let c = parse_initial_cluster("a=http://1.1.1.1:2380").expect("parses");
        assert!(check_self(&c, "a", &["http://1.1.1.1:2380".into()]).is_ok());
        assert!(matches!(
            check_self(&c, "b", &[]),
            Err(ClusterConfigError::NameMissing(_))
        ));
        assert!(matches!(
            check_self(&c, "a", &["http://1.1.1.1:9".into()]),
            Err(ClusterConfigError::UrlMismatch { .. })
        ));
    }
}
