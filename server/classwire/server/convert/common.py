"""Conversions shared by every area: times, durations, field masks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from ..domain.errors import FieldViolation, InvalidArgument


def set_time(target: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    if value is not None:
        target.FromDatetime(value)


def time_or_none(message, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    ts = getattr(message, field)
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(FieldViolation(field, "is not a valid timestamp")) from None


def duration_or_none(message, field: str) -> timedelta | None:
    if not message.HasField(field):
        return None
    value: duration_pb2.Duration = getattr(message, field)
    return value.ToTimedelta()


def set_duration(target: duration_pb2.Duration, value: timedelta) -> None:
    target.FromTimedelta(value)


def mask_paths(mask, allowed: set[str], field: str = "update_mask") -> list[str]:
    """The paths of an update mask, each checked against the updatable fields."""
    paths = list(mask.paths)
    if not paths:
        raise InvalidArgument(
            FieldViolation(field, "must name at least one field to update"),
            reason="UPDATE_MASK_INVALID",
        )
    bad = [p for p in paths if p not in allowed]
    if bad:
        raise InvalidArgument(
            [
                FieldViolation(f"{field}.paths[{paths.index(p)}]", f"{p!r} cannot be updated")
                for p in bad
            ],
            reason="UPDATE_MASK_INVALID",
        )
    return paths
