//! Validation of handler definitions and event-type names: every message starts with
//! the offending field's name, so callers can point at it.
//!
//! The security rules come from `policy` (the same functions the executors apply at run
//! time): a URL whose host is a literal address the outbound policy denies, and a script
//! that is not safely owned, are refused here already.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::{HandlerSpec, TargetSpec};
use crate::domain::{text, DomainError};
use crate::policy::outbound::OutboundPolicy;
use crate::policy::script_file::check_entry;

/// What a handler definition is checked against, from the configuration.
#[derive(Debug, Clone)]
pub struct HandlerRules {
    /// Directory script handlers must live in.
    pub scripts_dir: PathBuf,
    /// Uids that may own scripts and the directories leading to them.
    pub trusted_owners: Vec<u32>,
    /// Addresses HTTP handlers may reach.
    pub outbound: OutboundPolicy,
    /// Most extra headers per HTTP handler.
    pub max_headers: usize,
    /// Most handlers (not archived) per event.
    pub max_handlers_per_event: u32,
}

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
/// timeout. Messages start with the offending field's name. Public for the fuzz target
/// `handler_validation`, which checks that what it accepts keeps these rules.
pub fn validate_spec(spec: &mut HandlerSpec, rules: &HandlerRules) -> Result<(), DomainError> {
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
            validate_url(url, &rules.outbound)?;
            validate_headers(headers, rules.max_headers)?;
        }
        TargetSpec::Script { path } => {
            resolve_script(&rules.scripts_dir, path, &rules.trusted_owners)
                .map_err(|e| DomainError::invalid("script.path", e))?;
        }
    }
    if let Some(filter) = &spec.filter {
        if !filter.is_object() {
            return Err(DomainError::invalid("filter_json", "must be a JSON object"));
        }
    }
    if let Some(group) = &spec.ordering_group {
        validate_ordering_group(group)?;
    }
    for (field, limit, max) in [
        ("max_in_flight", &mut spec.max_in_flight, MAX_IN_FLIGHT),
        (
            "rate_per_second",
            &mut spec.rate_per_second,
            MAX_RATE_PER_SECOND,
        ),
    ] {
        // 0 means no limit, as in the API.
        if *limit == Some(0) {
            *limit = None;
        }
        if limit.is_some_and(|n| n > max) {
            return Err(DomainError::invalid(
                field,
                format!(
                    "must be at most {max} (0 = unlimited), got {}",
                    limit.unwrap_or(0)
                ),
            ));
        }
    }
    Ok(())
}

/// Highest `max_in_flight`.
pub const MAX_IN_FLIGHT: u32 = 10_000;
/// Highest `rate_per_second`.
pub const MAX_RATE_PER_SECOND: u32 = 100_000;

/// Longest ordering group name.
pub const MAX_ORDERING_GROUP_CHARS: usize = 100;

/// Ordering groups are short names: lowercase letters, digits, `_`, `-` and `.` (no `|`,
/// which separates the group from the key in a delivery's ordering slot).
fn validate_ordering_group(group: &str) -> Result<(), DomainError> {
    let fits = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c);
    if group.is_empty() || group.len() > MAX_ORDERING_GROUP_CHARS || !group.chars().all(fits) {
        return Err(DomainError::invalid(
            "ordering_group",
            format!(
                "{group:?} is not a valid group: 1 to {MAX_ORDERING_GROUP_CHARS} of lowercase \
                 letters, digits, `_`, `-` and `.`"
            ),
        ));
    }
    Ok(())
}

/// Accepts absolute http and https URLs with a host that is not a literal address the
/// outbound policy denies (names are judged at connect time, by what they resolve to).
pub fn validate_url(url: &str, policy: &OutboundPolicy) -> Result<(), DomainError> {
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
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(DomainError::invalid(
            "http.url",
            format!("{url:?} has no host"),
        ));
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        policy
            .check(ip)
            .map_err(|denied| DomainError::invalid("http.url", denied))?;
    }
    Ok(())
}

