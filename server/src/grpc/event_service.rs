//! `provisioning.v1.EventService`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
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
use crate::domain::trace_context::TraceContext;
use crate::domain::{DomainError, Phase};
use crate::metrics::{EmitLabels, Metrics};

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
    metrics: Arc<Metrics>,
}

impl EventApi {
    /// A service over the ingest path and the BEFORE chain, counting emits in `metrics`.
    pub fn new(ingest: Ingest, before: BeforeChain, metrics: Arc<Metrics>) -> EventApi {
        EventApi {
            ingest,
            before,
            metrics,
        }
    }

    fn count(&self, event: &str, phase: &'static str, result: Result<&'static str, &Status>) {
        count_emit(&self.metrics, event, phase, result);
    }
}

/// Counts one emitted event: by its name once it was accepted, by the refusal's code
/// (and no name, which may be anything) otherwise.
fn count_emit(
    metrics: &Metrics,
    event: &str,
    phase: &'static str,
    result: Result<&'static str, &Status>,
) {
    match result {
        Ok(result) => metrics.emitted(event, phase, result),
        Err(status) => metrics.emitted("", phase, code_label(status.code())),
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
        let trace = super::trace_context(&request);
        let pb::EmitRequest {
            event,
            phase,
            data_json,
            idempotency_key,
            ordering_key,
        } = request.into_inner();
        let phase_label = match pb::Phase::try_from(phase) {
            Ok(pb::Phase::Before) => "before",
            Ok(pb::Phase::After) => "after",
            _ => "",
        };
        let checked = async {
            may_emit(&caller, "", &event)?;
            let phase = convert::required_phase(phase, "phase")?;
            let mut event = self
                .ingest
                .validate(&caller, "", event, data_json, idempotency_key, ordering_key)
                .await?;
            event.trace = trace;
            Ok::<_, Status>((phase, event))
        };
        let (phase, event) = checked
            .await
            .inspect_err(|status| self.count("", phase_label, Err(status)))?;
        let name = event.event.clone();
        let reply = match phase {
            Phase::After => {
                let accepted = self.ingest.emit(event).await;
                let accepted = accepted.map_err(Status::from);
                self.count(
                    &name,
                    phase_label,
                    accepted.as_ref().map(|a| after_result(a.duplicate)),
                );
                let accepted = accepted?;
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
                let chain_result = run
                    .await
                    .map_err(|e| DomainError::Internal(Box::new(e)))
                    .and_then(|result| result)
                    .map_err(Status::from);
                self.count(
                    &name,
                    phase_label,
                    chain_result.as_ref().map(|chain| match chain.decision {
                        Decision::Allowed => "allowed",
                        Decision::Forbidden => "forbidden",
                    }),
                );
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
        let trace = super::trace_context(&request);
        let pb::EmitBatchRequest { events } = request.into_inner();
        if events.is_empty() || events.len() > MAX_BATCH_EVENTS {
            return Err(super::status::invalid_argument(format!(
                "events: a batch holds 1 to {MAX_BATCH_EVENTS} events, got {}",
                events.len()
            )));
        }
        let total = events.len();
        let refused = |status: Status| {
            (0..total).for_each(|_| self.count("", "after", Err(&status)));
            status
        };
        let mut batch = Vec::with_capacity(total);
        for (index, request) in events.into_iter().enumerate() {
            batch.push(
                self.validate_after(&caller, trace, &format!("events[{index}]."), request)
                    .await
                    .map_err(refused)?,
            );
        }
        let names: Vec<String> = batch.iter().map(|e| e.event.clone()).collect();
        let accepted = self
            .ingest
            .emit_batch(batch)
            .await
            .map_err(|e| refused(Status::from(e)))?;
        let mut counts: HashMap<(&str, &'static str), u64> = HashMap::new();
        for (name, accepted) in names.iter().zip(&accepted) {
            *counts
                .entry((name, after_result(accepted.duplicate)))
                .or_default() += 1;
        }
        for ((event, result), n) in counts {
            self.metrics
                .emitted
                .get_or_create(&EmitLabels {
                    event: event.to_owned(),
                    phase: "after",
                    result,
                })
                .inc_by(n);
        }
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
        let trace = super::trace_context(&request);
        let mut inbound = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_WINDOW);
        let api = EventApi {
            ingest: self.ingest.clone(),
            before: self.before.clone(),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(async move {
            let mut in_flight = FuturesOrdered::new();
            let mut inbound_open = true;
            loop {
                tokio::select! {
                    message = inbound.next(), if inbound_open && in_flight.len() < STREAM_WINDOW => match message {
                        Some(Ok(pb::EmitStreamRequest { sequence, event })) => {
                            let (api_ingest, metrics) = (api.ingest.clone(), api.metrics.clone());
                            let validated = match event {
                                Some(event) => api.validate_after(&caller, trace, "event.", event).await,
                                None => Err(super::status::invalid_argument("event: required")),
                            };
                            in_flight.push_back(async move {
                                let (event, result) = match validated {
                                    Ok(event) => {
                                        let name = event.event.clone();
                                        (name, api_ingest.emit(event).await.map_err(Status::from))
                                    }
                                    Err(status) => (String::new(), Err(status)),
                                };
                                let counted = result.as_ref().map(|a| after_result(a.duplicate));
                                count_emit(&metrics, &event, "after", counted);
                                match result {
                                    Ok(accepted) => ack(sequence, accepted),
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
        trace: Option<TraceContext>,
        field: &str,
        request: pb::EmitRequest,
    ) -> Result<crate::domain::events::NewEvent, Status> {
        let pb::EmitRequest {
            event,
            phase,
            data_json,
            idempotency_key,
            ordering_key,
        } = request;
        may_emit(caller, field, &event)?;
        // The same rule as Emit: the phase is required, and only AFTER can be batched.
        if convert::required_phase(phase, &format!("{field}phase"))? == Phase::Before {
            return Err(super::status::invalid_argument(format!(
                "{field}phase: only AFTER events can be batched or streamed; use Emit for BEFORE"
            )));
        }
        let mut event = self
            .ingest
            .validate(
                caller,
                field,
                event,
                data_json,
                idempotency_key,
                ordering_key,
            )
            .await?;
        event.trace = trace;
        Ok(event)
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

/// The metrics result of a stored AFTER event.
fn after_result(duplicate: bool) -> &'static str {
    if duplicate {
        "duplicate"
    } else {
        "accepted"
    }
}

/// The gRPC code of a refusal as a metrics label value.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
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
