//! `EmitStream` that survives a broken stream. The events sent and not yet
//! acknowledged are kept (each with its idempotency key); when the stream breaks (the
//! server stopped, the connection broke, or an event's ack says UNAVAILABLE or
//! DEADLINE_EXCEEDED) a new stream is opened after a backoff and those events are sent
//! again, first, in their order. The service stores a keyed event at most once, so an
//! event that had been stored before the break comes back acknowledged as a duplicate.
//!
//! The caller sees one ack per event, in order: the final one (stored, duplicate, or
//! rejected for good). With [`RetryPolicy::NONE`] the raw stream is returned as it is.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;

use crate::retry::{self, RetryPolicy};
use crate::{proto, ClientError, EventServiceClient, Transport};

/// Most events sent and not acknowledged at once on a resuming stream: what would be
/// sent again after a break. Reading the caller's events pauses while it is reached.
const RESEND_WINDOW: usize = 1024;

/// The acknowledgements of an `EmitStream`, one per event, in the order sent.
pub struct AckStream {
    inner: Inner,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one value per stream, never moved per ack: boxing buys nothing"
)]
enum Inner {
    /// One stream, no resumption: the server's acks as they come.
    Raw(Streaming<proto::EmitAck>),
    /// Acks forwarded by the task that resumes broken streams.
    Resuming(ReceiverStream<Result<proto::EmitAck, ClientError>>),
}

impl AckStream {
    /// The next ack; `None` once every event was acknowledged (or the stream ended).
    pub async fn message(&mut self) -> Result<Option<proto::EmitAck>, ClientError> {
        self.next().await.transpose()
    }
}

impl Stream for AckStream {
    type Item = Result<proto::EmitAck, ClientError>;

    #[expect(
        clippy::result_large_err,
        reason = "the crate's one error type, as every async method returns"
    )]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.inner {
            Inner::Raw(acks) => acks
                .poll_next_unpin(cx)
                .map(|ack| ack.map(|r| r.map_err(ClientError::from))),
            Inner::Resuming(acks) => acks.poll_next_unpin(cx),
        }
    }
}

/// Opens the stream; with a retrying `policy`, AFTER events without a key get one and
/// broken streams are resumed in a background task until `events` ends and every event
/// is acknowledged, or the policy's budget is spent after a break.
pub(crate) async fn open<S>(
    client: EventServiceClient<Transport>,
    policy: RetryPolicy,
    events: S,
) -> Result<AckStream, ClientError>
where
    S: Stream<Item = proto::EmitStreamRequest> + Send + 'static,
{
    if !policy.retries() {
        let mut client = client;
        let acks = client.emit_stream(events).await?.into_inner();
        return Ok(AckStream {
            inner: Inner::Raw(acks),
        });
    }
    let (acks, out) = mpsc::channel(RESEND_WINDOW);
    tokio::spawn(resume(client, policy, Box::pin(events), acks));
    Ok(AckStream {
        inner: Inner::Resuming(ReceiverStream::new(out)),
    })
}

/// Why one stream ended before its work was done.
enum Broken {
    /// Worth another stream (the status says why).
    Retry(tonic::Status),
    /// Final: reported to the caller.
    Fail(ClientError),
    /// The caller dropped the acks: nothing more to do.
    Abandoned,
}

