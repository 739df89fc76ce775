//! Who calls, and what they may do.
//!
//! Credentials become a typed [`Caller`] once, at the edge: the tower layer of
//! [`layer`] (wired in `lib.rs`) reads the `authorization: Bearer` metadata (or, for mTLS,
//! the [`PeerSubjects`] extension the TLS layer inserts), resolves the caller from the
//! [`identities::Identities`] of the tokens file, checks the method against the role
//! table of [`required_access`] and puts the `Caller` in the request's extensions. RPC
//! methods never see a token; code that needs to know who acts (audit, event patterns)
//! receives the `Caller`.
//!
//! Every decision here is a pure function with unit tests: the role × method table,
//! the event-pattern check, the bearer-header parsing, the token and subject lookups
//! (in [`identities`]). The layer and the reloader ([`reload`]) only call them.
//!
//! Without a tokens file the server runs in development mode: every caller is
//! [`Caller::development`] (every role, named `anonymous`), and `run` refuses a
//! non-loopback address unless `--insecure-no-auth` is given.

pub mod identities;
pub mod layer;
pub mod reload;

use std::fmt;

/// What a caller may do. A caller may hold several roles.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Handler and event-type changes, handler test runs, Retry, RetryFailed, Purge; and
    /// all a reader may.
    Admin,
    /// Emit, EmitBatch, EmitStream (for the events its patterns allow).
    Emitter,
    /// Execution logs, stats, handlers (secrets and header values masked), event types,
    /// the audit trail.
    Reader,
}

impl Role {
    /// The name used in the tokens file and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Emitter => "emitter",
            Role::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of one request, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity's name from the tokens file (recorded in the audit trail and with
    /// emitted events); `anonymous` in development mode.
    pub name: String,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Events it may emit: `group.action`, `group.*` or `*`. Empty = every event.
    pub event_patterns: Vec<String>,
}

/// The name of every caller in development mode.
pub const ANONYMOUS: &str = "anonymous";

impl Caller {
    /// The caller of development mode (no tokens file): every role, every event.
    pub fn development() -> Caller {
        Caller {
            name: ANONYMOUS.to_owned(),
            roles: vec![Role::Admin, Role::Emitter, Role::Reader],
            event_patterns: Vec::new(),
        }
    }

    /// Whether it holds `role` (an admin holds reader's rights too).
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || (role == Role::Reader && self.roles.contains(&Role::Admin))
    }

    /// Whether it may see handler header values (admins only).
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }

    /// Whether its event patterns allow emitting `event`.
    pub fn may_emit(&self, event: &str) -> bool {
        self.event_patterns.is_empty()
            || self
                .event_patterns
                .iter()
                .any(|pattern| pattern_matches(pattern, event))
    }

    /// The PERMISSION_DENIED text for an event outside its patterns.
    pub fn event_denied_message(&self, event: &str) -> String {
        format!(
            "{:?} may not emit {event:?}: its events are {}",
            self.name,
            self.event_patterns.join(", ")
        )
    }
}

/// `*` matches every event, `group.*` every event of the group, anything else itself.
pub fn pattern_matches(pattern: &str, event: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event.starts_with(prefix),
        None => pattern == event,
    }
}

/// Whether `pattern` is one [`pattern_matches`] understands: `*`, `group.*` or a name
/// without `*`.
pub fn valid_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let name = pattern.strip_suffix(".*").unwrap_or(pattern);
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// The client certificate's subject names (CN and DNS SANs), inserted into the request
/// extensions by the TLS layer when the client presented a verified certificate. Used
/// when the request carries no bearer token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSubjects(pub Vec<String>);

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (health, reflection).
    Open,
    /// A caller holding this role.
    Role(Role),
}

/// The role × method table. `path` is the HTTP/2 path, `/package.Service/Method`. An
/// unknown method of our services needs admin (tonic then answers UNIMPLEMENTED); any
/// other service (health, reflection) is open.
pub fn required_access(path: &str) -> Access {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return Access::Role(Role::Admin);
    };
    match (service, method) {
        ("provisioning.v1.HandlerService", "Get" | "List" | "ListEventTypes" | "ListAudit") => {
            Access::Role(Role::Reader)
        }
        ("provisioning.v1.EventService", "Emit" | "EmitBatch" | "EmitStream") => {
            Access::Role(Role::Emitter)
        }
        ("provisioning.v1.ExecutionLogService", "Get" | "Search" | "Tail" | "Stats") => {
            Access::Role(Role::Reader)
        }
        (service, _) if service.starts_with("provisioning.") => Access::Role(Role::Admin),
        ("grpc.health.v1.Health", _)
        | ("grpc.reflection.v1.ServerReflection", _)
        | ("grpc.reflection.v1alpha.ServerReflection", _) => Access::Open,
        _ => Access::Role(Role::Admin),
    }
}

/// Why a request is refused. Messages never contain the presented token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable credentials (UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// Known caller, wrong role (PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
}

