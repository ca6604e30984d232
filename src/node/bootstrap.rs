//! Who this member is: its member and cluster ids, kept in the engine once known. A founding
//! member derives every id from `--initial-cluster`; a member joining a running cluster
//! (`--initial-cluster-state existing`, after `member add`) asks the cluster which id it was given.
//!
//! The raft settings every member starts with are here too ([`raft_config`]).
//!
//! Founding members initialize raft one after another, in member-id order
//! ([`initialize_in_turn`]), so a founder that starts late joins the leader already elected instead
//! of unseating it.

use std::collections::BTreeMap;

use openraft::{Config, SnapshotPolicy};

use crate::cluster::{self, MemberInfo};
use crate::config::{ClusterState, ServerConfig};
use crate::limits;
use crate::net::peer_channels::PeerChannels;
use crate::pb::metastore::MembersRequest;
use crate::raft::{decode, PeerNode, Raft};
use crate::rt;
use crate::storage::{Durability, Keyspace, SharedEngine, StorageError, WriteBatch};

use super::StartError;

/// The raft settings of every member (`snapshot_count`: `--snapshot-count`).
pub fn raft_config(snapshot_count: u64) -> Result<Config, StartError> {
    Config {
        cluster_name: "metastore".into(),
        heartbeat_interval: limits::HEARTBEAT_INTERVAL_MS,
        election_timeout_min: limits::ELECTION_TIMEOUT_MS,
        // `Node::leader_lease_valid` assumes openraft's leader lease is this.
        election_timeout_max: limits::ELECTION_TIMEOUT_MS * 2,
        max_payload_entries: limits::RAFT_MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_count),
        max_in_snapshot_log_to_keep: limits::RAFT_LOGS_KEPT_AFTER_SNAPSHOT.min(snapshot_count / 2),
        // A restarted leader must win a new election, as in etcd, never resume in its old
        // term: it replicates entries before its own fsync completes, so a power cut can take
        // entries from its log that followers already hold; resuming in the same term, it would
        // reuse those indexes for new entries with the same term, and followers, matching on
        // (term, index), would keep the old ones. The simulator found this (seed 30 of the
        // chaos scenario: members with equal raft indexes and different data).
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))
}

/// Identity keys, kept in the raft keyspace: they belong to this member, not to the replicated state.
const MEMBER_ID_KEY: &[u8] = b"id/member";
const CLUSTER_ID_KEY: &[u8] = b"id/cluster";

/// What a member needs to know about itself to start raft.
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The founding membership, if this member founds a new cluster and raft has not been
    /// initialized yet (initializing again with the same members is harmless).
    pub founding: Option<BTreeMap<u64, PeerNode>>,
}

fn read_id(engine: &SharedEngine, key: &[u8]) -> Result<Option<u64>, StorageError> {
    let Some(v) = engine.get(Keyspace::Raft, key)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| StorageError::Corrupt {
        ks: Keyspace::Raft,
        reason: "bad id".into(),
    })?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

fn store_ids(engine: &SharedEngine, member_id: u64, cluster_id: u64) -> Result<(), StorageError> {
    let mut batch = WriteBatch::new();
    batch.put(
        Keyspace::Raft,
        MEMBER_ID_KEY,
        member_id.to_be_bytes().to_vec(),
    );
    batch.put(
        Keyspace::Raft,
        CLUSTER_ID_KEY,
        cluster_id.to_be_bytes().to_vec(),
    );
    engine.write(batch, Durability::Sync)
}

