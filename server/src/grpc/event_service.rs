//! `provisioning.v1.EventService`.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use provisioning_api::v1 as pb;
use provisioning_api::v1::event_service_server::EventService;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::auth::{AuthError, Caller};
use crate::dispatch::before::{BeforeChain, ChainResult, Decision, Outcome};
use crate::domain::events::{Accepted, Ingest, MAX_BATCH_EVENTS};
use crate::domain::{DomainError, Phase};

/// Longest BEFORE chain when the caller sets no deadline.
const DEFAULT_BEFORE_DEADLINE: Duration = Duration::from_secs(60);
/// Taken off the caller's deadline for the BEFORE chain.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);
/// Events of one EmitStream awaiting their commit at once.
const STREAM_WINDOW: usize = 4096;

/// Serves event emission.
pub struct EventApi {
    ingest: Ingest,
    before: BeforeChain,
}

impl EventApi {
    /// A service over the ingest path and the BEFORE chain.
    pub fn new(ingest: Ingest, before: BeforeChain) -> EventApi {
        EventApi { ingest, before }
    }
}

type AckStream = Pin<Box<dyn futures_util::Stream<Item = Result<pb::EmitAck, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    async fn emit(
        &self,
        request: Request<pb::EmitRequest>,
    ) -> Result<Response<pb::EmitResponse>, Status> {
        // Finish a little before the caller's deadline so it gets a decision, not
        // DEADLINE_EXCEEDED.
        let budget = grpc_timeout(request.metadata()).map_or(DEFAULT_BEFORE_DEADLINE, |t| {
            t.saturating_sub(DEADLINE_MARGIN)
        });
        let deadline = Instant::now() + budget;
        let caller = super::caller(&request)?;
        let pb::EmitRequest {
            event,
            phase,
            data_json,
            idempotency_key,
        } = request.into_inner();
        may_emit(&caller, "", &event)?;
        let phase = convert::required_phase(phase, "phase")?;
        let event = self
            .ingest
            .validate(&caller, "", event, data_json, idempotency_key)
            .await?;
        let reply = match phase {
            Phase::After => {
                let accepted = self.ingest.emit(event).await?;
                pb::EmitResponse {
                    event_id: accepted.event_id,
                    duplicate: accepted.duplicate,
                    deliveries: accepted.deliveries,
                    ..Default::default()
                }
            }
            Phase::Before => {
                // A task of its own: if the caller goes away (or tonic's own timeout
                // fires), the runs already started still finish and are logged.
                let chain = self.before.clone();
                let run = tokio::spawn(async move { chain.run(event, deadline).await });
                let chain_result = run.await.map_err(|e| DomainError::Internal(Box::new(e)))?;
                before_reply(chain_result?)
            }
        };
        Ok(Response::new(reply))
    }

    async fn emit_batch(
        &self,
        request: Request<pb::EmitBatchRequest>,
    ) -> Result<Response<pb::EmitBatchResponse>, Status> {
        let caller = super::caller(&request)?;
        let pb::EmitBatchRequest { events } = request.into_inner();
        if events.is_empty() || events.len() > MAX_BATCH_EVENTS {
            return Err(Status::invalid_argument(format!(
                "events: a batch holds 1 to {MAX_BATCH_EVENTS} events, got {}",
                events.len()
            )));
        }
        let mut batch = Vec::with_capacity(events.len());
        for (index, request) in events.into_iter().enumerate() {
            batch.push(
                self.validate_after(&caller, &format!("events[{index}]."), request)
                    .await?,
            );
        }
        let accepted = self.ingest.emit_batch(batch).await?;
        Ok(Response::new(pb::EmitBatchResponse {
            acks: accepted
                .into_iter()
                .enumerate()
                .map(|(i, a)| ack(i as u64, a))
                .collect(),
        }))
    }

    type EmitStreamStream = AckStream;

    async fn emit_stream(
        &self,
        request: Request<Streaming<pb::EmitStreamRequest>>,
    ) -> Result<Response<Self::EmitStreamStream>, Status> {
        let caller = super::caller(&request)?;
        let mut inbound = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_WINDOW);
        let api = EventApi {
            ingest: self.ingest.clone(),
            before: self.before.clone(),
        };
        tokio::spawn(async move {
            let mut in_flight = FuturesOrdered::new();
            let mut inbound_open = true;
            loop {
                tokio::select! {
                    message = inbound.next(), if inbound_open && in_flight.len() < STREAM_WINDOW => match message {
                        Some(Ok(pb::EmitStreamRequest { sequence, event })) => {
                            let api_ingest = api.ingest.clone();
                            let validated = match event {
                                Some(event) => api.validate_after(&caller, "event.", event).await,
                                None => Err(Status::invalid_argument("event: required")),
                            };
                            in_flight.push_back(async move {
                                match validated {
                                    Ok(event) => match api_ingest.emit(event).await {
                                        Ok(accepted) => ack(sequence, accepted),
                                        Err(error) => rejected(sequence, Status::from(error)),
                                    },
                                    Err(status) => rejected(sequence, status),
                                }
                            });
                        }
                        Some(Err(status)) => {
                            tracing::debug!(%status, "EmitStream inbound error");
                            inbound_open = false;
                        }
                        None => inbound_open = false,
                    },
                    Some(ack) = in_flight.next(), if !in_flight.is_empty() => {
                        if sender.send(Ok(ack)).await.is_err() {
                            break; // the client went away; stored events stay stored
                        }
                    }
                    else => break,
                }
                if !inbound_open && in_flight.is_empty() {
                    break;
                }
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(receiver)) as AckStream
        ))
    }
}

