//! Security behaviour end to end (issue 9, outbound and script parts, limits, secret
//! hygiene): the outbound policy at Create and at connect time, redirects, script
//! privileges and permission checks, every configured limit hit once, and no secret in
//! the server's own log output or in the execution log.
//!
//! - `outbound`: literal and resolved denied addresses, redirects;
//! - `scripts`: the account scripts run as, their environment, refused files;
//! - `limits`: message size, handlers per event, headers per handler, concurrent calls,
//!   HTTP/2 streams per connection, live tails, the default deadline;
//! - `secrets`: a whole scenario against the real binary with debug logging.

mod limits;
mod outbound;
mod scripts;
mod secrets;

use provisioning_client::{proto, ClientError};

/// The code and message of a failed call; panics on success.
pub(crate) fn failure<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (tonic::Code, String) {
    match result {
        Err(error) => (
            error.code().unwrap_or(tonic::Code::Unknown),
            error
                .status()
                .map(|s| s.message().to_owned())
                .unwrap_or_else(|| error.to_string()),
        ),
        Ok(value) => panic!("expected a failure, got {value:?}"),
    }
}

/// A Create request for an HTTP handler of `clients.create` (AFTER) posting to `url`
/// with the extra `headers`.
pub(crate) fn http_with_headers(
    name: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> proto::CreateHandlerRequest {
    proto::CreateHandlerRequest {
        target: Some(proto::create_handler_request::Target::Http(
            proto::HttpTarget {
                url: url.to_owned(),
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            },
        )),
        ..crate::dispatch::http_handler(name, "clients.create", proto::Phase::After, url)
    }
}
