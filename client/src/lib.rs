//! Typed async client of the Provisioning API (`provisioning.v1`).
//!
//! [`Client`] wraps the three generated tonic clients (handlers, events, execution logs)
//! over one shared HTTP/2 [`Channel`], so it is cheap to clone and every clone
//! multiplexes on the same connection. Its methods are deliberately thin: they take the
//! generated request message, make exactly one call and return the generated reply or
//! stream, with errors folded into [`ClientError`]. Validation and formatting belong to
//! the caller (the `provctl` binary of this crate is one such caller). The one exception
//! is emitting: AFTER events get an idempotency key when they have none, `emit` and
//! `emit_batch` retry UNAVAILABLE and DEADLINE_EXCEEDED with backoff, and `emit_stream`
//! resumes a broken stream ([`RetryPolicy`]; [`Client::with_retry_policy`] with
//! [`RetryPolicy::NONE`] turns all that off).
//!
//! [`Client::connect`] speaks plaintext; [`Client::connect_with`] takes
//! [`ConnectOptions`] for TLS (a CA to trust, a client certificate for mutual TLS) and
//! uses it for `https://` URLs.
//!
//! Event data travels as JSON text (`data_json`); pass the text exactly as it should
//! reach the handlers: the service keeps it byte for byte.
//!
//! ```no_run
//! # async fn demo() -> Result<(), provisioning_client::ClientError> {
//! use provisioning_client::{proto, Client};
//!
//! let client = Client::connect("127.0.0.1:50051").await?;
//! let reply = client
//!     .emit(proto::EmitRequest {
//!         event: "accounts.create".into(),
//!         phase: proto::Phase::After.into(),
//!         data_json: r#"{"id": 178, "id_clients": 15}"#.into(),
//!         // Deliveries of events with the same key reach each handler in order.
//!         ordering_key: "client:15".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! println!("event {}", reply.event_id);
//! # Ok(())
//! # }
//! ```

mod connect;
mod emit_stream;
mod error;
mod retry;

use futures_util::Stream;
use tonic::codec::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use connect::ConnectOptions;
pub use emit_stream::AckStream;
pub use error::ClientError;
/// The generated messages, enums and stubs of `provisioning.v1`.
pub use provisioning_api::v1 as proto;
pub use retry::RetryPolicy;

use proto::event_service_client::EventServiceClient;
use proto::execution_log_service_client::ExecutionLogServiceClient;
use proto::handler_service_client::HandlerServiceClient;

/// Largest reply accepted, above tonic's 4 MiB default: an execution log carries up to
/// two data objects (1 MiB each by default) and a handler page up to 1000 handlers.
const MAX_DECODING_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Sends `authorization: Bearer <token>` with every call when a token is set.
#[derive(Clone, Default)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("BearerAuth")
            .field("token", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// The channel every generated client uses: the connection plus the bearer token.
type Transport = InterceptedService<Channel, BearerAuth>;

/// A connection to the Provisioning API: one method per RPC.
///
/// Cloning is cheap and clones share the connection; methods take `&self`, so one client
/// can serve concurrent tasks.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    handlers: HandlerServiceClient<Transport>,
    events: EventServiceClient<Transport>,
    logs: ExecutionLogServiceClient<Transport>,
    /// How emits are retried.
    retry: RetryPolicy,
}

impl Client {
    /// Connects to a server at `url`: `http://host:port`, or `host:port` (plain HTTP/2 is
    /// assumed); an `https://` URL gets TLS trusting the public web roots (use
    /// [`Client::connect_with`] for a private CA or a client certificate). Fails with
    /// [`ClientError::InvalidUrl`] for an unusable address and [`ClientError::Connect`]
    /// when the server cannot be reached.
    pub async fn connect(url: impl Into<String>) -> Result<Self, ClientError> {
        Self::connect_with(url, &ConnectOptions::new()).await
    }

    /// Connects to a server at `url` with `options`: `https://host:port` uses TLS (a bare
    /// `host:port` too when `options` carry TLS settings), `http://` plaintext. Fails
    /// with [`ClientError::TlsOptions`] or [`ClientError::Tls`] for unusable TLS
    /// settings, and [`ClientError::Connect`] when the server cannot be reached or the
    /// handshake fails.
    pub async fn connect_with(
        url: impl Into<String>,
        options: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let endpoint = options.endpoint(url)?;
        let channel = endpoint.connect().await.map_err(ClientError::Connect)?;
        Ok(Self::from_channel(channel))
    }

    /// Builds a client over an existing channel (for example a lazily connected one, or
    /// one with TLS or interceptors configured by the caller).
    pub fn from_channel(channel: Channel) -> Self {
        Self::with_auth(channel, BearerAuth::default())
    }

