//! The `etcdserverpb.KV` service.

use super::access::cert_user;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::Access;
use super::validate;
use crate::apply::Applied;
use crate::auth::perms;
use crate::node::Node;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::pb::metastore::command::Op;
use crate::pb::metastore::Requester;

/// Serves Range, Put, DeleteRange, Txn and Compact.
pub struct KvService {
    node: Arc<Node>,
    access: Arc<Access>,
}

impl KvService {
    /// A KV service over `node`, checking callers with `access`.
    pub fn new(node: Arc<Node>, access: Arc<Access>) -> Self {
        Self { node, access }
    }

    /// The full header for a response whose revision apply or the read path set.
    fn header(&self, partial: Option<ResponseHeader>) -> Option<ResponseHeader> {
        self.node.complete_header(partial)
    }

    async fn propose(&self, op: Op, requester: Requester) -> Result<Applied, Status> {
        Ok(self.node.propose_as(op, Some(requester)).await?)
    }
}

fn unexpected(what: &str) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result for {what}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let caller = self
            .access
            .caller(request.metadata(), cert_user(request.extensions()))?;
        let req = request.into_inner();
        validate::range(&req)?;
        let needs = perms::range_needs(&req);
        let mut resp = self
            .node
            .range_checked(&req, |auth| caller.check_in(auth, &needs))
            .await?;
        resp.header = self.header(resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        validate::put(request.get_ref())?;
        let needs = self.access.put_needs(request.get_ref());
        let requester =
            self.access
                .permit(request.metadata(), cert_user(request.extensions()), &needs)?;
        match self
            .propose(Op::Put(request.into_inner()), requester)
            .await?
        {
            Applied::Put(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        validate::delete_range(request.get_ref())?;
        let needs = perms::delete_needs(request.get_ref());
        let requester =
            self.access
                .permit(request.metadata(), cert_user(request.extensions()), &needs)?;
        match self
            .propose(Op::DeleteRange(request.into_inner()), requester)
            .await?
        {
            Applied::DeleteRange(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        // Who is asking is settled first (a token lookup): a client with a bad token gets no
        // work proportional to its request. Then etcd's order: validation, then permissions.
        let caller = self
            .access
            .caller(request.metadata(), cert_user(request.extensions()))?;
        validate::txn(request.get_ref(), self.node.config().max_txn_ops)?;
        let needs = perms::txn_needs(request.get_ref());
        let requester = self.access.check(&caller, &needs)?;
        match self
            .propose(Op::Txn(request.into_inner()), requester)
            .await?
        {
            Applied::Txn(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd 3.4 checks no permission for a compaction; here the caller must at least be an
        // authenticated user (Kubernetes' apiserver compacts as its own, non-root user).
        let requester = self
            .access
            .authenticated(request.metadata(), cert_user(request.extensions()))?;
        let (revision, physical) = (request.get_ref().revision, request.get_ref().physical);
        match self
            .propose(Op::Compaction(request.into_inner()), requester)
            .await?
        {
            Applied::Compaction(mut resp) => {
                if physical {
                    // As etcd: answered once the superseded records are gone from this member.
                    self.node.wait_compacted(revision).await?;
                }
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compact")),
        }
    }
}
