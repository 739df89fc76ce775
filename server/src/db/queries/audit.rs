//! Queries on the audit trail of handler and event-type changes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::db::models::{AuditRow, NewAuditRow};
use crate::db::schema::handler_audit;

/// Records one change (in the caller's transaction).
pub fn insert(conn: &mut PgConnection, row: &NewAuditRow) -> QueryResult<usize> {
    diesel::insert_into(handler_audit::table)
        .values(row)
        .execute(conn)
}

/// Up to `limit` rows, newest first, older than `before` (keyset on `(created_at, id)`),
/// of one handler when `handler_id` is set.
pub fn list_page(
    conn: &mut PgConnection,
    handler_id: Option<i64>,
    before: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> QueryResult<Vec<AuditRow>> {
    let mut query = handler_audit::table
        .select(AuditRow::as_select())
        .order((handler_audit::created_at.desc(), handler_audit::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(id) = handler_id {
        query = query.filter(handler_audit::handler_id.eq(id));
    }
    if let Some((at, id)) = before {
        query = query.filter(
            handler_audit::created_at
                .lt(at)
                .or(handler_audit::created_at
                    .eq(at)
                    .and(handler_audit::id.lt(id))),
        );
    }
    query.load(conn)
}
