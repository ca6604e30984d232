//! The `etcdserverpb.Maintenance` service: Status, Hash (of all replicated state), HashKV, Alarm,
//! Defragment, MoveLeader, Snapshot (etcd's snapshot file, see `raft::etcd_snapshot::writer`) and
//! Downgrade (etcd 3.6's, over the replicated setting of `cluster::version`).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::validate::Downgrade;
use crate::apply::ApplyError;
use crate::cluster::version::DowngradeError;
use crate::node::{Node, NodeError};
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};

/// The etcd API version MetaStore speaks (`Status.version`); clients compare it to enable features.
pub const API_VERSION: &str = crate::cluster::SERVER_VERSION;

/// Serves the maintenance calls.
pub struct MaintenanceService {
    node: Arc<Node>,
    access: Arc<super::access::Access>,
}

impl MaintenanceService {
    /// A maintenance service over `node`, checking callers with `access`.
    pub fn new(node: Arc<Node>, access: Arc<super::access::Access>) -> Self {
        Self { node, access }
    }

    /// Defragment, Hash, HashKV, Snapshot and MoveLeader need the root role while auth is enabled
    /// (etcd 3.4's authMaintenanceServer, plus MoveLeader, which etcd leaves unchecked).
    fn admin_only<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.access
            .permit_admin(
                request.metadata(),
                super::access::cert_user(request.extensions()),
            )
            .map(|_| ())
            .map_err(super::status::maintenance_denied)
    }

    /// Status and listing alarms need an authenticated user while auth is enabled; raising or
    /// clearing an alarm needs root. etcd 3.4 checks neither, which lets any client that can
    /// connect refuse every write with a NOSPACE alarm.
    fn authenticated<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.access
            .authenticated(
                request.metadata(),
                super::access::cert_user(request.extensions()),
            )
            .map(|_| ())
            .map_err(Status::from)
    }
}

/// `Status.errors` as etcd fills it: "no leader" when there is none, then each raised alarm in its
/// protobuf text form.
fn status_errors(leader: u64, alarms: &[(u64, i32)]) -> Vec<String> {
    let no_leader = (leader == 0).then(|| "etcdserver: no leader".to_string());
    let alarms = alarms.iter().map(|(member_id, alarm)| {
        let name = AlarmType::try_from(*alarm)
            .map(|a| a.as_str_name())
            .unwrap_or("UNKNOWN");
        format!("memberID:{member_id} alarm:{name} ")
    });
    no_leader.into_iter().chain(alarms).collect()
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        match request.get_ref().action() {
            AlarmAction::Get => self.authenticated(&request)?,
            AlarmAction::Activate | AlarmAction::Deactivate => self.admin_only(&request)?,
        }
        let req = request.into_inner();
        match req.action() {
            AlarmAction::Get => {
                // etcd 3.5 lists the alarms of the given type (NONE: all), whatever the member id.
                let alarms = self
                    .node
                    .alarms()?
                    .into_iter()
                    .filter(|(_, a)| req.alarm == AlarmType::None as i32 || *a == req.alarm)
                    .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                    .collect();
                Ok(Response::new(AlarmResponse {
                    header: Some(self.node.header(self.node.current_revision())),
                    alarms,
                }))
            }
            AlarmAction::Activate | AlarmAction::Deactivate => {
                let mut resp = self.node.change_alarm(req).await?;
                resp.header = self.node.complete_header(resp.header);
                Ok(Response::new(resp))
            }
        }
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.authenticated(&request)?;
        let s = self.node.raft_status();
        let db_size = self.node.db_size_bytes() as i64;
        let versions = self.node.versions();
        Ok(Response::new(StatusResponse {
            header: Some(self.node.header(self.node.current_revision())),
            version: API_VERSION.to_string(),
            db_size,
            leader: s.leader,
            raft_index: s.last_log_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors: status_errors(s.leader, &self.node.alarms()?),
            db_size_in_use: self.node.db_size_in_use_bytes() as i64,
            is_learner: self.node.is_learner(self.node.member_id()),
            // etcd 3.6 keeps its storage version at the cluster version (patch 0).
            storage_version: versions.cluster_version().to_string(),
            db_size_quota: self.node.config().quota_bytes() as i64,
            // etcd 3.6 always sets it, disabled with an empty target when no downgrade runs.
            downgrade_info: Some(versions.info()),
        }))
    }

    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin_only(&request)?;
        self.node.defragment().await?;
        // etcd answers a defragmentation with an empty message: no header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin_only(&request)?;
        let hash = self.node.hash_all().await?;
        Ok(Response::new(HashResponse {
            header: Some(self.node.header(self.node.current_revision())),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin_only(&request)?;
        let (hash, hash_revision, compact_revision) =
            self.node.hash_kv(request.get_ref().revision).await?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.node.header(self.node.current_revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.admin_only(&request)?;
        let (total, pieces) = self.node.backup().await?;
        let header = Some(self.node.header(self.node.current_revision()));
        let mut sent = 0u64;
        let chunks = pieces.map(move |piece| {
            let blob = piece?;
            sent += blob.len() as u64;
            Ok(SnapshotResponse {
                header,
                remaining_bytes: total.saturating_sub(sent),
                blob,
                // The etcd schema of the file sent, which is etcd's storage version of it.
                version: crate::cluster::SNAPSHOT_FILE_VERSION.to_string(),
            })
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.admin_only(&request)?;
        self.node.move_leader(request.get_ref().target_id).await?;
        // etcd answers a leadership transfer with an empty message: no header.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    /// etcd 3.6's `Downgrade` for a cluster whose members all run one version: root only; the
    /// target checked at the edge, then against the state after a read barrier (as etcd reads it
    /// after a linearizable read), and an enable or a cancel replicated through raft, where apply
    /// checks it again against the state it meets. The answer carries the cluster version before
    /// the change, as etcd's.
    async fn downgrade(
        &self,
        request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.access
            .permit_admin(
                request.metadata(),
                super::access::cert_user(request.extensions()),
            )
            .map_err(Status::from)?;
        let action = super::validate::downgrade(request.get_ref())?;
        self.node.linearize().await?;
        let versions = self.node.versions();
        let version = match action {
            Downgrade::Validate(target) => {
                versions.check_enable(target)?;
                versions.cluster_version()
            }
            Downgrade::Enable(target) => {
                versions.check_enable(target)?;
                self.node.change_downgrade(Some(target)).await?
            }
            // etcd 3.6 answers a cancel with nothing to cancel as a successful one (it only logs
            // "no inflight downgrade job"), also when another cancel got there first.
            Downgrade::Cancel if !versions.downgrading() => versions.cluster_version(),
            Downgrade::Cancel => match self.node.change_downgrade(None).await {
                Ok(before) => before,
                Err(NodeError::Apply(ApplyError::Downgrade(DowngradeError::NoInflight))) => {
                    self.node.versions().cluster_version()
                }
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Response::new(DowngradeResponse {
            header: Some(self.node.header(self.node.current_revision())),
            version: version.short(),
        }))
    }
}
