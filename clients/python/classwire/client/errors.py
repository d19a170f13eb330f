"""Typed exceptions decoded from classwire's rich error model (AIP-193).

The server puts a `google.rpc.Status` in the `grpc-status-details-bin` trailer of every failed
call: always an `ErrorInfo` (a stable, machine-readable reason), `BadRequest` field violations on
INVALID_ARGUMENT, and `RetryInfo` on RESOURCE_EXHAUSTED. Callers should branch on `reason` (and on
the exception class), never on the message text, which is meant for people and may change.

Every exception here is a `grpc.aio.AioRpcError`, hence a `grpc.RpcError`: code written against
plain gRPC (`except grpc.RpcError as e: e.code()`) keeps working when the typed errors are on.
That is also why the status code is the method `code()`, as on every gRPC error, not a field.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import NamedTuple

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "ClasswireError",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_rpc_error",
]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEY = "x-request-id"


class FieldViolation(NamedTuple):
    """One invalid field: its path in the request (e.g. `scopes[0]`) and what is wrong with it."""

    field: str
    description: str


def _as_metadata(metadata) -> grpc.aio.Metadata | None:
    # Sync calls report metadata as tuples of pairs, async ones as grpc.aio.Metadata: keep one type.
    if metadata is None or isinstance(metadata, grpc.aio.Metadata):
        return metadata
    return grpc.aio.Metadata(*((key, value) for key, value in metadata))


def _first(metadata: grpc.aio.Metadata | None, key: str):
    if metadata is None:
        return None
    return metadata.get(key)


class ClasswireError(grpc.aio.AioRpcError):
    """A failed classwire call, with its rich error details decoded.

    Attributes:
        message: the status message, for people (logs, error pages); may change between releases.
        reason: `ErrorInfo.reason` in UPPER_SNAKE_CASE, e.g. `API_KEY_INVALID`; stable, so
            callers branch on it.
            Empty when the failure never reached the server (a client-side deadline, a refused
            connection).
        domain: `ErrorInfo.domain`, `classwire.dev` for errors raised by classwire itself.
        metadata: `ErrorInfo.metadata`, structured context such as the id that was not found.
        field_violations: from `BadRequest`, one `FieldViolation(field, description)` per bad field.
        retry_delay: from `RetryInfo`: how long to wait before trying again, or None.
        request_id: the server's `x-request-id` for this call, to quote when reporting a problem.
        status: the decoded `google.rpc.Status`, or None when the server sent none.

    The constructor has `grpc.aio.AioRpcError`'s signature, so that the exception pickles and so
    that it can be built from any failed call's code, metadata and details; `from_rpc_error`
    picks the subclass that matches the status code.
    """

    #: The status code this class stands for (None on the base class).
    grpc_code: grpc.StatusCode | None = None

    def __init__(
        self,
        code: grpc.StatusCode,
        initial_metadata=None,
        trailing_metadata=None,
        details: str | None = None,
        debug_error_string: str | None = None,
    ) -> None:
        initial_metadata = _as_metadata(initial_metadata)
        trailing_metadata = _as_metadata(trailing_metadata)
        super().__init__(code, initial_metadata, trailing_metadata, details, debug_error_string)
        self.message: str = details or ""
        self.reason = ""
        self.domain = ""
        self.metadata: dict[str, str] = {}
        self.field_violations: list[FieldViolation] = []
        self.retry_delay: timedelta | None = None
        self.status: status_pb2.Status | None = None
        # The server sends the id in its initial metadata; look in the trailers too, for proxies
        # and servers that only have trailers to offer on an early failure.
        self.request_id: str = (
            _first(initial_metadata, REQUEST_ID_KEY)
            or _first(trailing_metadata, REQUEST_ID_KEY)
            or ""
        )
        raw = _first(trailing_metadata, STATUS_DETAILS_KEY)
        if raw:
            self._decode(raw)

    def _decode(self, raw: bytes) -> None:
        try:
            status = status_pb2.Status.FromString(raw)
        except Exception:  # noqa: BLE001 - a garbled trailer must not hide the original error.
            return
        self.status = status
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                self.reason, self.domain, self.metadata = (
                    info.reason,
                    info.domain,
                    dict(info.metadata),
                )
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.field_violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                self.retry_delay = retry.retry_delay.ToTimedelta()

    def __str__(self) -> str:
        text = f"{self.code().name}: {self.message}"
        extras = [f"reason={self.reason}"] if self.reason else []
        extras += [f"{v.field}: {v.description}" for v in self.field_violations]
        if self.retry_delay is not None:
            extras.append(f"retry after {self.retry_delay.total_seconds():g} s")
        if self.request_id:
            extras.append(f"request_id={self.request_id}")
        return f"{text} ({'; '.join(extras)})" if extras else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


# One subclass per status code, so callers can `except NotFound:` instead of comparing codes.
class Cancelled(ClasswireError):
    grpc_code = grpc.StatusCode.CANCELLED


class Unknown(ClasswireError):
    grpc_code = grpc.StatusCode.UNKNOWN


class InvalidArgument(ClasswireError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(ClasswireError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(ClasswireError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ClasswireError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ClasswireError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ClasswireError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ClasswireError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ClasswireError):
    grpc_code = grpc.StatusCode.ABORTED


class OutOfRange(ClasswireError):
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(ClasswireError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ClasswireError):
    grpc_code = grpc.StatusCode.INTERNAL


class Unavailable(ClasswireError):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ClasswireError):
    grpc_code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(ClasswireError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


def _subclasses(root: type) -> Iterable[type]:
    for cls in root.__subclasses__():
        yield cls
        yield from _subclasses(cls)


_BY_CODE: dict[grpc.StatusCode, type[ClasswireError]] = {
    cls.grpc_code: cls for cls in _subclasses(ClasswireError) if cls.grpc_code is not None
}


def from_rpc_error(exc: grpc.RpcError) -> ClasswireError:
    """The typed exception for a failed call, from a sync or async `grpc.RpcError`.

    Use it where the interceptor cannot translate for you: streaming calls, `.future()` calls, or
    channels made without `connect()`. An exception that is already typed is returned as it is.
    """
    if isinstance(exc, ClasswireError):
        return exc
    # A sync error is also a grpc.Call; a bare RpcError (rare: raised by user code) has no status.
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    initial = exc.initial_metadata() if hasattr(exc, "initial_metadata") else None
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    debug = exc.debug_error_string() if hasattr(exc, "debug_error_string") else None
    cls = _BY_CODE.get(code, ClasswireError)
    return cls(code, initial, trailing, details, debug)