fn validate_headers(
    headers: &BTreeMap<String, String>,
    max_headers: usize,
) -> Result<(), DomainError> {
    if headers.len() > max_headers {
        return Err(DomainError::invalid(
            "http.headers",
            format!(
                "{} headers given, at most {max_headers} are allowed",
                headers.len()
            ),
        ));
    }
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
/// executable regular file inside it. Symlinks are followed and must stay inside. The
/// file and every directory from `scripts_dir` down to it must be owned by one of
/// `trusted_owners` and not writable by group or others (`policy::script_file`).
/// Called on Create/Update and again before every run (the file may have changed).
pub fn resolve_script(
    scripts_dir: &Path,
    path: &str,
    trusted_owners: &[u32],
) -> Result<PathBuf, String> {
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
    // The scripts directory itself, each directory below it, then the file.
    let mut entry = root.clone();
    let below = full.strip_prefix(&root).unwrap_or(Path::new(""));
    let mut entries = vec![root.clone()];
    for component in below.components() {
        entry.push(component);
        entries.push(entry.clone());
    }
    for entry in entries {
        let meta = std::fs::metadata(&entry).map_err(|e| format!("{}: {e}", entry.display()))?;
        check_entry(&entry, meta.uid(), meta.mode(), trusted_owners)?;
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_http_or_https_and_a_host() {
        let policy = OutboundPolicy::default();
        assert!(validate_url("http://127.0.0.1:5000/api", &policy).is_ok());
        assert!(validate_url("https://crm.example/hook", &policy).is_ok());
        for bad in [
            "ftp://x/y",
            "crm.net/client-add",
            "http://",
            "not a url",
            "/relative",
        ] {
            let err = validate_url(bad, &policy).unwrap_err().to_string();
            assert!(err.starts_with("http.url:"), "{bad}: {err}");
        }
    }

    #[test]
    fn urls_with_a_denied_literal_address_are_refused() {
        let policy = OutboundPolicy::default();
        for (url, range) in [
            ("http://169.254.169.254/latest/meta-data", "169.254.0.0/16"),
            ("http://[fd00:ec2::254]/", "fd00:ec2::254/128"),
            ("http://[::ffff:169.254.169.254]:80/", "169.254.0.0/16"),
            ("https://0.0.0.0:8443/", "0.0.0.0/8"),
        ] {
            let err = validate_url(url, &policy).unwrap_err().to_string();
            assert!(
                err.starts_with("http.url: outbound policy denies"),
                "{url}: {err}"
            );
            assert!(err.contains(range), "{url}: {err}");
        }
        assert!(validate_url("http://[::1]:5000/", &policy).is_ok());
        // Names are judged when connecting, by the addresses they resolve to.
        assert!(validate_url("http://metadata.google.internal/", &policy).is_ok());
    }

    #[test]
    fn headers_are_limited_in_number() {
        let headers: BTreeMap<String, String> = (0..3)
            .map(|i| (format!("x-h{i}"), "v".to_owned()))
            .collect();
        assert!(validate_headers(&headers, 3).is_ok());
        let err = validate_headers(&headers, 2).unwrap_err().to_string();
        assert!(
            err.starts_with("http.headers: 3 headers given, at most 2"),
            "{err}"
        );
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

        let trusted = [0, unsafe { libc::geteuid() }];
        let resolve = |path: &str| resolve_script(&dir, path, &trusted);
        assert!(resolve("ok.sh").is_ok());
        assert!(resolve("/bin/sh").unwrap_err().contains("absolute"));
        assert!(resolve("../x").unwrap_err().contains(".."));
        assert!(resolve("plain.txt").unwrap_err().contains("not executable"));
        assert!(resolve("escape").unwrap_err().contains("outside"));
        assert!(resolve("missing.sh").unwrap_err().contains("not found"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writable_scripts_and_directories_are_refused() {
        let dir = std::env::temp_dir().join(format!("scripts-perm-{}", std::process::id()));
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = sub.join("x.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let trusted = [0, unsafe { libc::geteuid() }];
        let chmod = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        chmod(&script, 0o755);
        assert!(resolve_script(&dir, "sub/x.sh", &trusted).is_ok());
        chmod(&script, 0o777);
        let err = resolve_script(&dir, "sub/x.sh", &trusted).unwrap_err();
        assert!(
            err.contains("x.sh is writable by group and others"),
            "{err}"
        );
        chmod(&script, 0o755);
        chmod(&sub, 0o775);
        let err = resolve_script(&dir, "sub/x.sh", &trusted).unwrap_err();
        assert!(err.contains("sub is writable by its group"), "{err}");
        chmod(&sub, 0o755);
        chmod(&dir, 0o757);
        let err = resolve_script(&dir, "sub/x.sh", &trusted).unwrap_err();
        assert!(err.contains("writable by others"), "{err}");
        chmod(&dir, 0o755);
        let err = resolve_script(&dir, "sub/x.sh", &[4_000_000]).unwrap_err();
        assert!(err.contains("is owned by uid"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
