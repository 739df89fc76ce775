//! The gRPC layer: one file per proto service, conversions in `convert.rs`, the error
//! mapping in `status.rs`. Methods stay short: convert the request, call one domain
//! function, convert the reply. Nothing here touches Diesel or hyper.

pub mod convert;
pub mod event_service;
pub mod handler_service;
pub mod log_service;
pub mod status;
