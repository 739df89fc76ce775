//! Waiting without sleeping blindly: poll a condition until it holds or a deadline
//! passes, and ask a server's `grpc.health.v1` service whether it is serving.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Interval between two polls.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, and returns that value; panics naming `what`
/// if `timeout` passes first.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The health status the server at `url` reports for `service` (`""` = the whole
/// server), or `None` if it cannot be asked (not listening yet, unknown service).
pub async fn health_status(url: &str, service: &str) -> Option<ServingStatus> {
    health_status_at(Endpoint::from_shared(url.to_owned()).ok()?, service).await
}

/// [`health_status`] through `endpoint` (which may carry TLS settings).
pub async fn health_status_at(endpoint: Endpoint, service: &str) -> Option<ServingStatus> {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(reply.into_inner().status).ok()
}

/// Whether the server at `url` reports SERVING for the whole server.
pub async fn is_serving(url: &str) -> bool {
    health_status(url, "").await == Some(ServingStatus::Serving)
}

/// Whether the server behind `endpoint` reports SERVING for the whole server.
pub async fn is_serving_at(endpoint: Endpoint) -> bool {
    health_status_at(endpoint, "").await == Some(ServingStatus::Serving)
}