    /// The same connection, sending `authorization: Bearer <token>` with every call
    /// (`None`: no token). [`ClientError::InvalidToken`] when the token cannot be sent
    /// as metadata (it is not printable ASCII); the error does not contain it.
    #[expect(
        clippy::result_large_err,
        reason = "the crate's one error type, as every async method returns"
    )]
    pub fn with_token(self, token: Option<&str>) -> Result<Self, ClientError> {
        let header = match token {
            None => None,
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ClientError::InvalidToken)?,
            ),
        };
        Ok(Self {
            retry: self.retry,
            ..Self::with_auth(self.channel, BearerAuth { header })
        })
    }

    fn with_auth(channel: Channel, auth: BearerAuth) -> Self {
        let transport = InterceptedService::new(channel.clone(), auth);
        Self {
            channel,
            handlers: HandlerServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            events: EventServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            logs: ExecutionLogServiceClient::new(transport)
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            retry: RetryPolicy::default(),
        }
    }

    /// This client with another retry policy for emits ([`RetryPolicy::NONE`]: every
    /// call made once, no generated keys).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    // HandlerService

    /// `HandlerService.Create`: registers a handler; the reply carries the full secret.
    pub async fn create_handler(
        &self,
        request: proto::CreateHandlerRequest,
    ) -> Result<proto::Handler, ClientError> {
        Ok(self.handlers.clone().create(request).await?.into_inner())
    }

    /// `HandlerService.Get`: one handler, secret masked.
    pub async fn get_handler(
        &self,
        request: proto::GetHandlerRequest,
    ) -> Result<proto::Handler, ClientError> {
        Ok(self.handlers.clone().get(request).await?.into_inner())
    }

    /// `HandlerService.List`: one page of handlers; follow `next_page_token` for more.
    pub async fn list_handlers(
        &self,
        request: proto::ListHandlersRequest,
    ) -> Result<proto::ListHandlersResponse, ClientError> {
        Ok(self.handlers.clone().list(request).await?.into_inner())
    }

    /// `HandlerService.Update`: changes the fields named in `update_mask`.
    pub async fn update_handler(
        &self,
        request: proto::UpdateHandlerRequest,
    ) -> Result<proto::Handler, ClientError> {
        Ok(self.handlers.clone().update(request).await?.into_inner())
    }

    /// `HandlerService.SetStatus`: enables, disables or archives a handler.
    pub async fn set_handler_status(
        &self,
        request: proto::SetHandlerStatusRequest,
    ) -> Result<proto::Handler, ClientError> {
        Ok(self
            .handlers
            .clone()
            .set_status(request)
            .await?
            .into_inner())
    }

    /// `HandlerService.Delete`: deletes a handler (its log rows stay).
    pub async fn delete_handler(
        &self,
        request: proto::DeleteHandlerRequest,
    ) -> Result<(), ClientError> {
        self.handlers.clone().delete(request).await?;
        Ok(())
    }

    /// `HandlerService.RotateSecret`: new signing secret, returned in full.
    pub async fn rotate_secret(
        &self,
        request: proto::RotateSecretRequest,
    ) -> Result<proto::Handler, ClientError> {
        Ok(self
            .handlers
            .clone()
            .rotate_secret(request)
            .await?
            .into_inner())
    }

    /// `HandlerService.ListEventTypes`: the event catalogue.
    pub async fn list_event_types(
        &self,
        request: proto::ListEventTypesRequest,
    ) -> Result<proto::ListEventTypesResponse, ClientError> {
        Ok(self
            .handlers
            .clone()
            .list_event_types(request)
            .await?
            .into_inner())
    }

    /// `HandlerService.CreateEventType`: adds an event to the catalogue.
    pub async fn create_event_type(
        &self,
        request: proto::CreateEventTypeRequest,
    ) -> Result<proto::EventType, ClientError> {
        Ok(self
            .handlers
            .clone()
            .create_event_type(request)
            .await?
            .into_inner())
    }

    /// `HandlerService.UpdateEventType`: changes an event type's description or data
    /// schema (the fields named in `update_mask`).
    pub async fn update_event_type(
        &self,
        request: proto::UpdateEventTypeRequest,
    ) -> Result<proto::EventType, ClientError> {
        Ok(self
            .handlers
            .clone()
            .update_event_type(request)
            .await?
            .into_inner())
    }

    /// `HandlerService.Test`: runs one handler once, now, and says what happened (the
    /// run is logged as a test; nothing is delivered for real).
    pub async fn test_handler(
        &self,
        request: proto::TestHandlerRequest,
    ) -> Result<proto::TestHandlerResponse, ClientError> {
        Ok(self.handlers.clone().test(request).await?.into_inner())
    }

    /// `HandlerService.ListAudit`: who changed handlers and event types, newest first.
    pub async fn list_audit(
        &self,
        request: proto::ListAuditRequest,
    ) -> Result<proto::ListAuditResponse, ClientError> {
        Ok(self
            .handlers
            .clone()
            .list_audit(request)
            .await?
            .into_inner())
    }

    // EventService

    /// `EventService.Emit`: one event; for BEFORE, the decision and the final data.
    /// An AFTER event without a key gets one and is retried safely (see [`RetryPolicy`]).
    pub async fn emit(
        &self,
        mut request: proto::EmitRequest,
    ) -> Result<proto::EmitResponse, ClientError> {
        let policy = if request.phase == proto::Phase::After as i32 {
            self.retry
        } else {
            RetryPolicy::NONE
        };
        if policy.retries() {
            retry::ensure_key(&mut request);
        }
        retry::with_retries(policy, || {
            let mut events = self.events.clone();
            let request = request.clone();
            async move { Ok(events.emit(request).await?.into_inner()) }
        })
        .await
    }

    /// `EventService.EmitBatch`: many AFTER events in one transaction. Events without a
    /// key get one, and the batch is retried safely (see [`RetryPolicy`]).
    pub async fn emit_batch(
        &self,
        mut request: proto::EmitBatchRequest,
    ) -> Result<proto::EmitBatchResponse, ClientError> {
        if self.retry.retries() {
            request.events.iter_mut().for_each(retry::ensure_key);
        }
        retry::with_retries(self.retry, || {
            let mut events = self.events.clone();
            let request = request.clone();
            async move { Ok(events.emit_batch(request).await?.into_inner()) }
        })
        .await
    }

    /// `EventService.EmitStream`: sends `events` as they are produced and returns the
    /// stream of acknowledgements (in order; a rejected event gets an ack with its error).
    /// Events without a key get one, and a broken stream is resumed by sending the
    /// unacknowledged events again (see [`AckStream`] and [`RetryPolicy`]).
    pub async fn emit_stream<S>(&self, events: S) -> Result<AckStream, ClientError>
    where
        S: Stream<Item = proto::EmitStreamRequest> + Send + 'static,
    {
        emit_stream::open(self.events.clone(), self.retry, events).await
    }

    // ExecutionLogService

    /// `ExecutionLogService.Get`: one run with its data.
    pub async fn get_log(
        &self,
        request: proto::GetLogRequest,
    ) -> Result<proto::ExecutionLog, ClientError> {
        Ok(self.logs.clone().get(request).await?.into_inner())
    }

    /// `ExecutionLogService.Search`: matching runs, newest first, as a stream.
    pub async fn search_logs(
        &self,
        request: proto::SearchLogsRequest,
    ) -> Result<Streaming<proto::LogEntry>, ClientError> {
        Ok(self.logs.clone().search(request).await?.into_inner())
    }

    /// `ExecutionLogService.Tail`: live runs as they are logged; never ends by itself.
    pub async fn tail_logs(
        &self,
        request: proto::TailLogsRequest,
    ) -> Result<Streaming<proto::LogEntry>, ClientError> {
        Ok(self.logs.clone().tail(request).await?.into_inner())
    }

    /// `ExecutionLogService.Stats`: counts and duration percentiles per handler.
    pub async fn log_stats(
        &self,
        request: proto::LogStatsRequest,
    ) -> Result<proto::LogStatsResponse, ClientError> {
        Ok(self.logs.clone().stats(request).await?.into_inner())
    }

    /// `ExecutionLogService.Retry`: runs a failed AFTER delivery again now.
    pub async fn retry(
        &self,
        request: proto::RetryRequest,
    ) -> Result<proto::RetryResponse, ClientError> {
        Ok(self.logs.clone().retry(request).await?.into_inner())
    }

    /// `ExecutionLogService.Skip`: gives up a failed run's delivery for good.
    pub async fn skip(
        &self,
        request: proto::SkipRequest,
    ) -> Result<proto::SkipResponse, ClientError> {
        Ok(self.logs.clone().skip(request).await?.into_inner())
    }

    /// `ExecutionLogService.RetryFailed`: every failed delivery of a handler, due now.
    pub async fn retry_failed(
        &self,
        request: proto::RetryFailedRequest,
    ) -> Result<proto::RetryFailedResponse, ClientError> {
        Ok(self.logs.clone().retry_failed(request).await?.into_inner())
    }

    /// `ExecutionLogService.Purge`: deletes runs older than a date.
    pub async fn purge(
        &self,
        request: proto::PurgeRequest,
    ) -> Result<proto::PurgeResponse, ClientError> {
        Ok(self.logs.clone().purge(request).await?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn malformed_url_is_invalid_url_not_connect() {
        let err = Client::connect("http://exa mple:1").await.unwrap_err();
        assert!(matches!(err, ClientError::InvalidUrl(_)), "{err:?}");
    }

    #[tokio::test]
    async fn refused_connection_is_connect_error() {
        // Port 1 on loopback is closed on any sane test machine.
        let err = Client::connect("127.0.0.1:1").await.unwrap_err();
        assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
    }
}
