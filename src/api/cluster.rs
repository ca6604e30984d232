//! The `etcdserverpb.Cluster` service: member list and membership changes (run by the leader).

use super::access::cert_user;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::cluster::{self, MemberChange, MemberInfo, MembershipError};
use crate::node::Node;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, ResponseHeader,
};
use crate::raft::PeerNode;

/// Serves MemberList, MemberAdd, MemberRemove, MemberUpdate and MemberPromote.
pub struct ClusterService {
    node: Arc<Node>,
    access: Arc<super::access::Access>,
}

impl ClusterService {
    /// A cluster service over `node`, checking callers with `access`.
    pub fn new(node: Arc<Node>, access: Arc<super::access::Access>) -> Self {
        Self { node, access }
    }

    /// Membership changes need the root role while auth is enabled (etcd's
    /// checkMembershipOperationPermission); listing members does not.
    fn admin_only<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.access
            .permit_admin(request.metadata(), cert_user(request.extensions()))?;
        Ok(())
    }

    /// etcd's cluster service header: cluster, member and term, but no revision (membership is
    /// not part of the key-value store's history).
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.node.header(0))
    }
}

fn to_pb(m: MemberInfo) -> Member {
    Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

fn to_pb_all(members: Vec<MemberInfo>) -> Vec<Member> {
    members.into_iter().map(to_pb).collect()
}

/// Peer URLs as etcd accepts them: at least one, each `http://host:port` or `https://host:port`.
fn check_urls(urls: &[String]) -> Result<Vec<String>, Status> {
    if urls.is_empty()
        || urls
            .iter()
            .any(|u| crate::config::parse_tls_url(u).is_err())
    {
        return Err(MembershipError::BadUrls.into());
    }
    let mut urls: Vec<String> = urls
        .iter()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .collect();
    urls.sort();
    Ok(urls)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.admin_only(&request)?;
        let req = request.into_inner();
        let peer_urls = check_urls(&req.peer_ur_ls)?;
        // etcd derives a new member's id from its URLs, the cluster and the time: unique per add.
        let id = cluster::fnv1a64(&[
            peer_urls.join(",").as_bytes(),
            &self.node.cluster_id().to_be_bytes(),
            &crate::rt::random_u64().to_be_bytes(),
        ])
        .max(1);
        let node = PeerNode {
            name: String::new(),
            peer_urls: peer_urls.clone(),
        };
        let members = self
            .node
            .change_members(MemberChange::Add {
                id,
                node,
                learner: req.is_learner,
            })
            .await?;
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: peer_urls,
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: to_pb_all(members),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admin_only(&request)?;
        let id = request.into_inner().id;
        let members = self
            .node
            .change_members(MemberChange::Remove { id })
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: to_pb_all(members),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admin_only(&request)?;
        let req = request.into_inner();
        let peer_urls = check_urls(&req.peer_ur_ls)?;
        let members = self
            .node
            .change_members(MemberChange::Update {
                id: req.id,
                peer_urls,
            })
            .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: to_pb_all(members),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // etcd 3.4 lists members to anyone; here, only to an authenticated user.
        self.access
            .authenticated(request.metadata(), cert_user(request.extensions()))?;
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: to_pb_all(self.node.members()?),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admin_only(&request)?;
        let id = request.into_inner().id;
        let members = self
            .node
            .change_members(MemberChange::Promote { id })
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: to_pb_all(members),
        }))
    }
}
