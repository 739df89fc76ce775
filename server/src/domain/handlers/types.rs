//! The handler types of the domain, and their conversion from stored rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::DEFAULT_TIMEOUT_MS;
use crate::db::models::HandlerRow;
use crate::domain::{
    parse_stored, DomainError, FailurePolicy, HandlerKind, HandlerStatus, OrderingPolicy, Phase,
};

/// A registered handler.
#[derive(Debug, Clone)]
pub struct Handler {
    /// Id.
    pub id: i64,
    /// Title.
    pub name: String,
    /// Event name.
    pub event: String,
    /// Phase.
    pub phase: Phase,
    /// Status.
    pub status: HandlerStatus,
    /// Run order, lower first.
    pub priority: i32,
    /// Time limit of one run.
    pub timeout_ms: u32,
    /// What runs.
    pub target: Target,
    /// BEFORE failure policy.
    pub failure_policy: FailurePolicy,
    /// Payload filter (JSON containment), if any.
    pub filter: Option<serde_json::Value>,
    /// What a given-up delivery does to the later ones of its ordering key.
    pub ordering_policy: OrderingPolicy,
    /// Handlers of one group share their per-key order; `None` = this handler alone.
    pub ordering_group: Option<String>,
    /// Most deliveries running at once across all replicas; `None` = unlimited.
    pub max_in_flight: Option<u32>,
    /// Most deliveries started per second across all replicas; `None` = unlimited.
    pub rate_per_second: Option<u32>,
    /// Why the service disabled it, if it did.
    pub disabled_reason: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// What a handler runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// POST to `url`.
    Http {
        /// http(s) URL.
        url: String,
        /// Extra request headers.
        headers: BTreeMap<String, String>,
        /// `whsec_` signing secret.
        secret: String,
    },
    /// A program in the scripts directory, by relative path.
    Script {
        /// Path relative to the scripts directory.
        path: String,
    },
}

impl Target {
    /// The kind of this target.
    pub fn kind(&self) -> HandlerKind {
        match self {
            Target::Http { .. } => HandlerKind::Http,
            Target::Script { .. } => HandlerKind::Script,
        }
    }
}

/// A target as given by a caller (no secret: the server makes it).
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// POST to `url` with `headers`.
    Http {
        /// URL.
        url: String,
        /// Extra headers.
        headers: BTreeMap<String, String>,
    },
    /// A script by relative path.
    Script {
        /// Relative path.
        path: String,
    },
}

/// A complete handler definition as given on Create.
#[derive(Debug, Clone)]
pub struct HandlerSpec {
    /// Title.
    pub name: String,
    /// Event name.
    pub event: String,
    /// Phase.
    pub phase: Phase,
    /// Initial status.
    pub status: HandlerStatus,
    /// Run order.
    pub priority: i32,
    /// Timeout; 0 = default.
    pub timeout_ms: u32,
    /// What runs.
    pub target: TargetSpec,
    /// BEFORE failure policy.
    pub failure_policy: FailurePolicy,
    /// Payload filter.
    pub filter: Option<serde_json::Value>,
    /// Ordering policy.
    pub ordering_policy: OrderingPolicy,
    /// Ordering group, if any.
    pub ordering_group: Option<String>,
    /// Concurrency limit, if any.
    pub max_in_flight: Option<u32>,
    /// Rate limit, if any.
    pub rate_per_second: Option<u32>,
}

/// The fields an Update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct HandlerPatch {
    /// New title.
    pub name: Option<String>,
    /// New event.
    pub event: Option<String>,
    /// New phase.
    pub phase: Option<Phase>,
    /// New status.
    pub status: Option<HandlerStatus>,
    /// New priority.
    pub priority: Option<i32>,
    /// New timeout.
    pub timeout_ms: Option<u32>,
    /// New target (the secret is kept when both are HTTP).
    pub target: Option<TargetSpec>,
    /// New URL of an HTTP handler, its headers kept (`http.url`).
    pub http_url: Option<String>,
    /// New headers of an HTTP handler, its URL kept (`http.headers`).
    pub http_headers: Option<BTreeMap<String, String>>,
    /// New failure policy.
    pub failure_policy: Option<FailurePolicy>,
    /// New filter (`Some(None)` removes it).
    pub filter: Option<Option<serde_json::Value>>,
    /// New ordering policy.
    pub ordering_policy: Option<OrderingPolicy>,
    /// New ordering group (`Some(None)` removes it).
    pub ordering_group: Option<Option<String>>,
    /// New concurrency limit (`Some(None)` removes it).
    pub max_in_flight: Option<Option<u32>>,
    /// New rate limit (`Some(None)` removes it).
    pub rate_per_second: Option<Option<u32>>,
}

/// List filters.
#[derive(Debug, Clone, Default)]
pub struct HandlerQuery {
    /// Event name.
    pub event: Option<String>,
    /// Phase.
    pub phase: Option<Phase>,
    /// Kind.
    pub kind: Option<HandlerKind>,
    /// Status; `None` = enabled and disabled.
    pub status: Option<HandlerStatus>,
    /// Page size; 0 = default.
    pub page_size: u32,
    /// Token of the page to read.
    pub page_token: String,
}

/// An event of the catalogue.
#[derive(Debug, Clone)]
pub struct EventType {
    /// `group.action`.
    pub name: String,
    /// Meaning.
    pub description: String,
    /// Seeded with the service.
    pub builtin: bool,
    /// The data schema (JSON Schema text, as set), if any.
    pub schema: Option<String>,
}

/// The fields UpdateEventType changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EventTypePatch {
    /// New description.
    pub description: Option<String>,
    /// New schema text (`Some(None)` removes the schema).
    pub schema: Option<Option<String>>,
}

/// Converts a stored row; fails only on a corrupt row.
pub(crate) fn handler_from_row(row: HandlerRow) -> Result<Handler, DomainError> {
    let target = match (row.kind.as_str(), row.url, row.script_path) {
        ("http", Some(url), _) => Target::Http {
            url,
            headers: serde_json::from_value(row.headers).unwrap_or_default(),
            secret: row.secret.unwrap_or_default(),
        },
        ("script", _, Some(path)) => Target::Script { path },
        (kind, _, _) => {
            return Err(DomainError::Internal(
                format!("handler {} has an inconsistent target ({kind})", row.id).into(),
            ))
        }
    };
    Ok(Handler {
        id: row.id,
        name: row.name,
        event: row.event,
        phase: parse_stored(Phase::parse, &row.phase, "handlers.phase")?,
        status: parse_stored(HandlerStatus::parse, &row.status, "handlers.status")?,
        priority: row.priority,
        timeout_ms: u32::try_from(row.timeout_ms).unwrap_or(DEFAULT_TIMEOUT_MS),
        target,
        failure_policy: parse_stored(
            FailurePolicy::parse,
            &row.failure_policy,
            "handlers.failure_policy",
        )?,
        filter: row.filter,
        ordering_policy: parse_stored(
            OrderingPolicy::parse,
            &row.ordering_policy,
            "handlers.ordering_policy",
        )?,
        ordering_group: row.ordering_group,
        max_in_flight: row.max_in_flight.and_then(|n| u32::try_from(n).ok()),
        rate_per_second: row.rate_per_second.and_then(|n| u32::try_from(n).ok()),
        disabled_reason: row.disabled_reason,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
