//! `provisioning.v1.ExecutionLogService`: converts requests to domain filters, calls
//! `LogStore` and converts rows back. Streams are the domain's streams, mapped item by
//! item; a tail's "lagged" and "shutting down" notices become the stream's final
//! status (RESOURCE_EXHAUSTED / UNAVAILABLE) with the cursor to resume from.

use std::pin::Pin;

use futures_util::StreamExt;
use provisioning_api::v1 as pb;
use provisioning_api::v1::execution_log_service_server::ExecutionLogService;
use tonic::{Request, Response, Status};

use super::convert;
use crate::domain::logs::{
    ExecutionLog, HandlerStats, LogEntry, LogFilter, LogStore, TailItem, TailStart,
};
use crate::domain::{HandlerKind, RunStatus};

/// Serves the execution log.
pub struct LogApi {
    logs: LogStore,
}

impl LogApi {
    /// A service over `logs`.
    pub fn new(logs: LogStore) -> LogApi {
        LogApi { logs }
    }
}

type LogStream = Pin<Box<dyn futures_util::Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

#[tonic::async_trait]
impl ExecutionLogService for LogApi {
    async fn get(
        &self,
        request: Request<pb::GetLogRequest>,
    ) -> Result<Response<pb::ExecutionLog>, Status> {
        let pb::GetLogRequest { id } = request.into_inner();
        let log = self.logs.get(id).await?;
        Ok(Response::new(execution_log(log)))
    }

    type SearchStream = LogStream;

    async fn search(
        &self,
        request: Request<pb::SearchLogsRequest>,
    ) -> Result<Response<Self::SearchStream>, Status> {
        let pb::SearchLogsRequest {
            filter,
            limit,
            cursor,
        } = request.into_inner();
        let rows = self.logs.search(log_filter(filter)?, limit, &cursor)?;
        let stream = rows.map(|row| row.map(log_entry).map_err(Status::from));
        Ok(Response::new(Box::pin(stream) as LogStream))
    }

    type TailStream = LogStream;

    async fn tail(
        &self,
        request: Request<pb::TailLogsRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        let pb::TailLogsRequest {
            filter,
            backlog,
            cursor,
        } = request.into_inner();
        let start = if !cursor.trim().is_empty() {
            TailStart::After(cursor)
        } else if backlog > 0 {
            TailStart::Backlog(backlog)
        } else {
            TailStart::Now
        };
        let items = self.logs.tail(log_filter(filter)?, start).await?;
        let stream = items.map(|item| match item {
            TailItem::Entry(entry) => Ok(log_entry(entry)),
            TailItem::Lagged { cursor } => Err(Status::resource_exhausted(format!(
                "tail lagged behind: resume with cursor {cursor}"
            ))),
            TailItem::ShuttingDown {
                cursor: Some(cursor),
            } => Err(Status::unavailable(format!(
                "server shutting down: resume with cursor {cursor}"
            ))),
            TailItem::ShuttingDown { cursor: None } => Err(Status::unavailable(
                "server shutting down: tail again from another replica",
            )),
            TailItem::Failed(error) => Err(Status::from(error)),
        });
        Ok(Response::new(Box::pin(stream) as LogStream))
    }

    async fn stats(
        &self,
        request: Request<pb::LogStatsRequest>,
    ) -> Result<Response<pb::LogStatsResponse>, Status> {
        let pb::LogStatsRequest {
            handler_id,
            from,
            to,
        } = request.into_inner();
        let from = from
            .map(|t| convert::from_timestamp(&t, "from"))
            .transpose()?;
        let to = to.map(|t| convert::from_timestamp(&t, "to")).transpose()?;
        let stats = self
            .logs
            .stats((handler_id != 0).then_some(handler_id), from, to)
            .await?;
        Ok(Response::new(pb::LogStatsResponse {
            handlers: stats.into_iter().map(handler_stats).collect(),
        }))
    }

    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryResponse>, Status> {
        let pb::RetryRequest { log_id, resend } = request.into_inner();
        let delivery_id = self.logs.retry(log_id, resend).await?;
        Ok(Response::new(pb::RetryResponse { delivery_id }))
    }

    async fn skip(
        &self,
        request: Request<pb::SkipRequest>,
    ) -> Result<Response<pb::SkipResponse>, Status> {
        let caller = super::caller(&request)?;
        let pb::SkipRequest { log_id } = request.into_inner();
        let (delivery_id, log_id) = self.logs.skip(log_id, &caller.name).await?;
        Ok(Response::new(pb::SkipResponse {
            delivery_id,
            log_id,
        }))
    }

    async fn retry_failed(
        &self,
        request: Request<pb::RetryFailedRequest>,
    ) -> Result<Response<pb::RetryFailedResponse>, Status> {
        let pb::RetryFailedRequest { handler_id, since } = request.into_inner();
        if handler_id == 0 {
            return Err(super::status::invalid_argument("handler_id: required"));
        }
        let since = since
            .map(|t| convert::from_timestamp(&t, "since"))
            .transpose()?;
        let scheduled = self.logs.retry_failed(handler_id, since).await?;
        Ok(Response::new(pb::RetryFailedResponse { scheduled }))
    }

