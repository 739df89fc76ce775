//! The web console (`--console-listen`, issue #12): its JSON API over plain HTTP (bad
//! inputs, roles, the same validation as gRPC) in `api`, and the pages driven in a
//! real headless Chromium in `browser`. This file holds their shared fixture.

mod api;
mod browser;

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use provisioning_tests::{free_addr, spawn_server_with, TestDatabase, TestServer};
use serde_json::Value;

use crate::auth::TokensFile;

/// A server with the console on, optionally with the auth tests' tokens file (admin,
/// emitter, reader tokens of `crate::auth`).
pub(crate) struct ConsoleServer {
    pub(crate) server: TestServer,
    /// The console's address.
    pub(crate) console: SocketAddr,
    _tokens: Option<TokensFile>,
}

impl ConsoleServer {
    pub(crate) async fn start(db: &TestDatabase, secured: bool) -> ConsoleServer {
        let console = free_addr();
        let tokens = secured.then(TokensFile::new);
        let tokens_path = tokens.as_ref().map(|t| t.path.clone());
        let server = spawn_server_with(db, |config| {
            config.console_listen = Some(console);
            config.tokens_file = tokens_path;
        })
        .await;
        ConsoleServer {
            server,
            console,
            _tokens: tokens,
        }
    }

    /// `http://127.0.0.1:PORT` of the console.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.console)
    }
}

/// One HTTP answer: status, headers and the body (as JSON when it is JSON).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) text: String,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

/// Sends one request to the console: `body` as `application/json` when given.
pub(crate) async fn call(
    console: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    send(
        console,
        method,
        path,
        token,
        body.map(|b| ("application/json", b)),
    )
    .await
}

/// Sends one request with any content type.
pub(crate) async fn send(
    console: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> Answer {
    let client: HttpClient<_, Full<Bytes>> = HttpClient::builder(TokioExecutor::new()).build_http();
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{console}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let content = match body {
        Some((content_type, text)) => {
            request = request.header("content-type", content_type);
            Bytes::from(text.to_owned())
        }
        None => Bytes::new(),
    };
    let response = client
        .request(request.body(Full::new(content)).expect("a request"))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}
