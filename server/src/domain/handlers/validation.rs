//! Validation of handler definitions and event-type names: every message starts with
//! the offending field's name, so callers can point at it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::{HandlerSpec, TargetSpec};
use crate::domain::{text, DomainError};

/// Longest handler name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest priority (lower runs first).
pub const MAX_PRIORITY: i32 = 1_000_000;
/// Longest handler timeout.
pub const MAX_TIMEOUT_MS: u32 = 300_000;
/// Timeout used when none is given.
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;
/// `group.action`: lowercase letters, digits, `_`; one dot; at most 100 characters.
pub fn validate_event_type_name(name: &str) -> Result<(), DomainError> {
    let valid_part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let ok = name.len() <= 100
        && matches!(name.split_once('.'), Some((g, a)) if valid_part(g) && valid_part(a));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "name",
            format!("{name:?} is not a valid event name: expected group.action (lowercase letters, digits, _), at most 100 characters"),
        ))
    }
}

/// Checks every field of a definition, normalising the name (trimmed) and the default
/// timeout. Messages start with the offending field's name.
pub(super) fn validate_spec(spec: &mut HandlerSpec, scripts_dir: &Path) -> Result<(), DomainError> {
    spec.name = spec.name.trim().to_owned();
    if spec.name.is_empty() {
        return Err(DomainError::invalid("name", "must not be empty"));
    }
    if spec.name.chars().count() > MAX_NAME_CHARS {
        return Err(DomainError::invalid(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    text::require_storable("name", &spec.name)?;
    if spec.event.is_empty() {
        return Err(DomainError::invalid("event", "must not be empty"));
    }
    text::require_storable("event", &spec.event)?;
    if !(0..=MAX_PRIORITY).contains(&spec.priority) {
        return Err(DomainError::invalid(
            "priority",
            format!(
                "must be between 0 and {MAX_PRIORITY}, got {}",
                spec.priority
            ),
        ));
    }
    if spec.timeout_ms == 0 {
        spec.timeout_ms = DEFAULT_TIMEOUT_MS;
    }
    if spec.timeout_ms > MAX_TIMEOUT_MS {
        return Err(DomainError::invalid(
            "timeout_ms",
            format!(
                "must be between 1 and {MAX_TIMEOUT_MS}, got {}",
                spec.timeout_ms
            ),
        ));
    }
    match &spec.target {
        TargetSpec::Http { url, headers } => {
            validate_url(url)?;
            validate_headers(headers)?;
        }
        TargetSpec::Script { path } => {
            resolve_script(scripts_dir, path)
                .map_err(|e| DomainError::invalid("script.path", e))?;
        }
    }
    if let Some(filter) = &spec.filter {
        if !filter.is_object() {
            return Err(DomainError::invalid("filter_json", "must be a JSON object"));
        }
    }
    Ok(())
}

/// Accepts absolute http and https URLs with a host.
pub fn validate_url(url: &str) -> Result<(), DomainError> {
    let uri: http::Uri = url.parse().map_err(|e| {
        DomainError::invalid("http.url", format!("{url:?} is not a valid URL: {e}"))
    })?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(other) => {
            return Err(DomainError::invalid(
                "http.url",
                format!("scheme {other:?} is not allowed: use http or https"),
            ))
        }
        None => {
            return Err(DomainError::invalid(
                "http.url",
                format!("{url:?} is not an absolute http(s) URL"),
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(DomainError::invalid(
            "http.url",
            format!("{url:?} has no host"),
        ));
    }
    Ok(())
}

fn validate_headers(headers: &BTreeMap<String, String>) -> Result<(), DomainError> {
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(DomainError::invalid(
                "http.headers",
                format!("{name:?} is not a valid header name"),
            ));
        }
        if lower.starts_with("webhook-")
            || lower.starts_with("x-provisioning-")
            || lower == "content-type"
            || lower == "host"
            || lower == "content-length"
        {
            return Err(DomainError::invalid(
                "http.headers",
                format!("{name:?} is set by the service and cannot be overridden"),
            ));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(DomainError::invalid(
                "http.headers",
                format!("value of {name:?} is not a valid header value"),
            ));
        }
    }
    Ok(())
}

/// Resolves a script path relative to `scripts_dir` and checks that it names an
/// executable regular file inside it. Symlinks are followed and must stay inside.
/// Called on Create/Update and again before every run (the file may have changed).
pub fn resolve_script(scripts_dir: &Path, path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    let relative = Path::new(path);
    if relative.is_absolute() {
        return Err(format!(
            "{path:?} is absolute: give a path relative to the scripts directory"
        ));
    }
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("{path:?} must not contain '..' or '.' components"));
    }
    let root = scripts_dir.canonicalize().map_err(|e| {
        format!(
            "scripts directory {} is not usable: {e}",
            scripts_dir.display()
        )
    })?;
    let full = root
        .join(relative)
        .canonicalize()
        .map_err(|e| format!("{path:?} not found in the scripts directory: {e}"))?;
    if !full.starts_with(&root) {
        return Err(format!("{path:?} leads outside the scripts directory"));
    }
    let meta = std::fs::metadata(&full).map_err(|e| format!("{path:?}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path:?} is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{path:?} is not executable"));
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_http_or_https_and_a_host() {
        assert!(validate_url("http://127.0.0.1:5000/api").is_ok());
        assert!(validate_url("https://crm.example/hook").is_ok());
        for bad in [
            "ftp://x/y",
            "crm.net/client-add",
            "http://",
            "not a url",
            "/relative",
        ] {
            let err = validate_url(bad).unwrap_err().to_string();
            assert!(err.starts_with("http.url:"), "{bad}: {err}");
        }
    }

    #[test]
    fn event_type_names_are_group_dot_action() {
        assert!(validate_event_type_name("clients.create").is_ok());
        assert!(validate_event_type_name("email_rates_manager.import").is_ok());
        for bad in ["clients", "Clients.create", "a.b.c", ".x", "x.", "a-b.c"] {
            assert!(validate_event_type_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn script_paths_stay_inside_the_directory() {
        let dir = std::env::temp_dir().join(format!("scripts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("ok.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.join("plain.txt");
        std::fs::write(&plain, "x").unwrap();
        let link = dir.join("escape");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/bin/sh", &link).unwrap();

        assert!(resolve_script(&dir, "ok.sh").is_ok());
        assert!(resolve_script(&dir, "/bin/sh")
            .unwrap_err()
            .contains("absolute"));
        assert!(resolve_script(&dir, "../x").unwrap_err().contains(".."));
        assert!(resolve_script(&dir, "plain.txt")
            .unwrap_err()
            .contains("not executable"));
        assert!(resolve_script(&dir, "escape")
            .unwrap_err()
            .contains("outside"));
        assert!(resolve_script(&dir, "missing.sh")
            .unwrap_err()
            .contains("not found"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
