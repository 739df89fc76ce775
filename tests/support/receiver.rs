//! A recording HTTP receiver for handler tests: a real hyper 1 HTTP/1.1 server on
//! `127.0.0.1:0` that records every request (method, path, headers, body, arrival and
//! reply times) and answers from a scripted plan per path.
//!
//! A plan is a sequence of [`Reply`]s; each request on the path takes the next one and
//! the last repeats, so `vec![Reply::status(500), Reply::status(500), Reply::ok()]` fails
//! twice and then succeeds forever. Paths without a plan answer `200` with an empty body.
//! [`verify_signature`] checks the Standard Webhooks signature independently of the
//! service's own code, so a test catches a signing bug instead of sharing it.
//!
//! Dropping the receiver stops the accept loop and every open connection, so a reply
//! delayed for minutes never outlives its test.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// How far a `webhook-timestamp` may be from now, as the Standard Webhooks libraries
/// accept it.
const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// What the receiver answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    body: ReplyBody,
    delay: Duration,
    retry_after: Option<String>,
    location: Option<String>,
}

#[derive(Debug, Clone)]
enum ReplyBody {
    Fixed(Bytes),
    /// The request body, byte for byte.
    Echo,
    /// The request body parsed and serialised again, as the seeds' Flask handler does
    /// with `json.dumps(json.loads(request.data))`: same data, different text.
    EchoJson,
}

impl Reply {
    /// `200 OK` with an empty body.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// The given status with an empty body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: ReplyBody::Fixed(Bytes::new()),
            delay: Duration::ZERO,
            retry_after: None,
            location: None,
        }
    }

    /// The given status with a body.
    pub fn text(status: u16, body: &str) -> Reply {
        Reply::status(status).body(body)
    }

    /// `200 OK` echoing the request body byte for byte.
    pub fn echo() -> Reply {
        Reply {
            body: ReplyBody::Echo,
            ..Reply::ok()
        }
    }

    /// `200 OK` echoing the request body re-serialised (compact, keys reordered), like
    /// the Flask echo handler of the product documentation.
    pub fn echo_json() -> Reply {
        Reply {
            body: ReplyBody::EchoJson,
            ..Reply::ok()
        }
    }

    /// The given status with a body of any bytes (not necessarily text).
    pub fn bytes(status: u16, body: &[u8]) -> Reply {
        Reply {
            body: ReplyBody::Fixed(Bytes::copy_from_slice(body)),
            ..Reply::status(status)
        }
    }

    /// Replaces the body.
    pub fn body(mut self, body: &str) -> Reply {
        self.body = ReplyBody::Fixed(Bytes::copy_from_slice(body.as_bytes()));
        self
    }

    /// Waits this long before answering (the request is recorded at once).
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Adds a `Location` header (for redirects).
    pub fn location(mut self, url: &str) -> Reply {
        self.location = Some(url.to_owned());
        self
    }

    /// Adds a `Retry-After: <seconds>` header.
    pub fn retry_after(mut self, seconds: u64) -> Reply {
        self.retry_after = Some(seconds.to_string());
        self
    }
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request method.
    pub method: Method,
    /// Request path (without the query).
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body, as received.
    pub body: Bytes,
    /// When the request head arrived.
    pub arrived: Instant,
    /// When the reply was sent (after its delay); `None` while still pending or when the
    /// client went away first.
    pub replied: Option<Instant>,
}

impl Recorded {
    /// A header as text; `None` when absent or not UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as UTF-8 text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {}", self.body_text()))
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    plans: HashMap<String, Plan>,
}

