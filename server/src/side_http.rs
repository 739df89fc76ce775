//! The small HTTP/1 servers beside the gRPC port (the metrics endpoint, the web
//! console): binding with a clear start-up error, and one accept loop that serves each
//! connection on its own task until shutdown closes them all.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Binds the address given to `flag` (a clear error at start-up when it is taken).
pub async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{flag} {addr}: {e}"))
}

/// Serves `answer` on every connection accepted on `listener` until shutdown; open
/// connections (a console's Live log among them) are closed then. `what` names the
/// server in the log.
pub fn serve<A, F, B>(listener: TcpListener, what: &'static str, shutdown: &Shutdown, answer: A)
where
    A: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let token = shutdown.token.clone();
    shutdown.spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = token.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "{what}: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (answer, token) = (answer.clone(), token.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = answer(request);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = token.cancelled() => {}
                }
            });
        }
    });
}
