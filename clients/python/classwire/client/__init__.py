"""classwire.client: the handwritten Python SDK around the generated stubs in classwire.api.

    from classwire.client import connect, NotFound
    from classwire.api.platform.v1 import service_pb2, service_pb2_grpc

    channel = connect("127.0.0.1:50051", api_key=api_key)
    platform = service_pb2_grpc.PlatformServiceStub(channel)
    try:
        await platform.GetApiKey(service_pb2.GetApiKeyRequest(id=key_id))
    except NotFound as exc:
        print(exc.reason, exc.request_id)

`connect()` gives a grpc.aio channel, `connect_sync()` a blocking one; both carry the credential,
default deadlines, retries and typed errors described in channels.py and errors.py.
"""

from .channels import DEFAULT_TIMEOUT, SERVICE_NAMES, connect, connect_sync, default_options
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    ClasswireError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_rpc_error,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "SERVICE_NAMES",
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
    "connect",
    "connect_sync",
    "default_options",
    "from_rpc_error",
]