    async fn purge(
        &self,
        request: Request<pb::PurgeRequest>,
    ) -> Result<Response<pb::PurgeResponse>, Status> {
        let pb::PurgeRequest { older_than } = request.into_inner();
        let older_than =
            older_than.ok_or_else(|| super::status::invalid_argument("older_than: required"))?;
        let cutoff = convert::from_timestamp(&older_than, "older_than")?;
        let deleted = self.logs.purge_older_than(cutoff).await?;
        Ok(Response::new(pb::PurgeResponse { deleted }))
    }
}

/// LogFilter → domain filter; enum values and timestamps are checked here, the rest by
/// the domain. An absent filter matches everything.
fn log_filter(filter: Option<pb::LogFilter>) -> Result<LogFilter, Status> {
    let Some(filter) = filter else {
        return Ok(LogFilter::default());
    };
    let pb::LogFilter {
        status,
        phase,
        events,
        handler_id,
        data_contains,
        data_json_contains,
        error_contains,
        from,
        to,
        attempt,
        event_id,
    } = filter;
    let non_empty = |text: String| (!text.is_empty()).then_some(text);
    Ok(LogFilter {
        status: convert::optional_run_status(status, "filter.status")?,
        phase: convert::optional_phase(phase, "filter.phase")?,
        events,
        handler_id: (handler_id != 0).then_some(handler_id),
        data_contains: non_empty(data_contains),
        data_json_contains: non_empty(data_json_contains),
        error_contains: non_empty(error_contains),
        from: from
            .map(|t| convert::from_timestamp(&t, "filter.from"))
            .transpose()?,
        to: to
            .map(|t| convert::from_timestamp(&t, "filter.to"))
            .transpose()?,
        attempt: (attempt != 0).then_some(attempt),
        event_id: (event_id != 0).then_some(event_id),
    })
}

fn log_entry(entry: LogEntry) -> pb::LogEntry {
    let LogEntry { log, cursor } = entry;
    pb::LogEntry {
        log: Some(execution_log(log)),
        cursor,
    }
}

/// ExecutionLog → proto.
fn execution_log(log: ExecutionLog) -> pb::ExecutionLog {
    let ExecutionLog {
        id,
        created_at,
        phase,
        event,
        status,
        handler_id,
        handler_name,
        kind,
        error,
        duration_ms,
        attempt,
        data_sent,
        data_returned,
        response,
        http_status,
        exit_code,
        event_id,
        delivery_id,
        emitted_by,
        test,
    } = log;
    pb::ExecutionLog {
        id,
        created_at: Some(convert::timestamp(created_at)),
        phase: convert::phase(phase) as i32,
        event,
        status: match status {
            RunStatus::Success => pb::RunStatus::Success,
            RunStatus::Fail => pb::RunStatus::Fail,
        } as i32,
        handler_id,
        handler_name,
        error,
        duration_ms,
        attempt,
        data_sent_json: data_sent,
        data_returned_json: data_returned.unwrap_or_default(),
        response,
        http_status: http_status.unwrap_or(0),
        exit_code,
        event_id,
        delivery_id: delivery_id.unwrap_or(0),
        emitted_by: emitted_by.unwrap_or_default(),
        test,
        kind: match kind {
            HandlerKind::Http => pb::HandlerKind::Http,
            HandlerKind::Script => pb::HandlerKind::Script,
        } as i32,
    }
}

fn handler_stats(stats: HandlerStats) -> pb::HandlerStats {
    let HandlerStats {
        handler_id,
        handler_name,
        total,
        success,
        fail,
        success_rate,
        p50_ms,
        p95_ms,
        p99_ms,
        paused,
        queued,
        blocked_keys,
        throttled,
    } = stats;
    pb::HandlerStats {
        handler_id,
        handler_name,
        total,
        success,
        fail,
        success_rate,
        p50_ms,
        p95_ms,
        p99_ms,
        paused,
        queued,
        blocked_keys,
        throttled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_enum_values_in_a_filter_name_the_field() {
        let filter = |f: pb::LogFilter| log_filter(Some(f)).unwrap_err();
        let status = filter(pb::LogFilter {
            status: 9,
            ..Default::default()
        });
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("filter.status:"),
            "{}",
            status.message()
        );
        let phase = filter(pb::LogFilter {
            phase: 9,
            ..Default::default()
        });
        assert!(
            phase.message().starts_with("filter.phase:"),
            "{}",
            phase.message()
        );
        let time = filter(pb::LogFilter {
            from: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        });
        assert!(
            time.message().starts_with("filter.from:"),
            "{}",
            time.message()
        );
    }

    #[test]
    fn zero_and_empty_filter_fields_mean_any() {
        let filter = log_filter(Some(pb::LogFilter::default())).unwrap();
        assert!(filter.status.is_none() && filter.handler_id.is_none() && filter.attempt.is_none());
        assert!(filter.data_contains.is_none() && filter.data_json_contains.is_none());
        assert!(log_filter(None).unwrap().events.is_empty());
    }
}