impl EventApi {
    async fn validate_after(
        &self,
        caller: &Caller,
        field: &str,
        request: pb::EmitRequest,
    ) -> Result<crate::domain::events::NewEvent, Status> {
        let pb::EmitRequest {
            event,
            phase,
            data_json,
            idempotency_key,
        } = request;
        may_emit(caller, field, &event)?;
        // The same rule as Emit: the phase is required, and only AFTER can be batched.
        if convert::required_phase(phase, &format!("{field}phase"))? == Phase::Before {
            return Err(Status::invalid_argument(format!(
                "{field}phase: only AFTER events can be batched or streamed; use Emit for BEFORE"
            )));
        }
        self.ingest
            .validate(caller, field, event, data_json, idempotency_key)
            .await
            .map_err(Status::from)
    }
}

/// PERMISSION_DENIED when `event` is outside the caller's event patterns.
fn may_emit(caller: &Caller, field: &str, event: &str) -> Result<(), Status> {
    if caller.may_emit(event) {
        return Ok(());
    }
    Err(AuthError::PermissionDenied(format!(
        "{field}event: {}",
        caller.event_denied_message(event)
    ))
    .into())
}

fn ack(sequence: u64, accepted: Accepted) -> pb::EmitAck {
    pb::EmitAck {
        sequence,
        event_id: accepted.event_id,
        duplicate: accepted.duplicate,
        deliveries: accepted.deliveries,
        error_code: 0,
        error_message: String::new(),
    }
}

fn rejected(sequence: u64, status: Status) -> pb::EmitAck {
    pb::EmitAck {
        sequence,
        error_code: status.code() as i32,
        error_message: status.message().to_owned(),
        ..Default::default()
    }
}

fn before_reply(chain: ChainResult) -> pb::EmitResponse {
    pb::EmitResponse {
        event_id: chain.event_id,
        duplicate: false,
        decision: match chain.decision {
            Decision::Allowed => pb::Decision::Allowed,
            Decision::Forbidden => pb::Decision::Forbidden,
        } as i32,
        data_json: chain.data,
        reason: chain.reason,
        results: chain
            .results
            .into_iter()
            .map(|r| pb::HandlerResult {
                handler_id: r.handler_id,
                handler_name: r.handler_name,
                outcome: match r.outcome {
                    Outcome::Passed => pb::HandlerOutcome::Passed,
                    Outcome::Modified => pb::HandlerOutcome::Modified,
                    Outcome::Forbade => pb::HandlerOutcome::Forbade,
                    Outcome::Failed => pb::HandlerOutcome::Failed,
                    Outcome::Skipped => pb::HandlerOutcome::Skipped,
                } as i32,
                error: r.error,
                duration_ms: r.duration.as_millis().min(u32::MAX as u128) as u32,
            })
            .collect(),
        deliveries: 0,
    }
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`).
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_every_unit() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (text, expected) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("2M", Duration::from_secs(120)),
        ] {
            metadata.insert("grpc-timeout", text.parse().unwrap());
            assert_eq!(grpc_timeout(&metadata), Some(expected));
        }
        metadata.insert("grpc-timeout", "5x".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
    }
}
