"""Channel factories: `connect()` (grpc.aio) and `connect_sync()` (blocking grpc).

Both return plain gRPC channels, so the generated stubs work unchanged:

    channel = connect("classwire.example.com:443", api_key=os.environ["CLASSWIRE_API_KEY"])
    platform = service_pb2_grpc.PlatformServiceStub(channel)
    tenant = (await platform.GetTenant(service_pb2.GetTenantRequest())).tenant

What the factories add, and why:
- credentials on every call (see credentials.py);
- a default deadline on unary calls, because a call without a deadline waits forever on a server
  that has stopped answering. Streaming calls get none: WatchEvents, WatchSession and the
  participant Connect stream are meant to stay open for hours, and a default deadline would cut
  them off mid-class; keepalive (below) detects a dead peer on them instead. Pass `timeout=` to
  any call to choose its deadline yourself;
- transparent retries of UNAVAILABLE (and CANCELLED before any answer) with exponential
  backoff (a restarting replica, a load balancer draining). gRPC only retries a call the
  server has not started answering, and classwire answers every call that may change something
  with its headers at once, so a write that reached a handler is never retried (reads, the
  Get/List/Query/Find/Render methods, may be: harmlessly); create-like RPCs also take a
  `request_id` for retries of your own;
- keepalive pings every 30 s, above the server's 10 s minimum (a client that pings more often
  than the server permits is disconnected with ENHANCE_YOUR_CALM);
- on unary calls, failed RPCs raised as the typed exceptions of errors.py.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import grpc

from classwire.api.data.v1 import service_pb2 as _data
from classwire.api.media.v1 import service_pb2 as _media
from classwire.api.platform.v1 import service_pb2 as _platform
from classwire.api.roster.v1 import service_pb2 as _roster
from classwire.api.scheduling.v1 import service_pb2 as _scheduling
from classwire.api.session.v1 import service_pb2 as _session

from .credentials import authorization_header, bearer_token, call_credentials, is_local
from .errors import from_rpc_error

__all__ = ["DEFAULT_TIMEOUT", "SERVICE_NAMES", "connect", "connect_sync", "default_options"]

DEFAULT_TIMEOUT = 30.0

SERVICE_NAMES: tuple[str, ...] = tuple(
    service.full_name
    for module in (_platform, _roster, _scheduling, _session, _media, _data)
    for service in module.DESCRIPTOR.services_by_name.values()
)

# gRPC retry policy (gRFC A6). 5 attempts with 0.2 s, 0.4 s, 0.8 s, 1.6 s backoff (each jittered)
# ride out a replica restart of a few seconds without hiding a real outage for long.
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "5s",
    "backoffMultiplier": 2,
    # CANCELLED too: a draining server's gRPC core cancels calls that arrived but never reached
    # a handler (grpc/grpc#41785). Retries only happen before response headers, which classwire
    # sends as soon as it accepts a call, so an accepted call is never retried.
    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
}

KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
# The server accepts messages up to 16 MiB by default; receiving as much keeps large list pages
# and exports from failing on the client side first (gRPC's own default is 4 MiB).
MAX_RECEIVE_MESSAGE_BYTES = 16 * 1024 * 1024


def service_config() -> str:
    return json.dumps(
        {
            "methodConfig": [
                {"name": [{"service": name} for name in SERVICE_NAMES], "retryPolicy": RETRY_POLICY}
            ]
        }
    )


def default_options() -> list[tuple[str, Any]]:
    """The channel options `connect()` uses; any option the caller passes replaces its namesake."""
    return [
        ("grpc.service_config", service_config()),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Idle channels keep pinging, so a connection silently dropped by a NAT or load balancer
        # is noticed before the next call instead of failing it; the server allows this.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
    ]


def _options(options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    merged = dict(default_options())
    merged.update(dict(options))
    return list(merged.items())


def _with_header(metadata, header: tuple[str, str] | None):
    """`metadata` plus the authorization header, unless the caller already set one for this call
    (so a single call can act with another credential on a shared channel)."""
    pairs = list(metadata or ())
    if header is not None and not any(key == header[0] for key, _ in pairs):
        pairs.append(header)
    return pairs


# -- grpc.aio ---------------------------------------------------------------------------------


class _AsyncPolicy:
    """Credentials, default deadline and typed errors for grpc.aio calls.

    grpc.aio files an interceptor that implements several call kinds under the first kind only
    (grpc/grpc#31442), so each kind gets an interceptor object of its own, sharing this policy.
    """

    def __init__(self, header, default_timeout: float | None, typed_errors: bool) -> None:
        self.header = header
        self.default_timeout = default_timeout
        self.typed_errors = typed_errors

    def details(self, details: grpc.aio.ClientCallDetails, deadline: bool):
        timeout = details.timeout
        if deadline and timeout is None:
            timeout = self.default_timeout
        return details._replace(
            timeout=timeout,
            metadata=grpc.aio.Metadata(*_with_header(details.metadata, self.header)),
        )

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        return [
            _AsyncUnaryUnary(self),
            _AsyncUnaryStream(self),
            _AsyncStreamUnary(self),
            _AsyncStreamStream(self),
        ]


class _AsyncUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, policy: _AsyncPolicy) -> None:
        self.policy = policy

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        call = await continuation(self.policy.details(client_call_details, deadline=True), request)
        if not self.policy.typed_errors:
            return call
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            # The typed error is a complete replacement (same code, details and metadata), so
            # chaining the original would only print the same failure twice.
            raise from_rpc_error(exc) from None
        return call


# Streams: credentials only. Their errors surface while iterating, after the interceptor has
# returned; errors.from_rpc_error decodes them there.
class _AsyncUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, policy: _AsyncPolicy) -> None:
        self.policy = policy

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self.policy.details(client_call_details, deadline=False), request)


class _AsyncStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, policy: _AsyncPolicy) -> None:
        self.policy = policy

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(
            self.policy.details(client_call_details, deadline=False), request_iterator
        )


class _AsyncStreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, policy: _AsyncPolicy) -> None:
        self.policy = policy

    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(
            self.policy.details(client_call_details, deadline=False), request_iterator
        )


def connect(
    target: str,
    *,
    api_key: str | None = None,
    participant_token: str | None = None,
    secure: bool | None = None,
    root_certificates: bytes | None = None,
    default_timeout: float | None = DEFAULT_TIMEOUT,
    options: Sequence[tuple[str, Any]] = (),
    typed_errors: bool = True,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to a classwire server.

    Args:
        target: `host:port`, or any gRPC target (`dns:///host:port`, `unix:/path`).
        api_key: an API key (`cw.key_...`), for backend services.
        participant_token: a participant access token (a JWT), for one participant's calls.
        secure: TLS on or off; None means TLS unless the host is loopback or a Unix socket.
        root_certificates: PEM roots to trust instead of the system's (private CAs).
        default_timeout: seconds allowed to a unary call made without `timeout=`; None for none.
        options: extra gRPC channel options; each replaces the default of the same name.
        typed_errors: raise errors.ClasswireError subclasses from unary calls.
        interceptors: more client interceptors, run after classwire's own (so they already see
            the credential and the default deadline). grpc.aio files each object under one call
            kind only (the first it implements): pass one object per kind.
    """
    token = bearer_token(api_key, participant_token)
    secure = (not is_local(target)) if secure is None else secure
    header = None
    if secure:
        credentials = grpc.ssl_channel_credentials(root_certificates)
        if token is not None:
            credentials = grpc.composite_channel_credentials(credentials, call_credentials(token))
    elif token is not None:
        header = authorization_header(token)
    all_interceptors = [
        *_AsyncPolicy(header, default_timeout, typed_errors).interceptors(),
        *interceptors,
    ]
    if secure:
        return grpc.aio.secure_channel(
            target, credentials, _options(options), interceptors=all_interceptors
        )
    return grpc.aio.insecure_channel(target, _options(options), interceptors=all_interceptors)


# -- blocking grpc ----------------------------------------------------------------------------


class _CallDetails(
    namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """The sync API has no concrete ClientCallDetails to copy, only the abstract interface."""


class _SyncInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, header, default_timeout: float | None, typed_errors: bool) -> None:
        self.header = header
        self.default_timeout = default_timeout
        self.typed_errors = typed_errors

    def _details(self, details: grpc.ClientCallDetails, deadline: bool) -> _CallDetails:
        timeout = details.timeout
        if deadline and timeout is None:
            timeout = self.default_timeout
        return _CallDetails(
            details.method,
            timeout,
            _with_header(details.metadata, self.header),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        outcome = continuation(self._details(client_call_details, deadline=True), request)
        # A blocking call has finished by now. A `.future()` call may still be running: it is
        # passed through as it is rather than blocking here; errors.from_rpc_error translates it.
        if self.typed_errors and outcome.done():
            exc = outcome.exception()
            if isinstance(exc, grpc.RpcError):
                raise from_rpc_error(exc) from None
        return outcome

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details, deadline=False), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details, deadline=False), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details, deadline=False), request_iterator)


