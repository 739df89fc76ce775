//! The HTTP executor: POSTs the event data to a handler's URL over a pooled keep-alive
//! hyper client (http and https via rustls), signed the Standard Webhooks way.
//!
//! Connections go through the outbound guard (`guard`): an address the operator's
//! policy denies is never connected to, and the attempt fails with a non-retryable
//! error naming the address and the deny entry. Redirects are never followed (hyper's
//! client does not): a 3xx is a non-2xx reply like any other. Response bodies are read
//! up to a limit and the rest is never read: for AFTER the first
//! [`LOGGED_RESPONSE_BYTES`] (what the log keeps), for BEFORE the payload limit (a
//! longer body fails the attempt).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;

use super::guard::{GuardedConnector, OutboundDenied};
use super::{AttemptError, Invocation, Reply, LOGGED_RESPONSE_BYTES};
use crate::domain::Phase;
use crate::policy::outbound::OutboundPolicy;

type HttpsClient = Client<hyper_rustls::HttpsConnector<GuardedConnector>, Full<Bytes>>;

/// A shared, cloneable HTTP client.
#[derive(Clone)]
pub struct HttpExecutor {
    client: HttpsClient,
    max_body: usize,
}

impl HttpExecutor {
    /// A client reading at most `max_body` bytes of each response, connecting only to
    /// addresses `policy` allows.
    pub fn new(max_body: usize, policy: Arc<OutboundPolicy>) -> HttpExecutor {
        let http = GuardedConnector::new(policy, |http| {
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(10)));
        });
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .unwrap_or_else(|error| {
                tracing::error!(%error, "TLS set-up failed; using the platform defaults");
                hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots()
            });
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        HttpExecutor { client, max_body }
    }

    /// Sends one request; the caller applies the timeout.
    pub async fn post(
        &self,
        invocation: &Invocation<'_>,
        url: &str,
        headers: &serde_json::Value,
        secret: &str,
    ) -> Result<Reply, AttemptError> {
        let body = Bytes::copy_from_slice(invocation.data.as_bytes());
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signature = sign(secret, &invocation.message_id, timestamp, &body);
        let mut request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "provisiond/0.1")
            .header("x-provisioning-event", invocation.event)
            .header("x-provisioning-phase", invocation.phase.as_str())
            .header("x-provisioning-attempt", invocation.attempt.to_string())
            .header("x-provisioning-event-id", invocation.event_id.to_string())
            .header("webhook-id", invocation.message_id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        if let Some(traceparent) = &invocation.traceparent {
            request = request.header("traceparent", traceparent.as_str());
        }
        if invocation.test {
            // A run of HandlerService.Test: receivers may choose not to act on it.
            request = request.header("x-provisioning-test", "true");
        }
        if let Some(extra) = headers.as_object() {
            for (name, value) in extra {
                if let Some(value) = value.as_str() {
                    request = request.header(name.as_str(), value);
                }
            }
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| AttemptError::Request(format!("cannot build the request: {e}")))?;
        let response = self.client.request(request).await.map_err(|e| {
            if let Some(denied) = OutboundDenied::find(&e) {
                AttemptError::OutboundDenied(denied.0.clone())
            } else if e.is_connect() {
                AttemptError::Connect(crate::telemetry::error_chain(&e))
            } else {
                AttemptError::Request(crate::telemetry::error_chain(&e))
            }
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // AFTER: the status decides; only what the log keeps is read. BEFORE: the body
        // is the new data, so all of it up to the payload limit, and more is a failure.
        let limit = match invocation.phase {
            Phase::After => LOGGED_RESPONSE_BYTES,
            Phase::Before => self.max_body,
        };
        let (body, truncated) = read_capped(response.into_body(), limit).await?;
        if truncated && invocation.phase == Phase::Before {
            return Err(AttemptError::Request(format!(
                "response body over the limit of {} bytes",
                self.max_body
            )));
        }
        Ok(Reply::Http {
            status,
            body,
            truncated,
            retry_after,
        })
    }
}

/// Reads at most `limit` bytes of a body and stops there (the rest is never read: the
/// connection is dropped, not drained); also says whether there was more.
async fn read_capped(
    mut body: hyper::body::Incoming,
    limit: usize,
) -> Result<(Bytes, bool), AttemptError> {
    let mut kept = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| AttemptError::Request(format!("reading the response: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let room = limit - kept.len();
        if data.len() > room {
            kept.extend_from_slice(&data[..room]);
            return Ok((kept.freeze(), true));
        }
        kept.extend_from_slice(&data);
    }
    Ok((kept.freeze(), false))
}

/// `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>` where the key is the base64
/// part of `whsec_<base64>`, as Standard Webhooks specifies.
pub fn sign(secret: &str, message_id: &str, timestamp: u64, body: &[u8]) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|b64| engine.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    let mut mac = match Hmac::<Sha256>::new_from_slice(&key) {
        Ok(mac) => mac,
        Err(_) => return String::new(), // HMAC takes keys of any length.
    };
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", engine.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        // Test vector of the Standard Webhooks specification's reference libraries.
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
