//! The `metastore.Peer` service: raft messages from other members, and the requests followers
//! forward to the leader. Raft payloads are postcard-encoded openraft types (see `raft::network`).
//!
//! Only members are served: every request must name, in its metadata, this member's cluster id and
//! the id of a current member of the cluster (as etcd's rafthttp checks `X-Etcd-Cluster-ID` and
//! `X-Server-From`), before anything of it is decoded; a forwarded command must come from the
//! member it names as its proposer. With `--peer-cert-allowed-cn` the verified client certificate
//! of the connection must also carry that common name; with `--peer-cert-allowed-hostname`, be
//! valid for that host. Without peer TLS the ids are only a claim,
//! as in etcd: they keep out strangers and other clusters, not a forger (that needs peer TLS with
//! `--peer-client-cert-auth`). The one exception is `Members`, which a joining member asks before
//! it knows its own id (etcd serves its member list on the peer port to anyone too).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::errors::{Fatal, RaftError};
use openraft::raft::AppendEntriesRequest;
use tonic::{Request, Response, Status, Streaming};

use crate::net::peer_channels::{CLUSTER_ID_KEY, FROM_MEMBER_KEY};
use crate::node::{LeaderWriteError, Node};
use crate::pb::metastore::peer_server::Peer;
use crate::pb::metastore::{
    Command, HashKvAtRequest, HashKvAtResponse, LeaseKeepAliveResponse, LeaseRequest,
    LeaseTimeToLiveResponse, MembersRequest, PeerStatus, ProposeManyRequest, ProposeManyResponse,
    ProposeRequest, ProposeResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse,
    SnapshotChunk,
};
use crate::raft::network::SnapshotHeader;
use crate::raft::state_machine::SnapshotData;
use crate::raft::{decode, encode, TypeConfig};

/// Why the peer service refused a request (`api::status` gives each its gRPC code). The texts of
/// the membership checks are etcd's rafthttp ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    /// The client certificate fails `--peer-cert-allowed-cn` or `--peer-cert-allowed-hostname`.
    #[error("client certificate authentication failed")]
    CertificateRefused,
    #[error("cluster ID mismatch")]
    ClusterIdMismatch,
    /// The request names no sending member.
    #[error("member not found")]
    MemberUnnamed,
    #[error("member {0:x} not found in the cluster")]
    NotAMember(u64),
    /// A member forwarded a command another member proposed.
    #[error("member {from:x} forwards a command of member {proposer:x}")]
    ForeignCommand { from: u64, proposer: u64 },
    #[error("undecodable peer message: {0}")]
    Undecodable(String),
    #[error("undecodable command: {0}")]
    UndecodableCommand(String),
    /// A `ProposeMany` with more commands than a follower ever sends at once.
    #[error("{0} commands in one batch (at most {max})", max = crate::limits::FORWARD_BATCH_COMMANDS)]
    BatchTooLong(usize),
    /// A reply could not be encoded (a bug: our own types always encode).
    #[error("{0}")]
    Unencodable(String),
    #[error("a snapshot transfer to this member is already in progress")]
    SnapshotBusy,
    #[error("snapshot transfer superseded by a newer one")]
    SnapshotSuperseded,
    #[error("no snapshot chunk within the chunk deadline")]
    SnapshotChunkLate,
    #[error("snapshot chunk after the last one")]
    ChunkAfterLast,
    #[error("bad snapshot chunk: {0}")]
    BadChunk(String),
    #[error("empty snapshot stream")]
    EmptySnapshot,
    #[error("snapshot stream ended before its last chunk")]
    SnapshotCut,
}

/// Serves other members.
pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// With `--peer-cert-allowed-cn`, the connection's verified client certificate must carry that
    /// common name; with `--peer-cert-allowed-hostname`, it must be valid for that host.
    fn check_cert<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let config = self.node.config();
        let extensions = request.extensions();
        let admitted = match (
            &config.peer_cert_allowed_cn,
            &config.peer_cert_allowed_hostname,
        ) {
            (None, None) => true,
            (Some(cn), _) => super::access::cert_user(extensions) == Some(cn.as_str()),
            (None, Some(host)) => super::access::cert_valid_for(extensions, host),
        };
        if admitted {
            Ok(())
        } else {
            // etcd's text for a certificate its AllowedCN / AllowedHostname check refuses.
            Err(PeerRefusal::CertificateRefused.into())
        }
    }

    /// The member that sent `request`: refused unless the request names this member's cluster
    /// and a current member of it (see the module doc), with etcd's rafthttp error texts.
    fn admit<T>(&self, request: &Request<T>) -> Result<u64, Status> {
        self.check_cert(request)?;
        let id = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| u64::from_str_radix(v, 16).ok())
        };
        if id(CLUSTER_ID_KEY) != Some(self.node.cluster_id()) {
            return Err(PeerRefusal::ClusterIdMismatch.into());
        }
        let Some(from) = id(FROM_MEMBER_KEY) else {
            return Err(PeerRefusal::MemberUnnamed.into());
        };
        if !self.node.admits_peer(from) {
            return Err(PeerRefusal::NotAMember(from).into());
        }
        Ok(from)
    }

    /// Propose a forwarded command as leader and say how it went (the outcome itself reaches the
    /// proposer through its own apply).
    async fn lead(&self, cmd: &Command) -> ProposeResponse {
        let written = crate::rt::timeout(
            self.node.config().request_timeout,
            self.node.write_as_leader(cmd),
        )
        .await;
        match written {
            Err(crate::rt::Elapsed) => ProposeResponse {
                status: PeerStatus::Timeout as i32,
                ..Default::default()
            },
            Ok(Ok(_)) => ProposeResponse::default(),
            Ok(Err(e)) => ProposeResponse {
                status: status_of(&e) as i32,
                message: format!("{e:?}"),
                index: 0,
            },
        }
    }
}

