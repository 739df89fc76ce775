//! The outbound guard of the HTTP executor: the operator's outbound policy
//! (`policy::outbound`) applied at connect time, to the addresses actually connected to.
//!
//! - Host names are resolved by [`GuardedResolver`], which drops every address the
//!   policy denies; hyper's `HttpConnector` then connects only to what is left, so a name
//!   that resolves (or later re-resolves) to a denied address cannot reach it. When
//!   every address is denied, resolution fails with [`OutboundDenied`].
//! - Literal addresses (which `HttpConnector` never resolves) are checked by
//!   [`GuardedConnector`] before connecting; it also checks the peer address of every
//!   new connection, so no path around the resolver reaches a denied address unnoticed.
//!
//! The executor recognises [`OutboundDenied`] in an error's source chain and records a
//! non-retryable attempt error. Pooled connections were checked when they were made.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::policy::outbound::OutboundPolicy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// A connection refused by the outbound policy; the message names the address and the
/// deny entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutboundDenied(pub String);

impl OutboundDenied {
    /// The policy refusal found in `error` or its sources, if any.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a OutboundDenied> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(denied) = error.downcast_ref::<OutboundDenied>() {
                return Some(denied);
            }
            current = error.source();
        }
        None
    }
}

/// Keeps the addresses of `host` the policy allows; refuses when none is left.
pub fn allowed_addresses(
    policy: &OutboundPolicy,
    host: &str,
    addresses: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, OutboundDenied> {
    let mut denied = Vec::new();
    let allowed: Vec<SocketAddr> = addresses
        .into_iter()
        .filter(|address| match policy.check(address.ip()) {
            Ok(()) => true,
            Err(refusal) => {
                denied.push(format!("{} ({})", refusal.address, refusal.range));
                false
            }
        })
        .collect();
    if allowed.is_empty() && !denied.is_empty() {
        return Err(OutboundDenied(format!(
            "outbound policy denies every address of {host}: {}",
            denied.join(", ")
        )));
    }
    if !denied.is_empty() {
        tracing::debug!(host, denied = %denied.join(", "), "outbound policy dropped some addresses");
    }
    Ok(allowed)
}

/// Resolves names with the system resolver and keeps only allowed addresses.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<OutboundPolicy>,
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str();
            // Port 0: HttpConnector sets the URL's port on every address.
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
            Ok(allowed_addresses(&policy, host, resolved)?.into_iter())
        })
    }
}

/// `HttpConnector` with the outbound policy applied to literal and connected addresses.
#[derive(Clone)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    policy: Arc<OutboundPolicy>,
}

impl GuardedConnector {
    /// A guarded connector; `configure` sets up the inner `HttpConnector`.
    pub fn new(
        policy: Arc<OutboundPolicy>,
        configure: impl FnOnce(&mut HttpConnector<GuardedResolver>),
    ) -> GuardedConnector {
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver {
            policy: policy.clone(),
        });
        configure(&mut inner);
        GuardedConnector { inner, policy }
    }
}

impl Service<http::Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let literal = uri
            .host()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|host| host.parse::<IpAddr>().ok());
        if let Some(Err(refusal)) = literal.map(|ip| self.policy.check(ip)) {
            let denied = OutboundDenied(refusal.to_string());
            return Box::pin(async move { Err(denied.into()) });
        }
        let connecting = self.inner.call(uri);
        let policy = self.policy.clone();
        Box::pin(async move {
            let stream = connecting.await?;
            let peer = stream.inner().peer_addr()?;
            if let Err(refusal) = policy.check(peer.ip()) {
                return Err(OutboundDenied(refusal.to_string()).into());
            }
            Ok(stream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn denied_addresses_are_dropped_and_none_left_is_a_refusal() {
        let policy = OutboundPolicy::default();
        let kept = allowed_addresses(
            &policy,
            "mixed.example",
            vec![addr("169.254.169.254:80"), addr("10.0.0.1:80")],
        )
        .unwrap();
        assert_eq!(kept, [addr("10.0.0.1:80")]);
        let refusal = allowed_addresses(
            &policy,
            "metadata.example",
            vec![addr("169.254.169.254:80"), addr("[fe80::1]:80")],
        )
        .unwrap_err();
        assert_eq!(
            refusal.0,
            "outbound policy denies every address of metadata.example: \
             169.254.169.254 (169.254.0.0/16), fe80::1 (fe80::/10)"
        );
    }

    #[test]
    fn refusals_are_found_in_source_chains() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] BoxError);
        let error = Outer(Box::new(OutboundDenied("no".into())));
        assert_eq!(
            OutboundDenied::find(&error).map(|d| d.0.as_str()),
            Some("no")
        );
        let other = Outer("plain".into());
        assert!(OutboundDenied::find(&other).is_none());
    }
}
