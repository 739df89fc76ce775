//! The tower layer that authenticates every request once, at the edge.
//!
//! It calls [`super::decide`] with the method path, the `authorization` header and the
//! [`PeerSubjects`] extension, then either answers the refusal itself (a gRPC status,
//! the service is never called) or inserts the [`super::Caller`] into the request's
//! extensions, where RPC methods find it (`request.extensions().get::<Caller>()`).

use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_util::future::Either;

use super::identities::Identities;
use super::{decide, identify, AuthError, Caller, PeerSubjects};

/// The identities requests are checked against, shared by the layer and the reloader.
/// `None` inside = development mode (every caller is the anonymous admin).
#[derive(Clone)]
pub struct Gate {
    identities: Option<Arc<RwLock<Arc<Identities>>>>,
}

impl Gate {
    /// Development mode: no tokens file, no checks.
    pub fn development() -> Gate {
        Gate { identities: None }
    }

    /// Checks against `identities` (replaceable by [`Gate::replace`]).
    pub fn with_identities(identities: Identities) -> Gate {
        Gate {
            identities: Some(Arc::new(RwLock::new(Arc::new(identities)))),
        }
    }

    /// Whether requests are checked at all.
    pub fn is_development(&self) -> bool {
        self.identities.is_none()
    }

    /// Swaps in a reloaded set; requests in flight keep the set they started with.
    pub fn replace(&self, identities: Identities) {
        if let Some(shared) = &self.identities {
            let mut current = shared
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *current = Arc::new(identities);
        }
    }

    /// [`super::decide`] against the current identities: what the layer does for every
    /// gRPC request, and the web console for the JSON route mapped to the method `path`.
    pub fn decide(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
        peer: Option<&PeerSubjects>,
    ) -> Result<Option<Caller>, AuthError> {
        decide(self.current().as_deref(), path, authorization, peer)
    }

    /// [`super::identify`] against the current identities: who the credentials name,
    /// without a method to check (the web console's `whoami`).
    pub fn identify(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        identify(self.current().as_deref(), authorization, None)
    }

    fn current(&self) -> Option<Arc<Identities>> {
        self.identities.as_ref().map(|shared| {
            shared
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone()
        })
    }
}

/// Wraps every service of the server in an [`AuthService`].
#[derive(Clone)]
pub struct AuthLayer {
    gate: Gate,
}

impl AuthLayer {
    /// A layer checking against `gate`.
    pub fn new(gate: Gate) -> AuthLayer {
        AuthLayer { gate }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            gate: self.gate.clone(),
        }
    }
}

/// Authenticates and authorizes, then calls the inner service with the caller.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    gate: Gate,
}

impl<S, B> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let decision = self.gate.decide(
            request.uri().path(),
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            request.extensions().get::<PeerSubjects>(),
        );
        match decision {
            Ok(Some(caller)) => {
                request.extensions_mut().insert(caller);
                Either::Left(self.inner.call(request))
            }
            Ok(None) => Either::Left(self.inner.call(request)),
            Err(refusal) => {
                tracing::info!(method = %request.uri().path(), reason = %refusal, "request refused");
                Either::Right(std::future::ready(Ok(
                    tonic::Status::from(refusal).into_http()
                )))
            }
        }
    }
}