def connect_sync(
    target: str,
    *,
    api_key: str | None = None,
    participant_token: str | None = None,
    secure: bool | None = None,
    root_certificates: bytes | None = None,
    default_timeout: float | None = DEFAULT_TIMEOUT,
    options: Sequence[tuple[str, Any]] = (),
    typed_errors: bool = True,
    interceptors: Sequence[Any] = (),
) -> grpc.Channel:
    """A blocking channel to a classwire server; the arguments are those of `connect()`.

    Use it from scripts and threads; inside an event loop use `connect()`, since a blocking call
    there stalls every other task, including an in-process server's.
    """
    token = bearer_token(api_key, participant_token)
    secure = (not is_local(target)) if secure is None else secure
    header = None
    if secure:
        credentials = grpc.ssl_channel_credentials(root_certificates)
        if token is not None:
            credentials = grpc.composite_channel_credentials(credentials, call_credentials(token))
        channel = grpc.secure_channel(target, credentials, _options(options))
    else:
        if token is not None:
            header = authorization_header(token)
        channel = grpc.insecure_channel(target, _options(options))
    own = _SyncInterceptor(header, default_timeout, typed_errors)
    # intercept_channel runs the first interceptor outermost, as grpc.aio does.
    return grpc.intercept_channel(channel, own, *interceptors)
