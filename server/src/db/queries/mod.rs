//! One module per aggregate; each function is one statement or a small composition,
//! taking `&mut PgConnection` and returning Diesel's `QueryResult`.

pub mod audit;
pub mod deliveries;
pub mod event_types;
pub mod events;
pub mod handlers;
pub mod logs;
