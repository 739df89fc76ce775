//! `provisioning.v1.ExecutionLogService`.

use std::pin::Pin;

use provisioning_api::v1 as pb;
use provisioning_api::v1::execution_log_service_server::ExecutionLogService;
use tonic::{Request, Response, Status};

use crate::domain::logs::LogStore;

/// Serves the execution log.
pub struct LogApi {
    #[allow(dead_code)]
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
    async fn get(&self, _request: Request<pb::GetLogRequest>) -> Result<Response<pb::ExecutionLog>, Status> {
        Err(Status::unimplemented("ExecutionLogService.Get is not implemented yet"))
    }

    type SearchStream = LogStream;

    async fn search(&self, _request: Request<pb::SearchLogsRequest>) -> Result<Response<Self::SearchStream>, Status> {
        Err(Status::unimplemented("ExecutionLogService.Search is not implemented yet"))
    }

    type TailStream = LogStream;

    async fn tail(&self, _request: Request<pb::TailLogsRequest>) -> Result<Response<Self::TailStream>, Status> {
        Err(Status::unimplemented("ExecutionLogService.Tail is not implemented yet"))
    }

    async fn stats(&self, _request: Request<pb::LogStatsRequest>) -> Result<Response<pb::LogStatsResponse>, Status> {
        Err(Status::unimplemented("ExecutionLogService.Stats is not implemented yet"))
    }

    async fn retry(&self, _request: Request<pb::RetryRequest>) -> Result<Response<pb::RetryResponse>, Status> {
        Err(Status::unimplemented("ExecutionLogService.Retry is not implemented yet"))
    }

    async fn purge(&self, _request: Request<pb::PurgeRequest>) -> Result<Response<pb::PurgeResponse>, Status> {
        Err(Status::unimplemented("ExecutionLogService.Purge is not implemented yet"))
    }
}