/// Runs streams until every event is acknowledged, resuming after each break.
async fn resume(
    client: EventServiceClient<Transport>,
    policy: RetryPolicy,
    mut events: Pin<Box<dyn Stream<Item = proto::EmitStreamRequest> + Send>>,
    acks: mpsc::Sender<Result<proto::EmitAck, ClientError>>,
) {
    let mut unacked: VecDeque<proto::EmitStreamRequest> = VecDeque::new();
    let mut events_done = false;
    let mut backoff = policy.initial_backoff;
    // When the first break since the last progress happened: the budget runs from there.
    let mut broken_since: Option<Instant> = None;
    loop {
        let mut progressed = false;
        let outcome = run_one(
            client.clone(),
            &mut events,
            &mut events_done,
            &mut unacked,
            &acks,
            &mut progressed,
        )
        .await;
        let status = match outcome {
            Ok(()) | Err(Broken::Abandoned) => return,
            Err(Broken::Fail(error)) => {
                let _ = acks.send(Err(error)).await;
                return;
            }
            Err(Broken::Retry(status)) => status,
        };
        if progressed {
            broken_since = None;
            backoff = policy.initial_backoff;
        }
        let since = *broken_since.get_or_insert_with(Instant::now);
        let pause = backoff.mul_f64(retry::jitter());
        if Instant::now() + pause >= since + policy.budget {
            let _ = acks.send(Err(ClientError::Rpc(status))).await;
            return;
        }
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

/// One stream: sends the unacknowledged events again, then new ones as they come,
/// forwarding final acks. `Ok` when everything was sent and acknowledged.
async fn run_one(
    mut client: EventServiceClient<Transport>,
    events: &mut Pin<Box<dyn Stream<Item = proto::EmitStreamRequest> + Send>>,
    events_done: &mut bool,
    unacked: &mut VecDeque<proto::EmitStreamRequest>,
    acks: &mpsc::Sender<Result<proto::EmitAck, ClientError>>,
    progressed: &mut bool,
) -> Result<(), Broken> {
    let (outgoing, requests) = mpsc::channel(RESEND_WINDOW);
    for request in unacked.iter() {
        // Cannot fail: `unacked` never holds more than the channel's capacity.
        let _ = outgoing.try_send(request.clone());
    }
    let mut outgoing = Some(outgoing);
    if *events_done && unacked.is_empty() {
        return Ok(());
    }
    let mut server_acks = match client.emit_stream(ReceiverStream::new(requests)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(classify(status)),
    };
    loop {
        if *events_done && unacked.is_empty() {
            // Closing our side lets the server end the stream.
            outgoing = None;
        }
        tokio::select! {
            next = events.next(), if !*events_done && unacked.len() < RESEND_WINDOW => match next {
                Some(mut request) => {
                    if let Some(event) = request.event.as_mut() {
                        retry::ensure_key(event);
                    }
                    unacked.push_back(request.clone());
                    if let Some(sender) = &outgoing {
                        // A closed request stream means the call broke: its status
                        // arrives on the acks, and this event is sent again.
                        let _ = sender.send(request).await;
                    }
                }
                None => *events_done = true,
            },
            ack = server_acks.message() => match ack {
                Ok(Some(ack)) => {
                    if retry::is_retryable_code(tonic::Code::from_i32(ack.error_code)) {
                        // Not stored (or not known to be): this event and the ones after
                        // it go again, on a new stream, with the same keys.
                        return Err(Broken::Retry(tonic::Status::new(
                            tonic::Code::from_i32(ack.error_code),
                            ack.error_message,
                        )));
                    }
                    if unacked.front().map(|r| r.sequence) == Some(ack.sequence) {
                        unacked.pop_front();
                    }
                    *progressed = true;
                    if acks.send(Ok(ack)).await.is_err() {
                        return Err(Broken::Abandoned);
                    }
                }
                Ok(None) if *events_done && unacked.is_empty() => return Ok(()),
                Ok(None) => {
                    return Err(Broken::Retry(tonic::Status::unavailable(format!(
                        "the server ended the stream with {} events unacknowledged",
                        unacked.len()
                    ))))
                }
                Err(status) => return Err(classify(status)),
            },
        }
    }
}

/// A failed call: retried when its code says the same events may succeed later.
fn classify(status: tonic::Status) -> Broken {
    if retry::is_retryable_status(&status) {
        Broken::Retry(status)
    } else {
        Broken::Fail(ClientError::Rpc(status))
    }
}
