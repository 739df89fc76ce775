//! Builders of valid requests, so a test spells out only the fields it is about.

use provisioning_client::proto;

/// A valid Create request for an enabled HTTP handler posting to `url`.
pub fn http_handler(
    name: &str,
    event: &str,
    phase: proto::Phase,
    url: &str,
) -> proto::CreateHandlerRequest {
    proto::CreateHandlerRequest {
        name: name.to_owned(),
        event: event.to_owned(),
        phase: phase.into(),
        target: Some(proto::create_handler_request::Target::Http(
            proto::HttpTarget {
                url: url.to_owned(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// A valid Create request for an enabled script handler running `path` (relative to
/// the server's scripts directory).
pub fn script_handler(
    name: &str,
    event: &str,
    phase: proto::Phase,
    path: &str,
) -> proto::CreateHandlerRequest {
    proto::CreateHandlerRequest {
        name: name.to_owned(),
        event: event.to_owned(),
        phase: phase.into(),
        target: Some(proto::create_handler_request::Target::Script(
            proto::ScriptTarget {
                path: path.to_owned(),
            },
        )),
        ..Default::default()
    }
}
