//! JSON → prost: the bodies and enum names of the console's requests, read by hand
//! into the gRPC request messages. Enums are their proto names without the prefix,
//! lowercased (`PHASE_AFTER` is `"after"`); times are RFC 3339 text.
//!
//! Reading only shapes the request (a field of the wrong JSON type, an unknown field,
//! an enum name that does not exist): whether the values are acceptable is the gRPC
//! service's decision, made by the same code for both doors.

use chrono::DateTime;
use provisioning_api::v1 as pb;
use serde_json::{Map, Value};

use super::error::ApiError;

/// A JSON object body being read field by field; what is left at the end is unknown.
pub(super) struct Fields(Map<String, Value>);

impl Fields {
    /// The body's object; anything else is a 400 naming what came.
    pub(super) fn parse(body: &[u8]) -> Result<Fields, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(None, format!("malformed JSON body: {e}")))?;
        match value {
            Value::Object(map) => Ok(Fields(map)),
            _ => Err(ApiError::bad_request(
                None,
                "the body must be a JSON object".to_owned(),
            )),
        }
    }

    /// Whether the body names `key`.
    pub(super) fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key).filter(|v| !v.is_null())
    }

    /// A string field (absent or null = empty).
    pub(super) fn string(&mut self, key: &str) -> Result<String, ApiError> {
        match self.take(key) {
            None => Ok(String::new()),
            Some(Value::String(text)) => Ok(text),
            Some(other) => Err(wrong_type(key, "a string", &other)),
        }
    }

    /// An integer field (absent or null = 0).
    pub(super) fn integer<T: TryFrom<i64>>(&mut self, key: &str) -> Result<T, ApiError> {
        let value = match self.take(key) {
            None => 0,
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
                ApiError::bad_request(Some(key), format!("{n} is not an integer"))
            })?,
            Some(other) => return Err(wrong_type(key, "an integer", &other)),
        };
        T::try_from(value)
            .map_err(|_| ApiError::bad_request(Some(key), format!("{value} is out of range")))
    }

    /// A boolean field (absent or null = false).
    pub(super) fn boolean(&mut self, key: &str) -> Result<bool, ApiError> {
        match self.take(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(other) => Err(wrong_type(key, "true or false", &other)),
        }
    }

    /// An object field, read with its own [`Fields`] (absent or null = `None`).
    pub(super) fn object(&mut self, key: &str) -> Result<Option<Fields>, ApiError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields(map))),
            Some(other) => Err(wrong_type(key, "an object", &other)),
        }
    }

    /// An object of strings (absent or null = empty).
    fn string_map(&mut self, key: &str) -> Result<Vec<(String, String)>, ApiError> {
        let Some(mut fields) = self.object(key)? else {
            return Ok(Vec::new());
        };
        let keys: Vec<String> = fields.0.keys().cloned().collect();
        keys.into_iter()
            .map(|name| {
                let value = fields.string(&name).map_err(|e| e.with_field_prefix(key))?;
                Ok((name, value))
            })
            .collect()
    }

    /// Fails on the first field no one read.
    pub(super) fn finish(self, prefix: &str) -> Result<(), ApiError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(key) => Err(ApiError::bad_request(
                Some(&format!("{prefix}{key}")),
                "unknown field".to_owned(),
            )),
        }
    }
}

fn wrong_type(key: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::bad_request(Some(key), format!("must be {expected}, got {got}"))
}

