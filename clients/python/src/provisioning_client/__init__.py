"""Python client of the Provisioning API (provisioning.v1).

The generated stubs (``provisioning.v1.*_pb2`` and ``*_pb2_grpc``, made by
``./generate`` from the proto files) are the API; this module adds what every caller
needs around them: a connection with the bearer token, and the standard error details
the service sends (``google.rpc.BadRequest`` on INVALID_ARGUMENT, ``RetryInfo`` on
UNAVAILABLE) decoded with grpcio-status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from provisioning.v1 import events_pb2_grpc, handlers_pb2_grpc, logs_pb2_grpc


@dataclass
class Client:
    """The three services of one server, sharing one channel."""

    channel: grpc.Channel
    handlers: handlers_pb2_grpc.HandlerServiceStub
    events: events_pb2_grpc.EventServiceStub
    logs: logs_pb2_grpc.ExecutionLogServiceStub

    def close(self) -> None:
        self.channel.close()


def connect(target: str, token: Optional[str] = None, credentials: Optional[grpc.ChannelCredentials] = None) -> Client:
    """Connects to ``target`` (``host:port``). With ``credentials`` the channel uses TLS;
    a ``token`` is sent as ``authorization: Bearer <token>`` with every call (over TLS,
    or over plaintext to a loopback development server)."""
    if credentials is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, credentials)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return Client(
        channel=channel,
        handlers=handlers_pb2_grpc.HandlerServiceStub(channel),
        events=events_pb2_grpc.EventServiceStub(channel),
        logs=logs_pb2_grpc.ExecutionLogServiceStub(channel),
    )


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The ``(field, description)`` pairs of an INVALID_ARGUMENT's ``BadRequest``."""
    violations = []
    for detail in _details(error):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations


def retry_delay(error: grpc.RpcError) -> Optional[float]:
    """Seconds after which the call is worth retrying (an UNAVAILABLE's ``RetryInfo``)."""
    for detail in _details(error):
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None


def _details(error: grpc.RpcError):
    status = rpc_status.from_call(error)
    return [] if status is None else list(status.details)


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


@dataclass
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: Optional[float]
    metadata: list
    credentials: Optional[grpc.CallCredentials]
    wait_for_ready: Optional[bool]
    compression: Optional[grpc.Compression]
