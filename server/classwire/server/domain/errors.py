"""Domain errors: plain exceptions that handlers translate to gRPC status in one table.

Each carries a machine-readable `reason` (UPPER_SNAKE_CASE, the ErrorInfo reason) and optional
metadata. InvalidArgument also carries field violations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


class DomainError(Exception):
    reason = "ERROR"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata = dict(metadata or {})


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation] | FieldViolation, **kw) -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = list(violations)
        message = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or "invalid request", **kw)


class Violations:
    """Collects field violations so a request reports all of its problems at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


class NotFound(DomainError):
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    reason = "ABORTED"


class OutOfRange(DomainError):
    reason = "OUT_OF_RANGE"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class ResourceExhausted(DomainError):
    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: timedelta | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Unimplemented(DomainError):
    reason = "NOT_IMPLEMENTED"


class Unavailable(DomainError):
    reason = "UNAVAILABLE"
