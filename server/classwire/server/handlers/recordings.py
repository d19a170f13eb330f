"""MediaService recordings: start, stop, get, list, delete and download.

`recording_methods` returns servicer methods by RPC name, merged into the MediaService servicer
by the composition root.
"""

from __future__ import annotations

from classwire.api.media.v1 import service_pb2 as api

from ..convert import recordings as conv
from ..convert.common import time_or_none
from ..domain.recordings import RecordingsDomain
from ..rpc.context import principal
from .unimplemented import delegates


class RecordingsHandler:
    IMPLEMENTED = (
        "StartRecording",
        "StopRecording",
        "GetRecording",
        "ListRecordings",
        "DeleteRecording",
        "DownloadRecording",
    )

    def __init__(self, domain: RecordingsDomain) -> None:
        self.domain = domain

    async def StartRecording(self, request, context):
        view = await self.domain.start_recording(
            principal(),
            request.session_id,
            request.options if request.HasField("options") else None,
            request.request_id,
        )
        return api.StartRecordingResponse(recording=conv.recording_to_proto(view))

    async def StopRecording(self, request, context):
        view = await self.domain.stop_recording(principal(), request.recording_id)
        return api.StopRecordingResponse(recording=conv.recording_to_proto(view))

    async def GetRecording(self, request, context):
        view = await self.domain.get_recording(principal(), request.recording_id)
        return api.GetRecordingResponse(recording=conv.recording_to_proto(view))

    async def ListRecordings(self, request, context):
        views, token = await self.domain.list_recordings(
            principal(),
            request.session_id,
            list(request.states),
            time_or_none(request, "start_time_from"),
            time_or_none(request, "start_time_to"),
            request.page_size,
            request.page_token,
        )
        return api.ListRecordingsResponse(
            recordings=[conv.recording_to_proto(v) for v in views], next_page_token=token
        )

    async def DeleteRecording(self, request, context):
        await self.domain.delete_recording(principal(), request.recording_id)
        return api.DeleteRecordingResponse()

    async def DownloadRecording(self, request, context):
        row, chunks = await self.domain.download(
            principal(),
            request.recording_id,
            conv.selector_from_request(request),
            request.offset_bytes,
        )
        yield api.DownloadRecordingResponse(file=conv.file_to_proto(row))
        async for offset, data in chunks:
            yield api.DownloadRecordingResponse(
                chunk=api.DownloadRecordingResponse.Chunk(offset_bytes=offset, data=data)
            )


def recording_methods(domain: RecordingsDomain) -> dict:
    """MediaService methods by RPC name."""
    return delegates(RecordingsHandler(domain), RecordingsHandler.IMPLEMENTED)