/// Checks that `caller` may call the method at `path` needing `access`.
pub fn authorize(caller: &Caller, access: Access, path: &str) -> Result<(), AuthError> {
    match access {
        Access::Open => Ok(()),
        Access::Role(role) if caller.has(role) => Ok(()),
        Access::Role(role) => Err(AuthError::PermissionDenied(format!(
            "{:?} (roles: {}) may not call {}: it needs the {role} role",
            caller.name,
            if caller.roles.is_empty() {
                "none".to_owned()
            } else {
                caller
                    .roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            path.trim_start_matches('/'),
        ))),
    }
}

/// The token of an `authorization` value: `None` when absent; UNAUTHENTICATED when it
/// is not `Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(value: Option<&[u8]>) -> Result<Option<&str>, AuthError> {
    let Some(value) = value else { return Ok(None) };
    let malformed = || {
        AuthError::Unauthenticated(
            "malformed authorization metadata: expected `Bearer <token>`".to_owned(),
        )
    };
    let value = std::str::from_utf8(value).map_err(|_| malformed())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    Ok(Some(token))
}

/// The whole decision for one request: `Ok(None)` for an open method, `Ok(Some(caller))`
/// for an authorized one. `identities` is `None` in development mode.
pub fn decide(
    identities: Option<&identities::Identities>,
    path: &str,
    authorization: Option<&[u8]>,
    peer: Option<&PeerSubjects>,
) -> Result<Option<Caller>, AuthError> {
    let access = required_access(path);
    if access == Access::Open {
        return Ok(None);
    }
    let caller = identify(identities, authorization, peer)?;
    authorize(&caller, access, path)?;
    Ok(Some(caller))
}

