//! The HTTP sink every benchmark handler points at, and the plain hyper client used for
//! the HTTP baselines.
//!
//! The sink is an in-process hyper HTTP/1.1 server on `127.0.0.1:0` that does as little
//! as possible: it answers `200` with an empty body (which a BEFORE handler reads as
//! "data unchanged"), counts requests, and records the first arrival [`Instant`] of each
//! `x-provisioning-event-id`, so latency is measured on one clock from the emitter's
//! `Instant` to the sink's. It also counts repeated delivery ids (`webhook-id`, the
//! same for every attempt of one event to one handler): a duplicate is a delivery POSTed
//! again. Arrivals and delivery ids are kept until [`Sink::reset`]; every scenario
//! resets because event ids restart in each fresh database.
//!
//! A sink can also be down: [`closed_address`] finds a loopback port nothing listens
//! on (connections to it are refused) and [`Sink::start_on`] brings a sink up on it
//! later, for the scenario whose endpoint comes back after an outage.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::load::closed_loop;

/// Header the server puts the event id in.
const EVENT_ID_HEADER: &str = "x-provisioning-event-id";
/// Header the server puts the delivery id in (Standard Webhooks).
const DELIVERY_ID_HEADER: &str = "webhook-id";

#[derive(Default)]
struct State {
    requests: AtomicU64,
    arrivals: Mutex<HashMap<i64, Instant>>,
    deliveries: Mutex<HashSet<String>>,
    duplicates: AtomicU64,
}

impl State {
    /// The map stays consistent even if a holder panicked (it only ever inserts).
    fn arrivals(&self) -> MutexGuard<'_, HashMap<i64, Instant>> {
        self.arrivals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Likewise: the set only ever grows until a reset.
    fn deliveries(&self) -> MutexGuard<'_, HashSet<String>> {
        self.deliveries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running sink; stops accepting when dropped.
pub struct Sink {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Sink {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start() -> std::io::Result<Sink> {
        Sink::serve(TcpListener::bind("127.0.0.1:0").await?)
    }

    /// Binds `addr` (typically from [`closed_address`]) and starts serving. Retries for
    /// a few seconds while the port is taken, in case something held it for a moment.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Sink> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Sink::serve(listener),
                Err(error)
                    if error.kind() == std::io::ErrorKind::AddrInUse
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn serve(listener: TcpListener) -> std::io::Result<Sink> {
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Sink {
            addr,
            state,
            accept,
        })
    }

    /// URL handlers post to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Requests answered since start.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Forgets the recorded arrivals, delivery ids and duplicates.
    pub fn reset(&self) {
        self.state.arrivals().clear();
        self.state.deliveries().clear();
        self.state.duplicates.store(0, Ordering::Relaxed);
    }

    /// POSTs since the last reset whose delivery id had arrived before.
    pub fn duplicates(&self) -> u64 {
        self.state.duplicates.load(Ordering::Relaxed)
    }

    /// First arrival of each id, `None` for ids not seen.
    pub fn arrivals_of(&self, ids: &[i64]) -> Vec<Option<Instant>> {
        let arrivals = self.state.arrivals();
        ids.iter().map(|id| arrivals.get(id).copied()).collect()
    }

