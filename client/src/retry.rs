//! Safe retries of emits. Every AFTER event gets an idempotency key when the caller gave
//! none (a UUIDv7), so the service stores it at most once however often it is sent; then
//! calls that failed with UNAVAILABLE (the database or the server is briefly away, or the
//! outcome of a write is unknown) or DEADLINE_EXCEEDED are tried again with capped
//! exponential backoff and full jitter, until the policy's time budget is spent.
//!
//! BEFORE events are not retried: their handlers may already have run, and the caller
//! is waiting for a decision it can make itself.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{proto, ClientError};

/// How [`crate::Client`] retries emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Longest time spent on one emit, retries included; zero = no retries.
    pub budget: Duration,
    /// First backoff.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// No retries (and no generated keys): every call is made once.
    pub const NONE: RetryPolicy = RetryPolicy {
        budget: Duration::ZERO,
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// Whether calls are retried at all.
    pub fn retries(&self) -> bool {
        !self.budget.is_zero()
    }
}

impl Default for RetryPolicy {
    /// Up to 30 s per emit, backoff from 50 ms doubling to 2 s.
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Gives an AFTER event a fresh key if it has none.
pub(crate) fn ensure_key(request: &mut proto::EmitRequest) {
    if request.idempotency_key.is_empty() && request.phase == proto::Phase::After as i32 {
        request.idempotency_key = uuid::Uuid::now_v7().to_string();
    }
}

/// Whether a failed call may be sent again (with the same keys).
fn is_retryable(error: &ClientError) -> bool {
    error.status().is_some_and(is_retryable_status)
}

/// Whether a status says the same emit may succeed if sent again: a retryable code, or
/// a connection that broke during the call. tonic reports the latter as UNKNOWN with
/// the transport's error as the status's source, which a status sent by a server never
/// has; the outcome is unknown, and the key makes a resend safe.
pub(crate) fn is_retryable_status(status: &tonic::Status) -> bool {
    is_retryable_code(status.code())
        || (status.code() == tonic::Code::Unknown && std::error::Error::source(status).is_some())
}

/// Whether a status code says the same emit may succeed if sent again: the service
/// or the database was away, or the outcome is unknown (the key makes a resend safe).
pub(crate) fn is_retryable_code(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

/// Runs `call` until it succeeds, fails for good, or the budget is spent.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: RetryPolicy,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + policy.budget;
    let mut backoff = policy.initial_backoff;
    loop {
        match call().await {
            Err(error) if policy.retries() && is_retryable(&error) => {
                // Full jitter: anywhere in [0, backoff], so retrying callers spread out.
                let pause = backoff.mul_f64(jitter());
                if Instant::now() + pause >= deadline {
                    return Err(error);
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
            result => return result,
        }
    }
}

/// A number in [0, 1) from the clock's low bits: jitter needs spread, not secrecy.
pub(crate) fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_events_get_a_key_and_before_events_keep_none() {
        let mut after = proto::EmitRequest {
            phase: proto::Phase::After.into(),
            ..Default::default()
        };
        ensure_key(&mut after);
        assert_eq!(
            uuid::Uuid::parse_str(&after.idempotency_key).map(|u| u.get_version_num()),
            Ok(7)
        );
        let mut keyed = proto::EmitRequest {
            phase: proto::Phase::After.into(),
            idempotency_key: "mine".into(),
            ..Default::default()
        };
        ensure_key(&mut keyed);
        assert_eq!(keyed.idempotency_key, "mine");
        let mut before = proto::EmitRequest {
            phase: proto::Phase::Before.into(),
            ..Default::default()
        };
        ensure_key(&mut before);
        assert!(before.idempotency_key.is_empty());
    }

    #[tokio::test]
    async fn unavailable_is_retried_within_the_budget_and_other_errors_are_not() {
        let policy = RetryPolicy {
            budget: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        };
        let mut calls = 0;
        let result = with_retries(policy, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 4 {
                    Err(ClientError::Rpc(tonic::Status::unavailable("away")))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.ok(), Some(4));

        let mut calls = 0;
        let result: Result<(), _> = with_retries(policy, || {
            calls += 1;
            async { Err(ClientError::Rpc(tonic::Status::invalid_argument("bad"))) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);

        let mut calls = 0;
        let result: Result<(), _> = with_retries(RetryPolicy::NONE, || {
            calls += 1;
            async { Err(ClientError::Rpc(tonic::Status::unavailable("away"))) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_broken_connection_is_retryable_and_a_server_sent_unknown_is_not() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let broken = tonic::Status::from_error(Box::new(reset));
        assert_eq!(broken.code(), tonic::Code::Unknown);
        assert!(is_retryable_status(&broken));
        assert!(!is_retryable_status(&tonic::Status::unknown(
            "from the server"
        )));
        assert!(is_retryable_status(&tonic::Status::unavailable("away")));
        assert!(!is_retryable_status(&tonic::Status::internal("bug")));
    }
}