/// Who presents these credentials, whatever they may call: the bearer token first, then
/// the client certificate's names. `identities` is `None` in development mode (every
/// caller is [`Caller::development`]).
pub fn identify(
    identities: Option<&identities::Identities>,
    authorization: Option<&[u8]>,
    peer: Option<&PeerSubjects>,
) -> Result<Caller, AuthError> {
    let caller = match identities {
        None => Caller::development(),
        Some(identities) => match bearer_token(authorization)? {
            Some(token) => identities.by_token(token).cloned().ok_or_else(|| {
                AuthError::Unauthenticated(
                    "invalid bearer token: it matches no entry of the server's tokens file"
                        .to_owned(),
                )
            })?,
            None => match peer {
                Some(PeerSubjects(subjects)) => identities
                    .by_subjects(subjects)
                    .cloned()
                    .ok_or_else(|| {
                        AuthError::Unauthenticated(format!(
                            "the client certificate ({}) matches no [[certificate]] entry and no bearer token was sent",
                            subjects.join(", ")
                        ))
                    })?,
                None => {
                    return Err(AuthError::Unauthenticated(
                        "missing credentials: send `authorization: Bearer <token>` metadata"
                            .to_owned(),
                    ))
                }
            },
        },
    };
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[Role], patterns: &[&str]) -> Caller {
        Caller {
            name: "t".into(),
            roles: roles.to_vec(),
            event_patterns: patterns.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_role_table_covers_every_method() {
        use Access::*;
        let table = [
            ("HandlerService/Create", Role(super::Role::Admin)),
            ("HandlerService/Update", Role(super::Role::Admin)),
            ("HandlerService/SetStatus", Role(super::Role::Admin)),
            ("HandlerService/Delete", Role(super::Role::Admin)),
            ("HandlerService/RotateSecret", Role(super::Role::Admin)),
            ("HandlerService/CreateEventType", Role(super::Role::Admin)),
            ("HandlerService/UpdateEventType", Role(super::Role::Admin)),
            ("HandlerService/Test", Role(super::Role::Admin)),
            ("HandlerService/Get", Role(super::Role::Reader)),
            ("HandlerService/List", Role(super::Role::Reader)),
            ("HandlerService/ListEventTypes", Role(super::Role::Reader)),
            ("HandlerService/ListAudit", Role(super::Role::Reader)),
            ("EventService/Emit", Role(super::Role::Emitter)),
            ("EventService/EmitBatch", Role(super::Role::Emitter)),
            ("EventService/EmitStream", Role(super::Role::Emitter)),
            ("ExecutionLogService/Get", Role(super::Role::Reader)),
            ("ExecutionLogService/Search", Role(super::Role::Reader)),
            ("ExecutionLogService/Tail", Role(super::Role::Reader)),
            ("ExecutionLogService/Stats", Role(super::Role::Reader)),
            ("ExecutionLogService/Retry", Role(super::Role::Admin)),
            ("ExecutionLogService/RetryFailed", Role(super::Role::Admin)),
            ("ExecutionLogService/Skip", Role(super::Role::Admin)),
            ("ExecutionLogService/Purge", Role(super::Role::Admin)),
            ("ExecutionLogService/NewThing", Role(super::Role::Admin)),
        ];
        for (method, access) in table {
            assert_eq!(
                required_access(&format!("/provisioning.v1.{method}")),
                access,
                "{method}"
            );
        }
        assert_eq!(required_access("/grpc.health.v1.Health/Check"), Open);
        assert_eq!(required_access("/grpc.health.v1.Health/Watch"), Open);
        assert_eq!(
            required_access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Open
        );
        assert_eq!(
            required_access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Open
        );
        assert_eq!(
            required_access("/other.Service/X"),
            Role(super::Role::Admin)
        );
        assert_eq!(required_access("garbage"), Role(super::Role::Admin));
    }

    #[test]
    fn admins_read_but_do_not_emit_and_readers_do_not_write() {
        let admin = caller(&[Role::Admin], &[]);
        assert!(admin.has(Role::Reader) && admin.has(Role::Admin) && !admin.has(Role::Emitter));
        let reader = caller(&[Role::Reader], &[]);
        assert!(!reader.has(Role::Admin) && !reader.is_admin());
        let both = caller(&[Role::Emitter, Role::Reader], &[]);
        assert!(both.has(Role::Emitter) && both.has(Role::Reader));
        let denied = authorize(
            &reader,
            Access::Role(Role::Admin),
            "/provisioning.v1.HandlerService/Create",
        )
        .unwrap_err();
        assert_eq!(
            denied,
            AuthError::PermissionDenied(
                "\"t\" (roles: reader) may not call provisioning.v1.HandlerService/Create: it needs the admin role".into()
            )
        );
    }

    #[test]
    fn event_patterns_match_groups_and_exact_names() {
        let billing = caller(&[Role::Emitter], &["clients.*", "accounts.create"]);
        assert!(billing.may_emit("clients.create"));
        assert!(billing.may_emit("clients.delete"));
        assert!(billing.may_emit("accounts.create"));
        assert!(!billing.may_emit("accounts.delete"));
        assert!(!billing.may_emit("clientsx.create"));
        assert!(caller(&[Role::Emitter], &[]).may_emit("anything.at_all"));
        assert!(caller(&[Role::Emitter], &["*"]).may_emit("a.b"));
        assert!(valid_pattern("clients.*") && valid_pattern("*") && valid_pattern("a.b"));
        assert!(!valid_pattern("cl*ents") && !valid_pattern("") && !valid_pattern("A.b"));
    }

    #[test]
    fn bearer_values_parse_strictly() {
        assert_eq!(bearer_token(None), Ok(None));
        assert_eq!(bearer_token(Some(b"Bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer_token(Some(b"bearer  abc ")), Ok(Some("abc")));
        for bad in [
            &b"Basic abc"[..],
            b"Bearer",
            b"Bearer ",
            b"abc",
            b"\xff\xfe",
        ] {
            let err = bearer_token(Some(bad)).unwrap_err();
            assert!(matches!(err, AuthError::Unauthenticated(_)), "{bad:?}");
        }
    }

    #[test]
    fn decisions_never_echo_the_token_and_open_methods_need_nothing() {
        let identities = identities::Identities::parse(&format!(
            "[[token]]\nname = \"r\"\nroles = [\"reader\"]\nsha256 = \"{}\"\n\n[[certificate]]\nname = \"crm\"\nsubject = \"crm.internal\"\nroles = [\"admin\"]\n",
            identities::sha256_hex("good-token")
        ))
        .unwrap();
        let ids = Some(&identities);
        let logs = "/provisioning.v1.ExecutionLogService/Get";
        assert_eq!(
            decide(ids, "/grpc.health.v1.Health/Check", None, None),
            Ok(None)
        );
        assert!(matches!(
            decide(ids, logs, None, None),
            Err(AuthError::Unauthenticated(_))
        ));
        let wrong = decide(ids, logs, Some(b"Bearer secret-wrong-token"), None).unwrap_err();
        assert!(matches!(wrong, AuthError::Unauthenticated(_)));
        assert!(!wrong.to_string().contains("secret-wrong-token"));
        let reader = decide(ids, logs, Some(b"Bearer good-token"), None)
            .unwrap()
            .unwrap();
        assert_eq!(reader.name, "r");
        let denied = decide(
            ids,
            "/provisioning.v1.ExecutionLogService/Purge",
            Some(b"Bearer good-token"),
            None,
        )
        .unwrap_err();
        assert!(matches!(denied, AuthError::PermissionDenied(_)));
        assert!(!denied.to_string().contains("good-token"));
        // mTLS: the certificate's names are used only when no token is sent.
        let peer = PeerSubjects(vec!["other".into(), "crm.internal".into()]);
        let crm = decide(ids, logs, None, Some(&peer)).unwrap().unwrap();
        assert_eq!(crm.name, "crm");
        let unknown = PeerSubjects(vec!["nobody.internal".into()]);
        assert!(matches!(
            decide(ids, logs, None, Some(&unknown)),
            Err(AuthError::Unauthenticated(_))
        ));
        // Development mode: everyone is the anonymous admin-emitter-reader.
        let dev = decide(None, "/provisioning.v1.HandlerService/Create", None, None).unwrap();
        assert_eq!(dev, Some(Caller::development()));
    }
}
