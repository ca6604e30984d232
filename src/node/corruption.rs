//! etcd's initial corruption check (`--experimental-initial-corrupt-check`): before a member
//! serves, it hashes its key-value history at its current revision and asks every other member
//! for the hash at that revision (etcd's `/members/hashkv`; here the peer call `HashKv`). A peer
//! whose hash differs at the same compact revision means the stores diverged: the member does not
//! start ("found data inconsistency with peers"). A peer that is unreachable, behind (the revision
//! is in its future), ahead past a compaction, or compacted elsewhere proves nothing and is logged,
//! as etcd logs it.

use crate::apply::ApplyError;
use crate::cluster::{self, PeerNode};
use crate::limits;
use crate::pb::metastore::{HashKvAtRequest, HashKvAtResponse, HashKvRefusal};
use crate::rt;

use super::{Node, NodeError};

/// What one peer said, as the check weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerHash {
    /// Its hash and compact revision at the revision asked.
    Hash { hash: u32, compact_revision: i64 },
    /// No hash: why (unreachable, behind, compacted, failed).
    None(String),
}

/// The peers whose hash differs from `local` at the same compact revision, and a line to log for
/// every other peer that did not agree.
pub fn judge(
    local_hash: u32,
    local_compact: i64,
    peers: &[(u64, PeerHash)],
) -> (Vec<u64>, Vec<String>) {
    let mut mismatched = Vec::new();
    let mut notes = Vec::new();
    for (id, answer) in peers {
        match answer {
            PeerHash::Hash {
                hash,
                compact_revision,
            } if *hash != local_hash => {
                if *compact_revision == local_compact {
                    mismatched.push(*id);
                } else {
                    notes.push(format!(
                        "found different compact revision values from remote peer {id:x} \
                         (local {local_compact}, remote {compact_revision})"
                    ));
                }
            }
            PeerHash::Hash { .. } => {}
            PeerHash::None(why) => {
                notes.push(format!("cannot fetch hash from remote peer {id:x}: {why}"))
            }
        }
    }
    (mismatched, notes)
}

impl Node {
    /// This member's answer to a peer's `HashKv`.
    pub async fn hash_kv_for_peer(&self, request: HashKvAtRequest) -> HashKvAtResponse {
        let refused = |refusal: HashKvRefusal| HashKvAtResponse {
            refusal: refusal as i32,
            member_id: self.member_id,
            ..Default::default()
        };
        match self.hash_kv(request.revision).await {
            Ok((hash, _, compact_revision)) => HashKvAtResponse {
                refusal: HashKvRefusal::HashKvAnswered as i32,
                hash,
                compact_revision,
                member_id: self.member_id,
            },
            Err(NodeError::Apply(ApplyError::FutureRevision)) => {
                refused(HashKvRefusal::HashKvFutureRevision)
            }
            Err(NodeError::Apply(ApplyError::Compacted)) => refused(HashKvRefusal::HashKvCompacted),
            Err(_) => refused(HashKvRefusal::HashKvFailed),
        }
    }

    /// etcd's initial corruption check (module docs): `Err` names the members whose store
    /// differs from this one's.
    pub async fn check_initial_hash_kv(&self) -> Result<(), String> {
        let (hash, revision, compact) = self
            .hash_kv(0)
            .await
            .map_err(|e| format!("initial corruption check: cannot hash the local store: {e}"))?;
        tracing::info!(
            member_id = format!("{:x}", self.member_id),
            revision,
            "starting initial corruption check"
        );
        let mut peers = Vec::new();
        for (id, member) in self.other_members()? {
            peers.push((id, self.peer_hash(&member, revision).await));
        }
        let (mismatched, notes) = judge(hash, compact, &peers);
        for note in notes {
            tracing::warn!("{note}");
        }
        if !mismatched.is_empty() {
            let ids: Vec<String> = mismatched.iter().map(|id| format!("{id:x}")).collect();
            return Err(format!(
                "{:x} found data inconsistency with peers ({}: hash differs at revision \
                 {revision}, compact revision {compact})",
                self.member_id,
                ids.join(", ")
            ));
        }
        tracing::info!("initial corruption checking passed; no corruption");
        Ok(())
    }

    /// The other members, as raft knows them; before raft knows any (a founder of a new or
    /// restored cluster waits its turn to initialize it), those `--initial-cluster` names.
    fn other_members(&self) -> Result<Vec<(u64, PeerNode)>, String> {
        let known: Vec<(u64, PeerNode)> = self
            .members()
            .map_err(|e| format!("initial corruption check: {e}"))?
            .into_iter()
            .map(|m| {
                let node = PeerNode {
                    name: m.name,
                    peer_urls: m.peer_urls,
                };
                (m.id, node)
            })
            .collect();
        let known = if known.is_empty() {
            let initial = self.config.initial_cluster_or_self();
            cluster::founding_members(&initial, &self.config.initial_cluster_token)
                .into_iter()
                .collect()
        } else {
            known
        };
        Ok(known
            .into_iter()
            .filter(|(id, _)| *id != self.member_id)
            .collect())
    }

    /// What `member` says its hash is at `revision`.
    async fn peer_hash(&self, member: &PeerNode, revision: i64) -> PeerHash {
        let mut client = match self
            .channels
            .client_for_member(&member.name, &member.peer_urls)
        {
            Ok(client) => client,
            Err(e) => return PeerHash::None(e.to_string()),
        };
        let asked = client.hash_kv(HashKvAtRequest { revision });
        match rt::timeout(limits::PEER_RPC_TIMEOUT, asked).await {
            Err(rt::Elapsed) => PeerHash::None("no answer".into()),
            Ok(Err(status)) => PeerHash::None(status.message().to_string()),
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                match HashKvRefusal::try_from(reply.refusal) {
                    Ok(HashKvRefusal::HashKvAnswered) => PeerHash::Hash {
                        hash: reply.hash,
                        compact_revision: reply.compact_revision,
                    },
                    Ok(HashKvRefusal::HashKvFutureRevision) => {
                        PeerHash::None("slow remote peer (the revision is in its future)".into())
                    }
                    Ok(HashKvRefusal::HashKvCompacted) => {
                        PeerHash::None("local member is behind (compacted on the peer)".into())
                    }
                    _ => PeerHash::None("the peer could not hash its store".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_different_hash_at_the_same_compact_revision_is_corruption() {
        let peers = [
            (
                1,
                PeerHash::Hash {
                    hash: 7,
                    compact_revision: 3,
                },
            ),
            (
                2,
                PeerHash::Hash {
                    hash: 8,
                    compact_revision: 3,
                },
            ),
            (
                3,
                PeerHash::Hash {
                    hash: 9,
                    compact_revision: 5,
                },
            ),
            (4, PeerHash::None("no answer".into())),
        ];
        let (mismatched, notes) = judge(7, 3, &peers);
        assert_eq!(mismatched, vec![2]);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("compact revision") && notes[1].contains("no answer"));
        let (mismatched, notes) = judge(7, 3, &peers[..1]);
        assert!(mismatched.is_empty() && notes.is_empty());
    }
}