/// A command `from` forwarded to this member as leader. The outcome goes to the waiter (proposer,
/// sequence number) names: only the proposer itself may name it.
fn forwarded_command(from: u64, bytes: &[u8]) -> Result<Command, Status> {
    use prost::Message;
    let cmd = Command::decode(bytes).map_err(|e| PeerRefusal::UndecodableCommand(e.to_string()))?;
    if cmd.proposer_id != from {
        return Err(PeerRefusal::ForeignCommand {
            from,
            proposer: cmd.proposer_id,
        }
        .into());
    }
    Ok(cmd)
}

/// Frame a raft call's result for the reply: openraft's answer, or the `Fatal` error that stopped
/// this member's raft (the only error these calls have; the sender treats it as unreachable).
fn reply<T: serde::Serialize>(
    result: Result<T, Fatal<TypeConfig>>,
) -> Result<Response<RaftPayload>, Status> {
    let data = encode(&result).map_err(|e| PeerRefusal::Unencodable(e.to_string()))?;
    Ok(Response::new(RaftPayload { data }))
}

/// The fatal error of a raft call whose API error cannot happen (`Infallible`).
fn fatal(e: RaftError<TypeConfig>) -> Fatal<TypeConfig> {
    match e {
        RaftError::APIError(never) => match never {},
        RaftError::Fatal(fatal) => fatal,
    }
}

fn bad_payload(e: std::io::Error) -> Status {
    PeerRefusal::Undecodable(e.to_string()).into()
}

fn status_of(e: &LeaderWriteError) -> PeerStatus {
    match e {
        LeaderWriteError::NotLeader => PeerStatus::NotLeader,
        LeaderWriteError::LeaderChanged => PeerStatus::LeaderChanged,
        LeaderWriteError::Stopped => PeerStatus::Stopped,
        LeaderWriteError::Timeout => PeerStatus::Timeout,
        LeaderWriteError::Failed(_) => PeerStatus::Failed,
    }
}

