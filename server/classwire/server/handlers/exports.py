"""DataService: record exports (ExportRecords) and xAPI statements (ListXapiStatements,
PushXapiStatements, GetXapiVerbMapping)."""

from __future__ import annotations

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as api

from ..convert import events as conv
from ..domain import xapi_vocab as vocab
from ..domain.exports import ExportRequest, ExportsDomain, Header, Trailer
from ..domain.xapi import XapiDomain, mapping_row_proto
from ..domain.xapi_build import Statement
from ..rpc.context import principal
from .unimplemented import delegates


def statement_proto(statement: Statement) -> data_pb.XapiStatement:
    out = data_pb.XapiStatement(
        statement_id=statement.statement_id,
        verb_id=statement.verb_id,
        event_id=statement.event_id,
        event_sequence=statement.event_sequence,
        session_id=statement.session_id,
        actor_identity=statement.actor_identity,
        json=statement.to_json(),
    )
    out.occur_time.FromDatetime(statement.occur_time)
    return out


class ExportsHandler:
    IMPLEMENTED = (
        "ExportRecords",
        "ListXapiStatements",
        "PushXapiStatements",
        "GetXapiVerbMapping",
    )

    def __init__(self, exports: ExportsDomain, xapi: XapiDomain) -> None:
        self.exports = exports
        self.xapi = xapi

    async def ExportRecords(self, request, context):
        start, end = conv.time_range_from_proto(request.time_range)
        req = ExportRequest(
            kind=request.kind,
            format=request.format,
            start=start,
            end=end,
            session_ids=tuple(request.session_ids),
            class_ids=tuple(request.class_ids),
            identities=tuple(request.identities),
            event_filter=conv.filter_from_proto(request.event_filter),
            has_event_filter=request.HasField("event_filter"),
            after_sequence=request.after_sequence,
        )
        async for part in self.exports.export(principal(), req):
            if isinstance(part, Header):
                yield api.ExportRecordsResponse(
                    header=data_pb.ExportHeader(
                        export_id=part.export_id,
                        kind=request.kind,
                        format=request.format,
                        media_type=part.media_type,
                        columns=part.columns,
                    )
                )
            elif isinstance(part, Trailer):
                yield api.ExportRecordsResponse(
                    trailer=data_pb.ExportTrailer(
                        record_count=part.record_count,
                        byte_count=part.byte_count,
                        sha256=part.sha256,
                        last_sequence=part.last_sequence,
                    )
                )
            else:
                yield api.ExportRecordsResponse(chunk=part)

    async def ListXapiStatements(self, request, context):
        start, end = conv.time_range_from_proto(request.time_range)
        statements, token = await self.xapi.list_statements(
            principal(),
            request.session_id,
            start,
            end,
            list(request.actor_identities),
            list(request.verb_ids),
            request.page_size,
            request.page_token,
        )
        return api.ListXapiStatementsResponse(
            statements=[statement_proto(s) for s in statements],
            next_page_token=token,
            mapping_version=vocab.MAPPING_VERSION,
        )

    async def PushXapiStatements(self, request, context):
        start, end = conv.time_range_from_proto(request.time_range)
        result = await self.xapi.push(
            principal(), request.request_id, request.session_id, start, end, request.lrs
        )
        return api.PushXapiStatementsResponse(
            push_id=result.push_id,
            mapping_version=vocab.MAPPING_VERSION,
            statement_count=result.statement_count,
            stored_count=result.stored_count,
            already_stored_count=result.already_stored_count,
            failed_count=result.failed_count,
            failures=[
                data_pb.XapiPushFailure(
                    statement_id=f.statement_id, reason=f.reason, message=f.message
                )
                for f in result.failures[:100]
            ],
        )

    async def GetXapiVerbMapping(self, request, context):
        principal().require("data:read")
        return api.GetXapiVerbMappingResponse(
            mapping_version=vocab.MAPPING_VERSION,
            xapi_version=vocab.XAPI_VERSION,
            profile_id=vocab.PROFILE_ID,
            mappings=[mapping_row_proto(row) for row in self.xapi.mapping()],
        )


def export_methods(domain) -> dict:
    """DataService methods by RPC name. `domain` is the Platform: the exports and xAPI domains
    are built from its database, units of work, plugins and configuration; the continuous xAPI
    pusher starts with the platform's background tasks when an LRS is configured."""
    from ..events.xapi_push import start_xapi_push

    xapi = XapiDomain(domain.db, domain.uow, domain.plugins, domain.config)
    domain.tasks.append(_closer(xapi))
    start_xapi_push(domain, xapi)
    handler = ExportsHandler(ExportsDomain(domain.db, domain.uow), xapi)
    return delegates(handler, ExportsHandler.IMPLEMENTED)


def _closer(xapi: XapiDomain):
    """A background task that closes the LRS providers when the platform cancels its tasks."""
    import asyncio

    async def wait_then_close() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await xapi.close()

    return asyncio.create_task(wait_then_close(), name="xapi-providers")
