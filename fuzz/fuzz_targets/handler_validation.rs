//! Handler definitions: whatever a caller sends, `validate_spec` refuses it with
//! INVALID_ARGUMENT naming the field, or accepts it and then the definition keeps every
//! rule the validator promises: a trimmed, non-empty, storable name of at most
//! `MAX_NAME_CHARS` characters, priority and timeout in range (0 = the default
//! timeout), an absolute http(s) URL with a host that is not a denied literal address
//! (never the link-local metadata range) from which the executor builds its request
//! with the extra headers, at most `max_headers` valid, not reserved headers, a script
//! that resolves to an executable file inside the scripts directory, an object filter.
#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use provisioning_server::domain::handlers::{
    resolve_script, validate_spec, HandlerRules, HandlerSpec, TargetSpec, DEFAULT_TIMEOUT_MS,
    MAX_NAME_CHARS, MAX_PRIORITY, MAX_TIMEOUT_MS,
};
use provisioning_server::domain::{DomainError, FailurePolicy, HandlerStatus, OrderingPolicy, Phase};
use provisioning_server::policy::outbound::OutboundPolicy;

/// Fields a refusal may name (the message starts with one of them and a colon).
const FIELDS: &[&str] = &[
    "name",
    "event",
    "priority",
    "timeout_ms",
    "http.url",
    "http.headers",
    "ordering_group",
    "max_in_flight",
    "rate_per_second",
    "script.path",
    "filter_json",
];

const TRICKY: &[&str] = &[
    "",
    " ",
    "\0",
    "a\0",
    "\r\n",
    "a\nb",
    "\u{7f}",
    "é",
    "  padded  ",
    "..",
    ".",
    "/",
];

const HOSTS: &[&str] = &[
    "example.com",
    "127.0.0.1",
    "169.254.169.254",
    "[::1]",
    "[fd00:ec2::254]",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "0.0.0.0",
    "[::]",
    "10.0.0.1",
    "user@example.com",
    "",
    "[",
    "]",
];

const HEADER_NAMES: &[&str] = &[
    "x-a",
    "X-Custom",
    "Authorization",
    "Content-Type",
    "HOST",
    "content-length",
    "webhook-id",
    "Webhook-Signature",
    "X-Provisioning-Event",
    "bad name",
    "",
    "x:y",
];

const SCRIPT_PATHS: &[&str] = &[
    "ok.sh",
    "sub/x.sh",
    "sub//x.sh",
    "sub/../ok.sh",
    "./ok.sh",
    "ok.sh/",
    "plain.txt",
    "writable.sh",
    "escape",
    "inner",
    "sub",
    "missing.sh",
    "/bin/sh",
    "",
];

/// The scripts directory, set up once per process (one per user, reused by later runs
/// instead of leaving one behind per run): scripts that pass and every kind that must
/// not (not executable, writable by others, a symlink leading out, a directory).
fn scripts_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let dir = std::env::temp_dir().join(format!("provisioning-fuzz-scripts-{euid}"));
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).expect("scripts directory");
        let chmod = |path: PathBuf, bits: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bits)).expect("chmod");
        };
        chmod(dir.clone(), 0o755);
        chmod(sub.clone(), 0o755);
        for (name, bits) in [
            ("ok.sh", 0o755),
            ("sub/x.sh", 0o755),
            ("plain.txt", 0o644),
            ("writable.sh", 0o777),
        ] {
            std::fs::write(dir.join(name), "#!/bin/sh\n").expect("script");
            chmod(dir.join(name), bits);
        }
        for (name, to) in [("escape", "/bin/sh"), ("inner", "ok.sh")] {
            if std::fs::symlink_metadata(dir.join(name)).is_err() {
                std::os::unix::fs::symlink(to, dir.join(name)).expect("symlink");
            }
        }
        dir
    })
}

fn pick_or_any(u: &mut Unstructured, choices: &[&str]) -> Result<String> {
    match u.int_in_range(0..=3)? {
        0 => u.arbitrary(),
        1 => Ok((*u.choose(TRICKY)?).to_owned()),
        _ => Ok((*u.choose(choices)?).to_owned()),
    }
}

fn url(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 4)? {
        return u.arbitrary();
    }
    let scheme = *u.choose(&["http", "https", "HTTP", "ftp", ""])?;
    let host = pick_or_any(u, HOSTS)?;
    let port = match u.int_in_range(0..=2)? {
        0 => String::new(),
        1 => format!(":{}", u.arbitrary::<u16>()?),
        _ => format!(":{}", u.arbitrary::<String>()?),
    };
    let path = pick_or_any(u, &["/", "/hook", "/a?b=c#d", "", "/%zz"])?;
    Ok(format!("{scheme}://{host}{port}{path}"))
}

fn target(u: &mut Unstructured) -> Result<TargetSpec> {
    if u.arbitrary()? {
        let mut headers = BTreeMap::new();
        for _ in 0..u.int_in_range(0..=5)? {
            headers.insert(pick_or_any(u, HEADER_NAMES)?, pick_or_any(u, &["v"])?);
        }
        Ok(TargetSpec::Http {
            url: url(u)?,
            headers,
        })
    } else {
        Ok(TargetSpec::Script {
            path: pick_or_any(u, SCRIPT_PATHS)?,
        })
    }
}

