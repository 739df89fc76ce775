//! Hand-written SQL that PostgreSQL parses and plans once per connection.
//!
//! Diesel's `sql_query` is never cached as a prepared statement, so a statement run on
//! every event (ingest, claim, log write) was parsed and planned on every call: about a
//! fifth of the database's CPU under load. [`prepared`] takes the same SQL with `$n`
//! placeholders and the same `.bind::<Type, _>(value)` calls, and lets the connection's
//! statement cache keep it prepared, keyed by the SQL text. Use it for fixed SQL text
//! only: SQL assembled at run time would fill the cache.
//!
//! The opposite case is [`PlannedPerCall`]: Diesel keeps query-builder queries prepared
//! too, and after a few runs PostgreSQL may switch a prepared statement to a generic
//! plan, made without the bound values. For the execution-log searches that plan
//! prunes the daily partitions only at run time and ignores how selective each value
//! is: six times slower than a plan made for the values.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};

/// A raw SQL statement with its bind values, prepared once per connection.
#[must_use = "a statement does nothing until it is run"]
pub struct Prepared<B> {
    sql: &'static str,
    binds: B,
}

/// A statement of fixed SQL text; `$1`, `$2`, … are the values bound next, in order.
/// The text must not contain `$` followed by a digit anywhere else (in a literal).
pub fn prepared(sql: &'static str) -> Prepared<()> {
    Prepared { sql, binds: () }
}

impl<B: BindList> Prepared<B> {
    /// Binds the value of the next placeholder.
    pub fn bind<ST, T>(self, value: T) -> Prepared<(B, Bind<ST, T>)> {
        Prepared {
            sql: self.sql,
            binds: (
                self.binds,
                Bind {
                    value,
                    sql_type: PhantomData,
                },
            ),
        }
    }
}

/// One bound value of SQL type `ST`.
pub struct Bind<ST, T> {
    value: T,
    sql_type: PhantomData<ST>,
}

/// The bound values of a statement, addressed by placeholder number (1-based).
pub trait BindList {
    /// How many values are bound.
    const LEN: usize;
    /// Pushes value `n` as a bind parameter.
    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl BindList for () {
    const LEN: usize = 0;
    fn push<'b>(&'b self, n: usize, _out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Err(diesel::result::Error::QueryBuilderError(
            format!("placeholder ${n} has no bound value").into(),
        ))
    }
}

impl<B, ST, T> BindList for (B, Bind<ST, T>)
where
    B: BindList,
    Pg: HasSqlType<ST>,
    T: ToSql<ST, Pg>,
{
    const LEN: usize = B::LEN + 1;
    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if n == Self::LEN {
            out.push_bind_param::<ST, T>(&self.1.value)
        } else {
            self.0.push(n, out)
        }
    }
}

impl<B: BindList> QueryFragment<Pg> for Prepared<B> {
    /// Emits the text between placeholders and each placeholder's value as a bind
    /// parameter, so the same walk yields both the SQL and its values.
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - at - 1);
            if digits == 0 {
                out.push_sql(&rest[..=at]);
                rest = &rest[at + 1..];
                continue;
            }
            out.push_sql(&rest[..at]);
            let n: usize = rest[at + 1..at + 1 + digits].parse().map_err(|_| {
                diesel::result::Error::QueryBuilderError("placeholder number too large".into())
            })?;
            self.binds.push(n, &mut out)?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    // No static id: the statement cache keys this statement by its SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

impl<B, Conn> RunQueryDsl<Conn> for Prepared<B> {}

/// A Diesel query that is never kept prepared: PostgreSQL plans it for its bound values
/// on every call.
pub struct PlannedPerCall<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for PlannedPerCall<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q> QueryId for PlannedPerCall<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for PlannedPerCall<Q> {
    type SqlType = Q::SqlType;
}

impl<Q, Conn> RunQueryDsl<Conn> for PlannedPerCall<Q> {}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::debug_query;
    use diesel::sql_types::{BigInt, Text};

    #[test]
    fn placeholders_become_bind_parameters_in_text_order() {
        let query = prepared("SELECT $2::text, $1 + 1, '$' || $2")
            .bind::<BigInt, _>(7i64)
            .bind::<Text, _>("a");
        let sql = debug_query::<Pg, _>(&query).to_string();
        assert_eq!(
            sql,
            "SELECT $1::text, $2 + 1, '$' || $3 -- binds: [\"a\", 7, \"a\"]"
        );
    }

    #[test]
    fn a_placeholder_without_a_value_is_an_error() {
        let query = prepared("SELECT $1, $2").bind::<BigInt, _>(7i64);
        let mut builder = diesel::pg::PgQueryBuilder::default();
        assert!(query.to_sql(&mut builder, &Pg).is_err());
    }

    #[test]
    fn prepared_statements_are_cached_and_planned_per_call_ones_are_not() {
        let cached = prepared("SELECT $1").bind::<BigInt, _>(1i64);
        assert!(cached.is_safe_to_cache_prepared(&Pg).unwrap());
        let per_call = PlannedPerCall(prepared("SELECT $1").bind::<BigInt, _>(1i64));
        assert!(!per_call.is_safe_to_cache_prepared(&Pg).unwrap());
    }
}
