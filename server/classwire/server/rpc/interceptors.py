"""The interceptor stack every classwire RPC runs through, in one wrapper per method.

Order: request id and log context -> authentication -> rate limit -> the handler -> error
mapping -> metrics and one canonical log line. Health and reflection skip authentication.
Wrapping the method handler once (instead of chaining several interceptors) keeps the
per-call overhead to one extra coroutine frame.

Every call names itself with `x-request-id` (the caller's, or a new one) in its trailers, and
every call that may change something also sends it as a header the moment it is accepted: gRPC
clients never retry a call once headers arrived, so an accepted write is never replayed by the
SDK's UNAVAILABLE retries. Unary reads (the standard Get, List, Query, Find and Render methods,
which have no side effects) skip that early header: a retried read is harmless, and the
separate header write costs about as much as the rest of the stack together (bench/api.py).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable

import grpc
import structlog
from grpc import aio
from prometheus_client import Counter, Histogram

from ..domain.auth import RateLimiter
from ..domain.authenticate import Authenticator
from ..domain.errors import DomainError
from ..domain.usage import ApiCallMeter
from . import context
from .errors import internal_status, to_status

log = structlog.get_logger("classwire.rpc")

RPC_COUNT = Counter("classwire_rpc_total", "RPCs handled", ["method", "code"])
RPC_LATENCY = Histogram(
    "classwire_rpc_duration_seconds",
    "RPC duration, from the first byte in to the status out",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)

REQUEST_ID = "x-request-id"
READ_PREFIXES = ("Get", "List", "Query", "Find", "Render")


def is_unary_read(method: str) -> bool:
    """`/pkg.Service/GetThing` and the like: side-effect-free by the API's naming rules."""
    name = method.rpartition("/")[2]
    return any(name.startswith(p) and name[len(p) : len(p) + 1].isupper() for p in READ_PREFIXES)


class _Call:
    """What the canonical log line reports about one call."""

    __slots__ = ("method", "start", "code", "tenant", "counted", "request_id")

    def __init__(self, method: str) -> None:
        self.method = method
        self.request_id = ""
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.tenant = ""
        self.counted = False


class ClasswireInterceptor:
    def __init__(
        self, authenticator: Authenticator, limiter: RateLimiter, meter: ApiCallMeter
    ) -> None:
        self.authenticator = authenticator
        self.limiter = limiter
        self.meter = meter
        # Calls whose handler is still running: shutdown waits for them to unwind before the
        # database and providers close underneath.
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def registrar(self, server: aio.Server) -> ServiceRegistrar:
        """What to pass to the generated `add_*Servicer_to_server` instead of the server: it
        wraps each method handler with this stack once, at registration, so no server
        interceptor runs per call to find the handler, and grpc keeps its registered-method
        path. Services registered on the server directly (health, reflection) skip the stack."""
        return ServiceRegistrar(server, self._wrap)

    # -- the per-call steps -----------------------------------------------------------------

    async def _begin(self, call: _Call, ctx: aio.ServicerContext, headers: bool = False) -> None:
        self.in_flight += 1
        self._idle.clear()
        call.counted = True
        structlog.contextvars.clear_contextvars()
        metadata = ctx.invocation_metadata() or ()
        credential = ""
        request_id = ""
        for key, value in metadata:
            if key == "authorization":
                credential = value
            elif key == "x-request-id":
                request_id = value
        request_id = call.request_id = request_id[:128] or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        ctx.set_trailing_metadata(((REQUEST_ID, request_id),))
        if headers:
            await ctx.send_initial_metadata(((REQUEST_ID, request_id),))
        scheme, _, token = credential.partition(" ")
        if scheme.lower() != "bearer":
            token = ""
        principal = await self.authenticator.authenticate(token.strip())
        call.tenant = principal.tenant_id
        context.set_principal(principal)
        limit_key = principal.api_key_id or principal.participant.token_id  # type: ignore[union-attr]
        rate, burst = principal.rate_limit
        self.limiter.check(limit_key, rate or None, burst or None)

    async def _fail(self, call: _Call, ctx: aio.ServicerContext, exc: BaseException) -> None:
        if isinstance(exc, DomainError):
            status = to_status(exc)
        else:
            log.error("unhandled exception", method=call.method, exc_info=exc)
            status = internal_status()
        call.code = status.code
        trailers = tuple(status.trailing_metadata or ())
        if call.request_id:
            trailers += ((REQUEST_ID, call.request_id),)
        await ctx.abort(status.code, status.details, trailers)

    def _finish(self, call: _Call, ctx: aio.ServicerContext) -> None:
        if call.counted:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        elapsed = time.perf_counter() - call.start
        code = call.code
        if code is grpc.StatusCode.OK:
            code = ctx.code() or grpc.StatusCode.OK
            if isinstance(code, int):
                code = grpc.StatusCode.OK
        name = code.name
        RPC_COUNT.labels(call.method, name).inc()
        RPC_LATENCY.labels(call.method).observe(elapsed)
        log.info(
            "rpc",
            method=call.method,
            tenant=call.tenant,
            code=name,
            duration_ms=round(elapsed * 1000, 3),
        )
        context.set_principal(None)
        if call.tenant:
            self.meter.count(call.tenant)  # usage metering: API calls per tenant and day

    # -- wrappers per call type -------------------------------------------------------------

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary:
            inner = handler.unary_unary
            headers = not is_unary_read(method)

            async def unary_unary(request, ctx):
                call = _Call(method)
                try:
                    await self._begin(call, ctx, headers)
                    return await inner(request, ctx)
                except aio.AbortError:
                    call.code = ctx.code() or grpc.StatusCode.UNKNOWN
                    raise
                except asyncio.CancelledError:
                    # The client went away, its deadline passed, or shutdown cut the call off.
                    call.code = grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    await self._fail(call, ctx, exc)
                finally:
                    self._finish(call, ctx)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner = handler.stream_unary

            async def stream_unary(requests, ctx):
                call = _Call(method)
                try:
                    await self._begin(call, ctx, headers=True)
                    return await inner(requests, ctx)
                except aio.AbortError:
                    call.code = ctx.code() or grpc.StatusCode.UNKNOWN
                    raise
                except asyncio.CancelledError:
                    # The client went away, its deadline passed, or shutdown cut the call off.
                    call.code = grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    await self._fail(call, ctx, exc)
                finally:
                    self._finish(call, ctx)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        streaming = handler.unary_stream or handler.stream_stream
        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )

        async def streaming_call(request_or_iterator, ctx):
            call = _Call(method)
            try:
                await self._begin(call, ctx, headers=True)
                result = streaming(request_or_iterator, ctx)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                else:  # a coroutine that writes with ctx.write(), or raises
                    await result
            except aio.AbortError:
                call.code = ctx.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                # The client went away, its deadline passed, or shutdown cut the call off.
                call.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                await self._fail(call, ctx, exc)
            finally:
                self._finish(call, ctx)

        return factory(streaming_call, handler.request_deserializer, handler.response_serializer)


class ServiceRegistrar:
    """Stands in for the server in generated `add_*Servicer_to_server` calls (see
    `ClasswireInterceptor.registrar`). Generated code hands over each service twice: as a
    generic handler and as its method handlers by name; the second, public form is wrapped and
    registered both ways."""

    def __init__(self, server: aio.Server, wrap: Callable) -> None:
        self.server = server
        self.wrap = wrap
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, _handlers) -> None:
        pass  # the same methods arrive, by name, in add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self.server.add_registered_method_handlers(service, wrapped)
        self.services.append(service)