/// Work out (and persist) this member's identity.
pub async fn identify(
    config: &ServerConfig,
    engine: &SharedEngine,
    channels: &PeerChannels,
) -> Result<Identity, StartError> {
    let initial = config.initial_cluster_or_self();
    let token = &config.initial_cluster_token;
    let founding = cluster::founding_members(&initial, token);
    if let (Some(member_id), Some(cluster_id)) = (
        read_id(engine, MEMBER_ID_KEY)?,
        read_id(engine, CLUSTER_ID_KEY)?,
    ) {
        // Restarted: the data dir knows who we are; flags no longer matter (as in etcd).
        let founding = (config.initial_cluster_state == ClusterState::New
            && founding.contains_key(&member_id))
        .then_some(founding);
        return Ok(Identity {
            member_id,
            cluster_id,
            founding,
        });
    }
    match config.initial_cluster_state {
        ClusterState::New => {
            let member_id = cluster::member_id(&config.advertise_peer_urls, token);
            let cluster_id = cluster::cluster_id(founding.keys().copied(), token);
            store_ids(engine, member_id, cluster_id)?;
            Ok(Identity {
                member_id,
                cluster_id,
                founding: Some(founding),
            })
        }
        ClusterState::Existing => {
            let (member_id, cluster_id) = ask_cluster(config, &initial, channels).await?;
            store_ids(engine, member_id, cluster_id)?;
            Ok(Identity {
                member_id,
                cluster_id,
                founding: None,
            })
        }
    }
}

/// Ask the other members listed in `--initial-cluster` for the member list and find ourselves in it
/// by our advertised peer URLs.
async fn ask_cluster(
    config: &ServerConfig,
    initial: &cluster::InitialCluster,
    channels: &PeerChannels,
) -> Result<(u64, u64), StartError> {
    let mut ours = config.advertise_peer_urls.clone();
    ours.sort();
    let peers: Vec<&String> = initial
        .iter()
        .filter(|(name, _)| **name != config.name)
        .flat_map(|(_, urls)| urls)
        .collect();
    let deadline = rt::now() + limits::JOIN_TIMEOUT;
    let mut last_error = String::from("--initial-cluster names no other member");
    while rt::now() < deadline {
        for url in &peers {
            let mut client = match channels.client(url) {
                Ok(client) => client,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            let reply =
                rt::timeout(limits::PEER_RPC_TIMEOUT, client.members(MembersRequest {})).await;
            let data = match reply {
                Ok(Ok(reply)) => reply.into_inner().data,
                Ok(Err(status)) => {
                    last_error = format!("{url}: {}", status.message());
                    continue;
                }
                Err(rt::Elapsed) => {
                    last_error = format!("{url}: no answer");
                    continue;
                }
            };
            let (cluster_id, members): (u64, Vec<MemberInfo>) =
                decode(&data).map_err(|e| StartError::Join(format!("{url}: {e}")))?;
            let me = members.iter().find(|m| {
                let mut urls = m.peer_urls.clone();
                urls.sort();
                urls == ours
            });
            return match me {
                Some(m) => Ok((m.id, cluster_id)),
                None => Err(StartError::Join(format!(
                    "the cluster has no member with peer URLs {ours:?}: add it with `member add` first"
                ))),
            };
        }
        rt::sleep(limits::JOIN_RETRY_INTERVAL).await;
    }
    Err(StartError::Join(format!(
        "cannot reach the cluster: {last_error}"
    )))
}

/// Initialize raft with the founding membership, unless a leader's entries reach this member
/// first. Founders take turns by member id: the lowest initializes at once, the next
/// [`limits::FOUNDER_STAGGER`] later, and so on.
///
/// Why not all at once: initializing starts an election in term 1, and openraft orders votes of
/// one term by node id. A founder that starts a moment after the others elected a leader would
/// run its own term-1 election with a higher id than that leader's, and the leader would step
/// down on its next append (nobody leads for an election timeout). Waiting its turn, a late
/// founder is found by the leader's heartbeats first. A founder with a lower id than the leader's
/// cannot unseat it, so the lowest goes first; if the early ones are down, the others still
/// initialize, only later.
pub async fn initialize_in_turn(raft: Raft, member_id: u64, founding: BTreeMap<u64, PeerNode>) {
    let rank = founding.keys().take_while(|id| **id < member_id).count() as u32;
    let turn = rt::now() + limits::FOUNDER_STAGGER * rank;
    loop {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            // Raft has stopped: the member is stopping too.
            Err(_) => return,
        }
        let now = rt::now();
        if now >= turn {
            break;
        }
        rt::sleep((turn - now).min(limits::FOUNDER_POLL_INTERVAL)).await;
    }
    // A leader's first append may land between the check and this call: openraft then refuses to
    // initialize ("not allowed"), which is what we want.
    if let Err(e) = raft.initialize(founding).await {
        tracing::debug!("founding initialize skipped: {e}");
    }
}