    /// Waits until every id in `ids` has arrived, polling; returns how many are still
    /// missing when `timeout` runs out (0 = all arrived).
    pub async fn wait_for(&self, ids: &[i64], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = {
                let arrivals = self.state.arrivals();
                if arrivals.len() < ids.len() {
                    ids.len() - arrivals.len()
                } else {
                    ids.iter().filter(|id| !arrivals.contains_key(id)).count()
                }
            };
            if missing == 0 || Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A loopback address nothing listens on, so connections to it are refused, and on
/// which [`Sink::start_on`] can bring a sink up later.
///
/// The port is taken below the kernel's ephemeral range: connecting many times to a
/// closed port inside that range eventually picks the same port as the source and the
/// socket connects to itself (TCP simultaneous open), which would neither be refused
/// nor leave the port free for the sink.
pub fn closed_address() -> std::io::Result<SocketAddr> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let first_ephemeral = range
        .as_deref()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Registered ports below the ephemeral range; start at a point that depends on the
    // process so two harnesses on one machine are unlikely to collide.
    let low = 10_000u16.min(first_ephemeral / 2);
    let span = first_ephemeral.saturating_sub(low).max(1);
    let start = (std::process::id() % u32::from(span)) as u16;
    for offset in 0..span {
        let port = low + (start + offset) % span;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            // Dropped at once: the port is closed again, and free for the sink.
            return listener.local_addr();
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free loopback port below {first_ephemeral}"),
    ))
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                eprintln!("sink: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            eprintln!("sink: TCP_NODELAY failed: {error}");
        }
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(state.clone(), request));
            // Connection errors (peer gone mid-request) are the peer's business.
            let _closed = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = Instant::now();
    state.requests.fetch_add(1, Ordering::Relaxed);
    let event_id = request
        .headers()
        .get(EVENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    if let Some(id) = event_id {
        state.arrivals().entry(id).or_insert(arrived);
    }
    let delivery_id = request
        .headers()
        .get(DELIVERY_ID_HEADER)
        .and_then(|v| v.to_str().ok());
    if let Some(id) = delivery_id {
        if !state.deliveries().insert(id.to_owned()) {
            state.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Read the body so the connection can be reused; its content does not matter.
    let _body = request.into_body().collect().await;
    Ok(Response::new(Full::new(Bytes::new())))
}

/// A plain keep-alive hyper client, the reference the server's own HTTP executor is
/// compared with.
#[derive(Clone)]
pub struct PlainClient {
    client: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    url: hyper::Uri,
    body: Bytes,
}

impl PlainClient {
    /// A client posting `body` to `url`, keeping up to `connections` idle connections.
    pub fn new(url: &str, body: &str, connections: usize) -> anyhow::Result<PlainClient> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .build(connector);
        Ok(PlainClient {
            client,
            url: url.parse()?,
            body: Bytes::copy_from_slice(body.as_bytes()),
        })
    }

    /// One POST, body read to the end; fails on a non-2xx answer.
    pub async fn post(&self) -> anyhow::Result<()> {
        let request = Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        anyhow::ensure!(status.is_success(), "sink answered {status}");
        Ok(())
    }
}

/// Requests/s `connections` closed-loop tasks get from the sink during `duration`.
pub async fn hammer(
    url: &str,
    body: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let client = PlainClient::new(url, body, connections)?;
    // Open the connections first so the figure is steady-state keep-alive.
    warm_up(&client, connections).await?;
    let (posts, elapsed) = closed_loop(connections, duration, move |_, _| {
        let client = client.clone();
        async move { client.post().await }
    })
    .await?;
    Ok(crate::report::per_second(posts.len() as u64, elapsed))
}

/// Latency of `posts` sequential POSTs per sample, from `tasks` closed-loop tasks during
/// `duration`: what a chain of `posts` handlers would cost with no server in between.
/// Returns the sorted samples and the elapsed time.
pub async fn sequential_latency(
    url: &str,
    body: &str,
    tasks: usize,
    posts: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let client = PlainClient::new(url, body, tasks)?;
    warm_up(&client, tasks).await?;
    closed_loop(tasks, duration, move |_, _| {
        let client = client.clone();
        async move {
            for _ in 0..posts {
                client.post().await?;
            }
            Ok(())
        }
    })
    .await
}

/// Opens `connections` keep-alive connections with one POST each.
pub async fn warm_up(client: &PlainClient, connections: usize) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let client = client.clone();
        set.spawn(async move { client.post().await });
    }
    while let Some(result) = set.join_next().await {
        result??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sink_counts_requests_and_records_event_ids() {
        let sink = Sink::start().await.unwrap();
        let client = PlainClient::new(&sink.url(), "{}", 2).unwrap();
        client.post().await.unwrap();
        let request = Request::post(sink.url())
            .header(EVENT_ID_HEADER, "42")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let response = client.client.request(request).await.unwrap();
        assert!(response.status().is_success());
        assert_eq!(sink.requests(), 2);
        assert_eq!(sink.wait_for(&[42], Duration::from_secs(1)).await, 0);
        assert!(sink.arrivals_of(&[42, 43])[1].is_none());
        sink.reset();
        assert_eq!(sink.wait_for(&[42], Duration::ZERO).await, 1);
    }

    #[tokio::test]
    async fn a_closed_address_refuses_until_a_sink_comes_up_on_it() {
        let addr = closed_address().unwrap();
        let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let sink = Sink::start_on(addr).await.unwrap();
        assert_eq!(sink.url(), format!("http://{addr}/hook"));
        PlainClient::new(&sink.url(), "{}", 1)
            .unwrap()
            .post()
            .await
            .unwrap();
        assert_eq!(sink.requests(), 1);
    }
}
