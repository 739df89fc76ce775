//! The standard `grpc.health.v1` service, ended with the server. A graceful shutdown
//! waits for every open stream, and a `Watch` stream never ends by itself: one watcher
//! (a load balancer, a Kubernetes probe) would hold SIGTERM forever. Here every `Watch`
//! stream ends when shutdown starts; `Check` and the statuses are tonic-health's own.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// tonic-health's service with `Watch` streams that end at `stop`.
pub struct StoppableHealth {
    inner: HealthService,
    stop: CancellationToken,
}

/// The health service serving `reporter`'s statuses; its watches end when `stop` is
/// cancelled.
pub fn service(
    reporter: &HealthReporter,
    stop: CancellationToken,
) -> HealthServer<StoppableHealth> {
    HealthServer::new(StoppableHealth {
        inner: HealthService::from_health_reporter(reporter.clone()),
        stop,
    })
}

#[tonic::async_trait]
impl Health for StoppableHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        let stop = self.stop.clone().cancelled_owned();
        Ok(Response::new(Box::pin(statuses.take_until(stop))))
    }
}
