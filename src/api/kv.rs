//! The `etcdserverpb.KV` service.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::validate;
use crate::apply::Applied;
use crate::node::Node;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use crate::pb::metastore::command::Op;

/// Serves Range, Put, DeleteRange, Txn and Compact.
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    /// A KV service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// The full header for a response whose revision apply or the read path set.
    fn header(&self, partial: Option<ResponseHeader>) -> Option<ResponseHeader> {
        self.node.complete_header(partial)
    }

    async fn propose(&self, op: Op) -> Result<Applied, Status> {
        Ok(self.node.propose(op).await?)
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
        let req = request.into_inner();
        validate::range(&req)?;
        let mut resp = self.node.range(&req).await?;
        resp.header = self.header(resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        validate::put(&req)?;
        match self.propose(Op::Put(req)).await? {
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
        let req = request.into_inner();
        validate::delete_range(&req)?;
        match self.propose(Op::DeleteRange(req)).await? {
            Applied::DeleteRange(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        validate::txn(&req, self.node.config().max_txn_ops)?;
        match self.propose(Op::Txn(req)).await? {
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
        let req = request.into_inner();
        match self.propose(Op::Compaction(req)).await? {
            Applied::Compaction(mut resp) => {
                resp.header = self.header(resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compact")),
        }
    }
}