struct Plan {
    replies: Vec<Reply>,
    served: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken at every arrival and every reply.
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the requests from the others.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The recording HTTP server; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().expect("an address")).await
    }

    /// Starts a receiver on `addr`: a port that refused connections until now (a
    /// handler endpoint coming up).
    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Receiver {
            addr,
            shared,
            accept,
        }
    }

    /// The receiver's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sets the plan of `path`: the n-th request gets `replies[n]`, the last repeats.
    pub fn route(&self, path: &str, replies: Vec<Reply>) {
        assert!(!replies.is_empty(), "a plan needs at least one reply");
        self.shared
            .lock()
            .plans
            .insert(path.to_owned(), Plan { replies, served: 0 });
    }

    /// Every request so far, in arrival order.
    pub fn all_requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The requests on `path` so far, in arrival order.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// How many requests arrived on `path`.
    pub fn count(&self, path: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Waits until at least `n` requests arrived on `path` and returns them; panics after
    /// `timeout` with what did arrive.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        let what = format!("{n} request(s) on {path}");
        self.wait_until(timeout, &what, |all| {
            all.iter().filter(|r| r.path == path).count() >= n
        })
        .await;
        self.requests(path)
    }

    /// Waits until `done` holds for all requests so far (in arrival order) and returns
    /// them; panics after `timeout`, naming `what` was awaited.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check so an arrival in between is not missed.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.shared.lock();
                if done(&state.requests) {
                    return state.requests.clone();
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let state = self.shared.lock();
                let seen: Vec<String> = state
                    .requests
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.body_text()))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} request(s) arrived: {seen:#?}",
                    seen.len()
                );
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| respond(shared.clone(), request));
                    // A client that hangs up mid-request (a handler timeout) is expected.
                    let _client_may_hang_up = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn respond(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = Instant::now();
    let (head, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path = head.uri.path().to_owned();
    let (index, reply) = {
        let mut state = shared.lock();
        let reply = match state.plans.get_mut(&path) {
            Some(plan) => {
                let reply = plan.replies[plan.served.min(plan.replies.len() - 1)].clone();
                plan.served += 1;
                reply
            }
            None => Reply::ok(),
        };
        state.requests.push(Recorded {
            method: head.method.clone(),
            path,
            headers: head.headers.clone(),
            body: body.clone(),
            arrived,
            replied: None,
        });
        (state.requests.len() - 1, reply)
    };
    shared.changed.notify_waiters();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let reply_body = match &reply.body {
        ReplyBody::Fixed(bytes) => bytes.clone(),
        ReplyBody::Echo => body,
        ReplyBody::EchoJson => match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(value) => Bytes::from(serde_json::to_vec(&value).unwrap_or_default()),
            Err(_) => body,
        },
    };
    let mut response = Response::new(Full::new(reply_body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if matches!(reply.body, ReplyBody::Echo | ReplyBody::EchoJson) {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    if let Some(seconds) = &reply.retry_after {
        if let Ok(value) = hyper::header::HeaderValue::from_str(seconds) {
            response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, value);
        }
    }
    if let Some(location) = &reply.location {
        if let Ok(value) = hyper::header::HeaderValue::from_str(location) {
            response
                .headers_mut()
                .insert(hyper::header::LOCATION, value);
        }
    }
    shared.lock().requests[index].replied = Some(Instant::now());
    shared.changed.notify_waiters();
    Ok(response)
}

/// Verifies a request the Standard Webhooks way, independently of the service's code:
/// the `webhook-signature` header holds space-separated `v1,<base64>` signatures, one of
/// which must be HMAC-SHA256 of `"<webhook-id>.<webhook-timestamp>.<body>"` keyed with
/// the base64-decoded part of `whsec_<base64>`; the timestamp must be within five minutes
/// of now.
pub fn verify_signature(secret: &str, request: &Recorded) -> bool {
    let engine = base64::engine::general_purpose::STANDARD;
    let (Some(id), Some(timestamp), Some(signatures)) = (
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(seconds) = timestamp.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(seconds) > TIMESTAMP_TOLERANCE.as_secs() {
        return false;
    }
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|b64| engine.decode(b64).ok())
    else {
        return false;
    };
    signatures.split(' ').any(|candidate| {
        let Some(("v1", encoded)) = candidate.split_once(',') else {
            return false;
        };
        let Ok(expected) = engine.decode(encoded) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(&request.body);
        mac.verify_slice(&expected).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret_key_b64: &str, signature: &str, timestamp: u64) -> (String, Recorded) {
        let mut headers = HeaderMap::new();
        headers.insert(
            "webhook-id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap(),
        );
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        let request = Recorded {
            method: Method::POST,
            path: "/".into(),
            headers,
            body: Bytes::from_static(br#"{"test": 2432232314}"#),
            arrived: Instant::now(),
            replied: None,
        };
        (format!("whsec_{secret_key_b64}"), request)
    }

    #[test]
    fn reference_vector_verifies_only_with_a_fresh_timestamp() {
        // Standard Webhooks reference vector; its timestamp is old, so it must be refused
        // as a replay, and a fresh signature over the same message must pass.
        let (secret, old) = signed(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            1614265330,
        );
        assert!(!verify_signature(&secret, &old));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(
            format!("msg_p5jXN8AQM9LWM0D4loKWxJek.{now}.{{\"test\": 2432232314}}").as_bytes(),
        );
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let (secret, fresh) = signed(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &format!("v1a,x v1,{sig}"),
            now,
        );
        assert!(verify_signature(&secret, &fresh));
        assert!(!verify_signature("whsec_AAAA", &fresh));
    }
}
