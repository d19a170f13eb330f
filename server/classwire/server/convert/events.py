"""data.v1 and session.v1 event-log protos <-> event log domain values."""

from __future__ import annotations

from datetime import UTC, datetime

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.events.v1 import event_pb2
from classwire.api.session.v1 import service_pb2 as session_api

from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.event_log import EventFilter, Heartbeat
from .common import set_time


def filter_from_proto(message: data_pb.EventFilter) -> EventFilter:
    return EventFilter(
        types=tuple(message.types),
        session_ids=tuple(message.session_ids),
        custom_event_names=tuple(message.custom_event_names),
    )


def time_range_from_proto(
    message: data_pb.TimeRange, prefix: str = "time_range"
) -> tuple[datetime | None, datetime | None]:
    def one(name: str) -> datetime | None:
        if not message.HasField(name):
            return None
        try:
            return getattr(message, name).ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            raise InvalidArgument(
                FieldViolation(f"{prefix}.{name}", "is not a valid timestamp")
            ) from None

    return one("start_time"), one("end_time")


def watch_events_response(item: event_pb2.Event | Heartbeat) -> data_api.WatchEventsResponse:
    if isinstance(item, Heartbeat):
        heartbeat = data_api.WatchEventsHeartbeat(cursor=item.cursor, head_sequence=item.head)
        set_time(heartbeat.server_time, item.server_time)
        return data_api.WatchEventsResponse(heartbeat=heartbeat)
    return data_api.WatchEventsResponse(event=item)


def watch_session_response(item: event_pb2.Event | Heartbeat) -> session_api.WatchSessionResponse:
    if isinstance(item, Heartbeat):
        heartbeat = session_api.WatchSessionResponse.Heartbeat(latest_sequence=item.head)
        set_time(heartbeat.server_time, item.server_time)
        return session_api.WatchSessionResponse(heartbeat=heartbeat)
    return session_api.WatchSessionResponse(event=item)
