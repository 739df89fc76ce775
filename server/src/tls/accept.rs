//! The TLS accept loop and the SIGHUP reload task.
//!
//! One task accepts TCP connections and hands each to its own handshake task, so a
//! slow or hostile client never holds up the others. A handshake that fails (plaintext
//! client, untrusted or missing client certificate, garbage) or takes longer than
//! [`HANDSHAKE_TIMEOUT`] ends only that connection, with one log line; the server goes
//! on. Completed TLS streams go to tonic through a channel, as the `incoming` stream of
//! `serve_with_incoming_shutdown`. At most [`MAX_PENDING_HANDSHAKES`] handshakes run at
//! once; past that, accepting waits (the kernel's backlog queues the rest), which keeps
//! memory bounded under a connection flood.
//!
//! Both tasks are tracked by [`Shutdown`] and end when it is requested.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::ServerTls;
use crate::shutdown::Shutdown;

/// Longest time a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepts connections on `listener` until shutdown and yields them once their TLS
/// handshake (with the configuration current when each was accepted) has completed.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    shutdown: &Shutdown,
) -> ReceiverStream<Result<TlsStream<TcpStream>, Infallible>> {
    let (sender, receiver) = mpsc::channel(MAX_PENDING_HANDSHAKES);
    shutdown.spawn(accept_loop(listener, tls, sender, shutdown.clone()));
    ReceiverStream::new(receiver)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    sender: mpsc::Sender<Result<TlsStream<TcpStream>, Infallible>>,
    shutdown: Shutdown,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = pending.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
            _ = shutdown.token.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.token.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        set_nodelay(&tcp, peer);
        let acceptor = tls.acceptor();
        let sender = sender.clone();
        let token = shutdown.token.clone();
        shutdown.spawn(async move {
            if let Some(stream) = handshake(acceptor, tcp, peer, &token).await {
                // Only fails when the server stopped serving: the connection just closes.
                if sender.send(Ok(stream)).await.is_err() {
                    tracing::debug!(tls.peer = %peer, "server stopping; TLS connection dropped");
                }
            }
            drop(permit);
        });
    }
}

/// Runs one handshake; `None` (after logging why) when it fails, times out or the
/// server stops meanwhile.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    token: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    let result = tokio::select! {
        result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => result,
        _ = token.cancelled() => return None,
    };
    match result {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::info!(tls.peer = %peer, %error, "TLS handshake failed");
            None
        }
        Err(_elapsed) => {
            tracing::info!(tls.peer = %peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// Without TCP_NODELAY small replies wait for the peer's delayed ACK (~40 ms); failing
/// to set it only costs latency, so it is logged and the connection kept.
fn set_nodelay(tcp: &TcpStream, peer: SocketAddr) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(tls.peer = %peer, %error, "cannot set TCP_NODELAY");
    }
}

/// Reloads `tls` from its files on every SIGHUP until shutdown. A failed reload keeps
/// the configuration in use and logs why.
pub fn spawn_reload_on_sighup(tls: Arc<ServerTls>, shutdown: &Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};

    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot install a SIGHUP handler; TLS files will not be reloaded");
            return;
        }
    };
    let token = shutdown.token.clone();
    shutdown.spawn(async move {
        loop {
            tokio::select! {
                received = hangups.recv() => if received.is_none() { break },
                _ = token.cancelled() => break,
            }
            let reloading = tls.clone();
            // Reading the files blocks (briefly): off the runtime's worker threads.
            match tokio::task::spawn_blocking(move || reloading.reload()).await {
                Ok(Ok(())) => tracing::info!(
                    tls.cert = %tls.files().cert.display(),
                    "TLS certificate reloaded; new connections use it"
                ),
                Ok(Err(error)) => tracing::error!(
                    %error,
                    "TLS reload failed; keeping the previous certificate"
                ),
                Err(error) => tracing::error!(
                    %error,
                    "TLS reload task failed; keeping the previous certificate"
                ),
            }
        }
    });
}
