//! The `etcdserverpb.Maintenance` service. Served so far: Status, HashKV and Alarm GET; the rest
//! answer "unimplemented" until the maintenance work lands (Snapshot, Defragment, Alarm changes,
//! MoveLeader, Hash, Downgrade).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::pb::etcdserverpb::alarm_request::AlarmAction;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};

/// The etcd API version MetaStore speaks; clients compare it to enable features.
pub const API_VERSION: &str = "3.5.0";

/// Serves Status, HashKV and Alarm.
pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        match request.get_ref().action() {
            // No alarm is ever raised yet, so the list is truthfully empty.
            AlarmAction::Get => Ok(Response::new(AlarmResponse {
                header: Some(self.node.header(self.node.current_revision())),
                alarms: Vec::new(),
            })),
            _ => Err(Status::unimplemented("alarm changes are not supported yet")),
        }
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = self.node.raft_status();
        let db_size = self.node.db_size_bytes() as i64;
        Ok(Response::new(StatusResponse {
            header: Some(self.node.header(self.node.current_revision())),
            version: API_VERSION.to_string(),
            db_size,
            leader: s.leader,
            raft_index: s.last_log_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: self.node.is_learner(self.node.member_id()),
            storage_version: String::new(),
            db_size_quota: self.node.config().quota_bytes() as i64,
            downgrade_info: None,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(Status::unimplemented("defragment is not supported yet"))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented("Hash is not supported; use HashKV"))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let (hash, hash_revision, compact_revision) =
            self.node.hash_kv(request.get_ref().revision)?;
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
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        Err(Status::unimplemented("snapshot is not supported yet"))
    }

    async fn move_leader(
        &self,
        _request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Status::unimplemented("move-leader is not supported yet"))
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented("downgrade is not supported"))
    }
}