/// A proto enum from its short lowercase name (`"after"` for `PHASE_AFTER`); `""` is
/// the unspecified value (0), which the service accepts or refuses as gRPC would.
fn enum_value(
    field: &str,
    text: &str,
    prefix: &str,
    from_str_name: fn(&str) -> Option<i32>,
) -> Result<i32, ApiError> {
    if text.is_empty() {
        return Ok(0);
    }
    from_str_name(&format!("{prefix}_{}", text.to_ascii_uppercase()))
        .filter(|_| text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .ok_or_else(|| ApiError::bad_request(Some(field), format!("unknown value {text:?}")))
}

fn phase(fields: &mut Fields) -> Result<i32, ApiError> {
    let text = fields.string("phase")?;
    phase_value("phase", &text)
}

/// `"before"`, `"after"` to the Phase value.
pub(super) fn phase_value(field: &str, text: &str) -> Result<i32, ApiError> {
    enum_value(field, text, "PHASE", |s| {
        pb::Phase::from_str_name(s).map(Into::into)
    })
}

/// `"enabled"`, `"disabled"`, `"archived"` to the HandlerStatus value.
pub(super) fn handler_status(field: &str, text: &str) -> Result<i32, ApiError> {
    enum_value(field, text, "HANDLER_STATUS", |s| {
        pb::HandlerStatus::from_str_name(s).map(Into::into)
    })
}

/// `"http"`, `"script"` to the HandlerKind value.
pub(super) fn handler_kind(field: &str, text: &str) -> Result<i32, ApiError> {
    enum_value(field, text, "HANDLER_KIND", |s| {
        pb::HandlerKind::from_str_name(s).map(Into::into)
    })
}

/// `"success"`, `"fail"` to the RunStatus value.
pub(super) fn run_status(field: &str, text: &str) -> Result<i32, ApiError> {
    enum_value(field, text, "RUN_STATUS", |s| {
        pb::RunStatus::from_str_name(s).map(Into::into)
    })
}

fn failure_policy(fields: &mut Fields) -> Result<i32, ApiError> {
    let text = fields.string("failure_policy")?;
    enum_value("failure_policy", &text, "FAILURE_POLICY", |s| {
        pb::FailurePolicy::from_str_name(s).map(Into::into)
    })
}

fn http_target(mut fields: Fields) -> Result<pb::HttpTarget, ApiError> {
    let url = fields
        .string("url")
        .map_err(|e| e.with_field_prefix("http"))?;
    let headers = fields
        .string_map("headers")
        .map_err(|e| e.with_field_prefix("http"))?;
    fields.finish("http.")?;
    Ok(pb::HttpTarget {
        url,
        headers: headers.into_iter().collect(),
        secret: String::new(),
    })
}

fn script_target(mut fields: Fields) -> Result<pb::ScriptTarget, ApiError> {
    let path = fields
        .string("path")
        .map_err(|e| e.with_field_prefix("script"))?;
    fields.finish("script.")?;
    Ok(pb::ScriptTarget { path })
}

/// The fields of the handler form, as the proto names them. `http` and `script` are
/// objects (`{"url", "headers"}`, `{"path"}`); at most one may be given.
struct HandlerFields {
    name: String,
    event: String,
    phase: i32,
    status: i32,
    priority: i32,
    timeout_ms: u32,
    http: Option<pb::HttpTarget>,
    script: Option<pb::ScriptTarget>,
    failure_policy: i32,
    filter_json: String,
}

impl HandlerFields {
    fn read(fields: &mut Fields) -> Result<HandlerFields, ApiError> {
        let status = fields.string("status")?;
        let read = HandlerFields {
            name: fields.string("name")?,
            event: fields.string("event")?,
            phase: phase(fields)?,
            status: handler_status("status", &status)?,
            priority: fields.integer("priority")?,
            timeout_ms: fields.integer("timeout_ms")?,
            http: fields.object("http")?.map(http_target).transpose()?,
            script: fields.object("script")?.map(script_target).transpose()?,
            failure_policy: failure_policy(fields)?,
            filter_json: fields.string("filter_json")?,
        };
        if read.http.is_some() && read.script.is_some() {
            return Err(ApiError::bad_request(
                Some("script"),
                "give http or script, not both".to_owned(),
            ));
        }
        Ok(read)
    }

    fn target<T>(
        &mut self,
        http: fn(pb::HttpTarget) -> T,
        script: fn(pb::ScriptTarget) -> T,
    ) -> Option<T> {
        self.http
            .take()
            .map(http)
            .or_else(|| self.script.take().map(script))
    }
}

/// The body of `POST /api/handlers` as a CreateHandlerRequest.
pub(super) fn create_handler(mut fields: Fields) -> Result<pb::CreateHandlerRequest, ApiError> {
    let mut read = HandlerFields::read(&mut fields)?;
    fields.finish("")?;
    let target = read.target(
        pb::create_handler_request::Target::Http,
        pb::create_handler_request::Target::Script,
    );
    let HandlerFields {
        name,
        event,
        phase,
        status,
        priority,
        timeout_ms,
        http: _,
        script: _,
        failure_policy,
        filter_json,
    } = read;
    Ok(pb::CreateHandlerRequest {
        name,
        event,
        phase,
        status,
        priority,
        timeout_ms,
        target,
        failure_policy,
        filter_json,
        ..Default::default()
    })
}

/// The body of `PATCH /api/handlers/{id}` as an UpdateHandlerRequest changing the
/// fields the body names (and only those).
pub(super) fn update_handler(
    id: i64,
    mut fields: Fields,
) -> Result<pb::UpdateHandlerRequest, ApiError> {
    let paths: Vec<String> = [
        "name",
        "event",
        "phase",
        "status",
        "priority",
        "timeout_ms",
        "http",
        "script",
        "failure_policy",
        "filter_json",
    ]
    .into_iter()
    .filter(|key| fields.has(key))
    .map(str::to_owned)
    .collect();
    let mut read = HandlerFields::read(&mut fields)?;
    fields.finish("")?;
    let target = read.target(pb::handler::Target::Http, pb::handler::Target::Script);
    Ok(pb::UpdateHandlerRequest {
        handler: Some(pb::Handler {
            id,
            name: read.name,
            event: read.event,
            phase: read.phase,
            status: read.status,
            priority: read.priority,
            timeout_ms: read.timeout_ms,
            target,
            failure_policy: read.failure_policy,
            filter_json: read.filter_json,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths }),
    })
}

/// RFC 3339 text (`2016-12-20T13:45:15Z`) as a timestamp; `""` is none.
pub(super) fn timestamp_from(
    field: &str,
    text: &str,
) -> Result<Option<prost_types::Timestamp>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    let time = DateTime::parse_from_rfc3339(text).map_err(|e| {
        ApiError::bad_request(
            Some(field),
            format!("{text:?} is not an RFC 3339 date such as 2016-12-20T13:45:15Z: {e}"),
        )
    })?;
    Ok(Some(prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Fields {
        Fields::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn a_create_body_becomes_the_grpc_request() {
        let request = create_handler(fields(
            r#"{"name": "CRM", "event": "accounts.create", "phase": "after", "status": "disabled",
                "priority": 3, "http": {"url": "http://crm/api", "headers": {"X-Key": "v"}}}"#,
        ))
        .unwrap();
        assert_eq!(request.phase, pb::Phase::After as i32);
        assert_eq!(request.status, pb::HandlerStatus::Disabled as i32);
        assert_eq!(request.priority, 3);
        let Some(pb::create_handler_request::Target::Http(http)) = request.target else {
            panic!("an http target")
        };
        assert_eq!(http.headers.get("X-Key").map(String::as_str), Some("v"));
    }

    #[test]
    fn shape_errors_name_their_field() {
        let error = |text: &str| create_handler(fields(text)).unwrap_err();
        assert_eq!(
            error(r#"{"priority": "high"}"#).field.as_deref(),
            Some("priority")
        );
        assert_eq!(
            error(r#"{"phase": "during"}"#).field.as_deref(),
            Some("phase")
        );
        assert_eq!(
            error(r#"{"phase": "AFTER"}"#).field.as_deref(),
            Some("phase")
        );
        assert_eq!(
            error(r#"{"colour": "red"}"#).field.as_deref(),
            Some("colour")
        );
        assert_eq!(
            error(r#"{"http": {"url": 5}}"#).field.as_deref(),
            Some("http.url")
        );
        assert_eq!(
            error(r#"{"http": {"headers": {"a": 1}}}"#).field.as_deref(),
            Some("http.headers.a")
        );
        assert!(Fields::parse(b"[1]").is_err());
        assert!(Fields::parse(b"{").is_err());
    }

    #[test]
    fn an_update_names_only_the_fields_sent() {
        let request =
            update_handler(7, fields(r#"{"priority": 0, "script": {"path": "a.sh"}}"#)).unwrap();
        assert_eq!(request.update_mask.unwrap().paths, ["priority", "script"]);
        assert_eq!(request.handler.unwrap().id, 7);
    }

    #[test]
    fn enum_names_and_dates_are_read_strictly() {
        assert_eq!(
            handler_status("s", "archived").unwrap(),
            pb::HandlerStatus::Archived as i32
        );
        assert_eq!(handler_status("s", "").unwrap(), 0);
        assert!(handler_status("s", "ARCHIVED").is_err());
        assert!(timestamp_from("from", "yesterday").is_err());
        assert_eq!(
            timestamp_from("from", "2016-12-20T13:45:15Z")
                .unwrap()
                .unwrap()
                .seconds,
            1_482_241_515
        );
    }
}