/// The responses of an [`Peer::append_stream`] call.
type AppendStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type AppendStreamStream = AppendStream;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<AppendStream>, Status> {
        self.admit(&request)?;
        // Requests are taken until the stream ends or breaks, or one cannot be decoded: a
        // response is owed for every request in order, so nothing may be skipped.
        let node = self.node.clone();
        let requests = request
            .into_inner()
            .map(move |payload| {
                let payload = payload.ok()?;
                node.leader_contacted();
                decode::<AppendEntriesRequest<TypeConfig>>(&payload.data).ok()
            })
            .take_while(|request| futures::future::ready(request.is_some()))
            .filter_map(futures::future::ready);
        let responses = self
            .node
            .raft()
            .stream_append(requests)
            .then(|result| async move {
                // An answer that comes late: past the sender's deadline it ends the session.
                crate::rt::buggify::delay("peer-reply-late", Duration::from_millis(150)).await;
                result
            })
            .map(|result| {
                let data = encode(&result).map_err(|e| PeerRefusal::Unencodable(e.to_string()))?;
                Ok(RaftPayload { data })
            });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&request)?;
        self.node.leader_contacted();
        let rpc = decode(&request.get_ref().data).map_err(bad_payload)?;
        let result = self.node.raft().append_entries(rpc).await;
        reply(result.map_err(fatal))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit(&request)?;
        let rpc = decode(&request.get_ref().data).map_err(bad_payload)?;
        let result = self.node.raft().vote(rpc).await;
        reply(result.map_err(fatal))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&request)?;
        let mut chunks = request.into_inner();
        let Some((_receiving, number)) = self.node.begin_snapshot_receive().await? else {
            return Err(PeerRefusal::SnapshotBusy.into());
        };
        // Each chunk goes to the staging area as it arrives; nothing is installed unless the
        // stream ends with the chunk marked last. Each chunk has a deadline, and a newer transfer
        // ends this one while it waits, so a sender that vanished never holds the receive.
        let mut header: Option<SnapshotHeader> = None;
        let mut complete = false;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.node.snapshot_superseded(number) => {
                    return Err(PeerRefusal::SnapshotSuperseded.into());
                }
                next = crate::rt::timeout(
                    crate::limits::SNAPSHOT_CHUNK_RECEIVE_TIMEOUT,
                    chunks.next(),
                ) => next,
            };
            let chunk = match next {
                Err(crate::rt::Elapsed) => return Err(PeerRefusal::SnapshotChunkLate.into()),
                Ok(None) => break,
                Ok(Some(chunk)) => chunk?,
            };
            if complete {
                return Err(PeerRefusal::ChunkAfterLast.into());
            }
            if header.is_none() {
                header = Some(decode(&chunk.header).map_err(bad_payload)?);
            }
            complete = chunk.last;
            self.node
                .stage_snapshot_chunk(chunk.data)
                .await
                .map_err(|e| PeerRefusal::BadChunk(format!("{e:?}")))?;
        }
        let header = header.ok_or(PeerRefusal::EmptySnapshot)?;
        if !complete {
            return Err(PeerRefusal::SnapshotCut.into());
        }
        let snapshot = openraft::alias::SnapshotOf::<crate::raft::TypeConfig, _> {
            meta: header.meta,
            snapshot: SnapshotData::Staged,
        };
        let result = self
            .node
            .raft()
            .install_full_snapshot(header.vote, snapshot)
            .await;
        reply(result)
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let from = self.admit(&request)?;
        let cmd = forwarded_command(from, &request.get_ref().command)?;
        Ok(Response::new(self.lead(&cmd).await))
    }

    async fn propose_many(
        &self,
        request: Request<ProposeManyRequest>,
    ) -> Result<Response<ProposeManyResponse>, Status> {
        let from = self.admit(&request)?;
        let commands = &request.get_ref().commands;
        if commands.len() > crate::limits::FORWARD_BATCH_COMMANDS {
            return Err(PeerRefusal::BatchTooLong(commands.len()).into());
        }
        let cmds = commands
            .iter()
            .map(|bytes| forwarded_command(from, bytes))
            .collect::<Result<Vec<_>, Status>>()?;
        // All at once: raft's core takes the proposals waiting in its queue together, so the
        // batch becomes one log append (and one replication message) rather than one each.
        let results = futures::future::join_all(cmds.iter().map(|cmd| self.lead(cmd))).await;
        Ok(Response::new(ProposeManyResponse { results }))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        self.admit(&request)?;
        let resp = match crate::rt::timeout(
            self.node.config().request_timeout,
            self.node.read_index_as_leader(),
        )
        .await
        {
            Err(crate::rt::Elapsed) => ReadIndexResponse {
                status: PeerStatus::Timeout as i32,
                ..Default::default()
            },
            Ok(Ok(index)) => ReadIndexResponse {
                index,
                ..Default::default()
            },
            Ok(Err(e)) => ReadIndexResponse {
                status: status_of(&e) as i32,
                message: format!("{e:?}"),
                index: 0,
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<LeaseRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.admit(&request)?;
        let resp = match self.node.keep_alive_as_leader(request.get_ref().id).await {
            Some(ttl) => LeaseKeepAliveResponse {
                status: PeerStatus::Ok as i32,
                ttl,
            },
            None => LeaseKeepAliveResponse {
                status: PeerStatus::NotLeader as i32,
                ttl: 0,
            },
        };
        Ok(Response::new(resp))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.admit(&request)?;
        let resp = match self.node.time_to_live_as_leader(request.get_ref().id).await {
            Ok(Some(status)) => LeaseTimeToLiveResponse {
                status: PeerStatus::Ok as i32,
                found: true,
                granted_ttl: status.granted,
                remaining_ttl: status.remaining,
                keys: status.keys,
            },
            Ok(None) => LeaseTimeToLiveResponse::default(),
            Err(()) => LeaseTimeToLiveResponse {
                status: PeerStatus::NotLeader as i32,
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn change_members(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&request)?;
        let change = decode(&request.get_ref().data).map_err(bad_payload)?;
        let result = crate::rt::timeout(
            self.node.config().request_timeout,
            self.node.change_as_leader(change),
        )
        .await
        .unwrap_or(Err(crate::cluster::MembershipError::Timeout));
        Ok(Response::new(crate::node::membership_reply(result)))
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(&request)?;
        let req = decode(&request.get_ref().data).map_err(bad_payload)?;
        let result = self.node.raft().handle_transfer_leader(req).await;
        reply(result)
    }

    async fn members(
        &self,
        request: Request<MembersRequest>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check_cert(&request)?;
        let data = self
            .node
            .members_payload()
            .map_err(PeerRefusal::Unencodable)?;
        Ok(Response::new(RaftPayload { data }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvAtRequest>,
    ) -> Result<Response<HashKvAtResponse>, Status> {
        self.admit(&request)?;
        let answer = self.node.hash_kv_for_peer(request.into_inner()).await;
        Ok(Response::new(answer))
    }
}
