//! Request limits at the edge, one tower layer wired in `lib.rs` around every service:
//!
//! - **Concurrent calls** over all connections (`--max-concurrent-requests`): a call
//!   holds a slot from its arrival until its response body ends (so an open stream, a
//!   Tail or an EmitStream, holds one for as long as it is open). A call finding no free
//!   slot gets `RESOURCE_EXHAUSTED` at once, without queueing: memory stays bounded.
//! - **Default deadline** (`--default-deadline`): a call whose caller sent no
//!   `grpc-timeout` gets that header (so the BEFORE chain budgets by it) and ends with
//!   `DEADLINE_EXCEEDED` if no response has started by then. A caller's own deadline is
//!   kept as given. Streams are bounded until their response starts, not after.
//!
//! Health checks (`grpc.health.v1.Health`) are exempt from both, so an orchestrator can
//! always tell a busy server from a dead one.
//!
//! The other limits are set where they belong: message sizes on each tonic service and
//! HTTP/2 streams and keepalive on the server builder (`lib.rs`), handlers per event and
//! headers per handler in handler validation, live tails in `domain::logs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

/// Path prefix of the calls the limits never apply to.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

/// The limits layer.
#[derive(Clone)]
pub struct RequestLimitsLayer {
    slots: Arc<Semaphore>,
    max_calls: usize,
    default_deadline: Duration,
}

impl RequestLimitsLayer {
    /// At most `max_calls` calls at once; `default_deadline` for calls without one.
    pub fn new(max_calls: usize, default_deadline: Duration) -> RequestLimitsLayer {
        RequestLimitsLayer {
            slots: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            default_deadline,
        }
    }
}

impl<S> Layer<S> for RequestLimitsLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> RequestLimits<S> {
        RequestLimits {
            inner,
            limits: self.clone(),
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone)]
pub struct RequestLimits<S> {
    inner: S,
    limits: RequestLimitsLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestLimits<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<LimitedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone is ready for the next call; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if request.uri().path().starts_with(EXEMPT_PREFIX) {
            let responding = inner.call(request);
            return Box::pin(async move { Ok(responding.await?.map(LimitedBody::new(None))) });
        }
        let Ok(slot) = self.limits.slots.clone().try_acquire_owned() else {
            let status = tonic::Status::resource_exhausted(format!(
                "server busy: {} calls in progress, the most allowed \
                 (--max-concurrent-requests); retry later",
                self.limits.max_calls
            ));
            tracing::debug!(
                method = request.uri().path(),
                "call refused: too many calls in progress"
            );
            return Box::pin(async move { Ok(status.into_http()) });
        };
        let deadline = match request.headers().get("grpc-timeout") {
            Some(_) => None,
            None => {
                let millis = self
                    .limits
                    .default_deadline
                    .as_millis()
                    .clamp(1, 99_999_999);
                if let Ok(value) = http::HeaderValue::from_str(&format!("{millis}m")) {
                    request.headers_mut().insert("grpc-timeout", value);
                }
                Some(self.limits.default_deadline)
            }
        };
        let responding = inner.call(request);
        Box::pin(async move {
            let response = match deadline {
                None => responding.await?,
                Some(deadline) => match tokio::time::timeout(deadline, responding).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(tonic::Status::deadline_exceeded(format!(
                            "no response within the default deadline of {} ms \
                             (--default-deadline; send grpc-timeout to choose another)",
                            deadline.as_millis()
                        ))
                        .into_http())
                    }
                },
            };
            Ok(response.map(LimitedBody::new(Some(slot))))
        })
    }
}

/// A response body holding the call's slot until it ends or is dropped; empty for the
/// refusals built here (trailers-only responses: the status is in the headers).
pub struct LimitedBody<B> {
    body: Option<B>,
    slot: Option<OwnedSemaphorePermit>,
}

impl<B> LimitedBody<B> {
    fn new(slot: Option<OwnedSemaphorePermit>) -> impl FnOnce(B) -> LimitedBody<B> {
        move |body| LimitedBody {
            body: Some(body),
            slot,
        }
    }
}

impl<B> Default for LimitedBody<B> {
    fn default() -> LimitedBody<B> {
        LimitedBody {
            body: None,
            slot: None,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // The call is over: free its slot now rather than when hyper drops the body.
            this.slot = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
