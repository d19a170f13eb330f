"""The one table from domain errors to gRPC status codes, with rich error details (AIP-193).

Every error carries google.rpc.ErrorInfo; invalid input also carries BadRequest field
violations, rate limits carry RetryInfo. Unexpected exceptions are logged with their traceback
and become INTERNAL without their text.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..domain import errors as de

DOMAIN = "classwire.dev"

STATUS_OF: dict[type[de.DomainError], grpc.StatusCode] = {
    de.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    de.NotFound: grpc.StatusCode.NOT_FOUND,
    de.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    de.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    de.Aborted: grpc.StatusCode.ABORTED,
    de.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    de.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    de.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    de.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    de.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    de.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: de.DomainError) -> grpc.Status:
    code = grpc.StatusCode.UNKNOWN
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            code = STATUS_OF[cls]
            break
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
        )
    ]
    if isinstance(error, de.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, de.ResourceExhausted) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL, message="internal error", details=[_pack(info)]
    )
    return rpc_status.to_status(status)


def status_from_rpc_error(code: grpc.StatusCode, message: str, reason: str) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN)
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[_pack(info)])
    )
