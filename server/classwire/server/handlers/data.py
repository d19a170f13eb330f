"""DataService: the event log (WatchEvents, ListEvents, GetEvent). Every other RPC of the
service answers UNIMPLEMENTED until its capability arrives."""

from __future__ import annotations

from classwire.api.data.v1 import service_pb2 as api
from classwire.api.data.v1 import service_pb2_grpc

from ..convert import events as conv
from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.event_log import EventLog
from ..rpc.context import principal
from .unimplemented import delegates, unimplemented_servicer

SERVICE = "classwire.api.data.v1.DataService"


class DataHandler:
    IMPLEMENTED = ("WatchEvents", "ListEvents", "GetEvent")

    def __init__(self, event_log: EventLog) -> None:
        self.event_log = event_log

    async def WatchEvents(self, request, context):
        start = request.WhichOneof("start")
        if start == "from_latest":
            if not request.from_latest:
                raise InvalidArgument(
                    FieldViolation("from_latest", "set it to true, or set after_sequence instead")
                )
            after = None
        else:
            after = request.after_sequence
        interval = (
            request.heartbeat_interval.ToTimedelta()
            if request.HasField("heartbeat_interval")
            else None
        )
        stream = self.event_log.watch_events(
            principal(), conv.filter_from_proto(request.filter), after, interval
        )
        async for item in stream:
            yield conv.watch_events_response(item)

    async def ListEvents(self, request, context):
        start, end = conv.time_range_from_proto(request.time_range)
        events, token, last = await self.event_log.list_events(
            principal(),
            conv.filter_from_proto(request.filter),
            start,
            end,
            request.after_sequence,
            request.page_size,
            request.page_token,
        )
        return api.ListEventsResponse(events=events, next_page_token=token, last_sequence=last)

    async def GetEvent(self, request, context):
        event = await self.event_log.get_event(principal(), request.event_id)
        return api.GetEventResponse(event=event)


def data_servicer(event_log: EventLog) -> object:
    handler = DataHandler(event_log)
    return unimplemented_servicer(
        service_pb2_grpc.DataServiceServicer,
        SERVICE,
        implemented=delegates(handler, DataHandler.IMPLEMENTED),
    )
