//! The `etcdserverpb.Lease` service.

use super::access::cert_user;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::validate;
use crate::limits;
use crate::node::{LeaseStatus, Node};
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};

/// Serves LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive and LeaseLeases.
pub struct LeaseService {
    node: Arc<Node>,
    access: Arc<super::access::Access>,
}

impl LeaseService {
    /// A lease service over `node`, checking callers with `access`.
    pub fn new(node: Arc<Node>, access: Arc<super::access::Access>) -> Self {
        Self { node, access }
    }
}

/// The responses of one keep-alive stream.
pub type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        // etcd 3.4 checks no permission to grant a lease; here the caller must be a user.
        self.access
            .authenticated(request.metadata(), cert_user(request.extensions()))?;
        let req = request.into_inner();
        validate::lease_grant(&req)?;
        let mut resp = self.node.lease_grant(req.id, req.ttl).await?;
        resp.header = Some(self.node.header(self.node.current_revision()));
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // Revoking deletes every attached key: the caller must be able to write each of them
        // (etcd's checkLeasePuts).
        let id = request.get_ref().id;
        let needs = self.access.lease_needs(id);
        let requester =
            self.access
                .permit(request.metadata(), cert_user(request.extensions()), &needs)?;
        let mut resp = self.node.lease_revoke_as(id, Some(requester)).await?;
        resp.header = self.node.complete_header(resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        self.keep_alive_requests(request).await
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        // A user; listing the attached keys also needs read access to each (later etcd releases
        // check this too).
        let needs = if request.get_ref().keys {
            self.access.lease_read_needs(request.get_ref().id)
        } else {
            Vec::new()
        };
        self.access
            .permit(request.metadata(), cert_user(request.extensions()), &needs)?;
        let req = request.into_inner();
        let header = Some(self.node.header(self.node.current_revision()));
        let Some(LeaseStatus {
            granted,
            remaining,
            keys,
        }) = self.node.lease_time_to_live(req.id).await?
        else {
            // etcd answers an unknown (e.g. expired) lease with TTL -1, not an error.
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if req.keys { keys } else { Vec::new() };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.access
            .authenticated(request.metadata(), cert_user(request.extensions()))?;
        let header = Some(self.node.header(self.node.current_revision()));
        let leases = self
            .node
            .lease_ids()
            .into_iter()
            .map(|id| crate::pb::etcdserverpb::LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse { header, leases }))
    }
}

impl LeaseService {
    /// Serve one keep-alive stream whose requests come from any source: a gRPC stream, or the JSON
    /// gateway (which hands over the request's metadata the same way).
    pub async fn keep_alive_requests<S>(
        &self,
        request: Request<S>,
    ) -> Result<Response<KeepAliveStream>, Status>
    where
        S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    {
        // Checked once, when the stream opens (etcd 3.4 checks nothing here).
        self.access
            .authenticated(request.metadata(), cert_user(request.extensions()))?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(limits::LEASE_KEEPALIVE_STREAM_BUFFER);
        let node = self.node.clone();
        crate::rt::spawn(async move {
            // Ends when the client stops sending or goes away, or the response side is gone
            // (checked while waiting too: a silent client that left ends the task at once).
            loop {
                let req = tokio::select! {
                    biased;
                    _ = tx.closed() => break,
                    next = requests.next() => match next {
                        Some(Ok(req)) => req,
                        _ => break,
                    },
                };
                let ttl = match node.lease_keep_alive(req.id).await {
                    Ok(ttl) => ttl,
                    Err(e) => {
                        // As etcd: the stream ends with the error (e.g. no leader).
                        let _ = tx.send(Err(Status::from(e))).await;
                        break;
                    }
                };
                let header = Some(node.header(node.current_revision()));
                if tx
                    .send(Ok(LeaseKeepAliveResponse {
                        header,
                        id: req.id,
                        ttl,
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let responses =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        Ok(Response::new(Box::pin(responses)))
    }
}
