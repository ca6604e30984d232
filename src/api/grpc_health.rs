//! The gRPC health checking protocol (`grpc.health.v1.Health`) as etcd 3.5 serves it on the
//! client port, for load balancers and probes that speak gRPC: the server-wide service `""` is
//! SERVING while the member runs; any other name is unknown (Check answers NotFound "unknown
//! service", Watch SERVICE_UNKNOWN). Watch sends the status once and then nothing (it does not
//! change while the member serves); the call ends when its client goes, holding no task.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::pb::grpc_health::health_check_response::ServingStatus;
use crate::pb::grpc_health::health_server::Health;
use crate::pb::grpc_health::{HealthCheckRequest, HealthCheckResponse};

/// Serves Check and Watch.
pub struct HealthService;

/// The status of `service`, if it is one this member knows.
fn status_of(service: &str) -> Option<ServingStatus> {
    service.is_empty().then_some(ServingStatus::Serving)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let status = status_of(&request.get_ref().service)
            .ok_or_else(super::status::unknown_health_service)?;
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let status = status_of(&request.get_ref().service).unwrap_or(ServingStatus::ServiceUnknown);
        let first = HealthCheckResponse {
            status: status as i32,
        };
        let responses =
            futures::stream::once(async move { Ok(first) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(responses)))
    }
}
