"""DataService: the event log (WatchEvents, ListEvents, GetEvent) and ingest (IngestEvents,
IngestEventBatch). Every other RPC of the service answers UNIMPLEMENTED until its capability
arrives."""

from __future__ import annotations

from classwire.api.data.v1 import service_pb2 as api
from classwire.api.data.v1 import service_pb2_grpc

from ..convert import data as data_conv
from ..convert import events as conv
from ..domain import ingest
from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.event_log import EventLog
from ..rpc.context import principal
from .unimplemented import delegates, unimplemented_servicer

SERVICE = "classwire.api.data.v1.DataService"


class DataHandler:
    IMPLEMENTED = ("WatchEvents", "ListEvents", "GetEvent", "IngestEvents", "IngestEventBatch")

    def __init__(
        self, event_log: EventLog, ingest_domain: ingest.IngestDomain | None = None
    ) -> None:
        self.event_log = event_log
        # The ingest domain needs the unit-of-work factory, which the event log does not carry;
        # data_servicer builds it from the platform's pieces.
        self.ingest = ingest_domain

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

    async def IngestEvents(self, request_iterator, context):
        caller = principal()
        caller.require("data:write")
        outcomes = []
        total = 0
        async for message in request_iterator:
            events = list(message.events)
            ingest.check_batch_size(len(events))
            room = ingest.MAX_STREAM - total
            if len(events) > room:
                # The events up to the limit are committed before the stream is refused.
                if room:
                    await self.ingest.ingest(caller, events[:room], total)
                raise ingest.stream_too_large()
            outcomes.extend(await self.ingest.ingest(caller, events, total))
            total += len(events)
        return api.IngestEventsResponse(
            results=[data_conv.ingest_result(o) for o in outcomes],
            **data_conv.ingest_counts(outcomes),
        )

    async def IngestEventBatch(self, request, context):
        caller = principal()
        caller.require("data:write")
        ingest.check_batch_size(len(request.events))
        outcomes = await self.ingest.ingest(caller, list(request.events))
        return api.IngestEventBatchResponse(
            results=[data_conv.ingest_result(o) for o in outcomes],
            **data_conv.ingest_counts(outcomes),
        )


def data_servicer(
    event_log: EventLog,
    ingest_domain: ingest.IngestDomain | None = None,
    extra: dict | None = None,
) -> object:
    """The DataService servicer: the event log and ingestion here, plus `extra` methods by RPC
    name (notifications and workflows from handlers/notifications.py)."""
    if ingest_domain is None:
        # The event log holds the database; the unit-of-work factory shares its wakeups.
        from ..events.outbox import UnitOfWorkFactory

        ingest_domain = ingest.IngestDomain(
            event_log.db, UnitOfWorkFactory(event_log.db, event_log.wakeups)
        )
    handler = DataHandler(event_log, ingest_domain)
    return unimplemented_servicer(
        service_pb2_grpc.DataServiceServicer,
        SERVICE,
        implemented={**delegates(handler, DataHandler.IMPLEMENTED), **(extra or {})},
    )