fn spec(u: &mut Unstructured) -> Result<HandlerSpec> {
    let name = if u.ratio(1, 8)? {
        "n".repeat(u.int_in_range(MAX_NAME_CHARS - 1..=MAX_NAME_CHARS + 1)?)
    } else {
        pick_or_any(u, &["Notify CRM", " padded "])?
    };
    let filter_text = pick_or_any(
        u,
        &["{\"id\": 15}", "{}", "[1]", "null", "{\"a\": {\"b\": [1]}}"],
    )?;
    let (any_priority, any_timeout) = (u.arbitrary()?, u.arbitrary()?);
    Ok(HandlerSpec {
        name,
        event: pick_or_any(u, &["clients.create"])?,
        phase: *u.choose(&[Phase::Before, Phase::After])?,
        status: *u.choose(&[
            HandlerStatus::Enabled,
            HandlerStatus::Disabled,
            HandlerStatus::Archived,
        ])?,
        priority: *u.choose(&[
            0,
            -1,
            MAX_PRIORITY,
            MAX_PRIORITY + 1,
            i32::MIN,
            any_priority,
        ])?,
        timeout_ms: *u.choose(&[0, 1, MAX_TIMEOUT_MS, MAX_TIMEOUT_MS + 1, any_timeout])?,
        target: target(u)?,
        failure_policy: *u.choose(&[FailurePolicy::FailClosed, FailurePolicy::FailOpen])?,
        filter: serde_json::from_str(&filter_text).ok(),
        ordering_policy: *u.choose(&[OrderingPolicy::Skip, OrderingPolicy::Block])?,
        ordering_group: if u.arbitrary()? {
            Some(pick_or_any(u, &["crm", "a|b", "CRM", ""])?)
        } else {
            None
        },
        max_in_flight: u.arbitrary()?,
        rate_per_second: u.arbitrary()?,
    })
}

/// Whether `ip` is in 169.254.0.0/16 (link-local, cloud metadata), mapped or not.
fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local()),
    }
}

fn check_accepted(asked: &HandlerSpec, spec: &HandlerSpec, rules: &HandlerRules) {
    assert_eq!(spec.name, asked.name.trim());
    assert!(!spec.name.is_empty() && !spec.name.contains('\0'));
    assert!(spec.name.chars().count() <= MAX_NAME_CHARS);
    assert!(!spec.event.is_empty() && !spec.event.contains('\0'));
    assert!((0..=MAX_PRIORITY).contains(&spec.priority));
    assert!((1..=MAX_TIMEOUT_MS).contains(&spec.timeout_ms));
    if asked.timeout_ms == 0 {
        assert_eq!(spec.timeout_ms, DEFAULT_TIMEOUT_MS);
    }
    if let Some(filter) = &spec.filter {
        assert!(filter.is_object(), "{filter}");
    }
    // What the database's CHECKs take.
    assert!(spec.max_in_flight.is_none_or(|n| (1..=10_000).contains(&n)));
    assert!(spec.rate_per_second.is_none_or(|n| (1..=100_000).contains(&n)));
    if let Some(group) = &spec.ordering_group {
        // `|` separates the group from the key in a delivery's ordering slot.
        assert!(!group.is_empty() && group.len() <= 100 && !group.contains('|'), "{group:?}");
    }
    match &spec.target {
        TargetSpec::Http { url, headers } => {
            let uri: http::Uri = url.parse().expect("an accepted URL parses");
            assert!(matches!(uri.scheme_str(), Some("http" | "https")), "{url}");
            let host = uri.host().expect("an accepted URL has a host");
            assert!(!host.is_empty(), "{url}");
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = literal.parse::<IpAddr>() {
                assert!(rules.outbound.check(ip).is_ok(), "{url}");
                assert!(!link_local(ip), "{url}");
            }
            assert!(headers.len() <= rules.max_headers);
            // What the HTTP executor builds from it at run time.
            let mut request = http::Request::post(url.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("x-provisioning-event", "clients.create");
            for (name, value) in headers {
                let lower = name.to_ascii_lowercase();
                assert!(
                    !lower.starts_with("webhook-")
                        && !lower.starts_with("x-provisioning-")
                        && !["content-type", "host", "content-length"].contains(&lower.as_str()),
                    "{name:?} is the service's"
                );
                request = request.header(name.as_str(), value.as_str());
            }
            if let Err(error) = request.body(()) {
                panic!("accepted {url:?} {headers:?}, but the request fails: {error}");
            }
        }
        TargetSpec::Script { path } => {
            let root = scripts_dir().canonicalize().expect("scripts directory");
            let full = resolve_script(scripts_dir(), path, &rules.trusted_owners)
                .expect("an accepted script resolves");
            assert!(full.starts_with(&root), "{full:?}");
            let meta = std::fs::metadata(&full).expect("the script exists");
            assert!(meta.is_file() && meta.permissions().mode() & 0o111 != 0);
            assert!(
                meta.permissions().mode() & 0o022 == 0,
                "{full:?} is writable"
            );
            assert!(rules.trusted_owners.contains(&meta.uid()), "{full:?}");
        }
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let rules = HandlerRules {
        scripts_dir: scripts_dir().clone(),
        trusted_owners: vec![0, euid],
        outbound: OutboundPolicy::default(),
        max_headers: u.int_in_range(0..=4)?,
        max_handlers_per_event: 10,
    };
    let asked = spec(u)?;
    let mut spec = asked.clone();
    match validate_spec(&mut spec, &rules) {
        Ok(()) => check_accepted(&asked, &spec, &rules),
        Err(DomainError::InvalidArgument(message)) => assert!(
            FIELDS
                .iter()
                .any(|field| message.starts_with(&format!("{field}: "))),
            "{message}"
        ),
        Err(other) => panic!("refused with {other:?}, not INVALID_ARGUMENT"),
    }
    Ok(())
}

fuzz_target!(|bytes: &[u8]| {
    // Running out of bytes ends the input early; nothing is left to check then.
    run(&mut Unstructured::new(bytes)).unwrap_or(());
});
