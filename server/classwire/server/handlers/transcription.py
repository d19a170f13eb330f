"""MediaService transcription control and DataService transcripts.

`transcription_methods` and `transcript_methods` return servicer methods by RPC name, merged
into the MediaService and DataService servicers by the composition root.
"""

from __future__ import annotations

from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.media.v1 import service_pb2 as media_api

from ..convert import transcription as conv
from ..domain.transcription import TranscriptionDomain
from ..rpc.context import principal
from .unimplemented import delegates


class TranscriptionHandler:
    IMPLEMENTED = (
        "StartTranscription",
        "StopTranscription",
        "GetTranscriptionStatus",
        "ListTranscriptionEngines",
    )

    def __init__(self, domain: TranscriptionDomain) -> None:
        self.domain = domain

    async def StartTranscription(self, request, context):
        view = await self.domain.start_transcription(
            principal(), request.session_id, conv.options_from_proto(request.options)
        )
        return media_api.StartTranscriptionResponse(status=conv.status_to_proto(view))

    async def StopTranscription(self, request, context):
        view = await self.domain.stop_transcription(principal(), request.session_id)
        return media_api.StopTranscriptionResponse(status=conv.status_to_proto(view))

    async def GetTranscriptionStatus(self, request, context):
        view = await self.domain.get_status(principal(), request.session_id)
        return media_api.GetTranscriptionStatusResponse(status=conv.status_to_proto(view))

    async def ListTranscriptionEngines(self, request, context):
        engines, default = await self.domain.list_engines(principal())
        return media_api.ListTranscriptionEnginesResponse(
            engines=[conv.engine_to_proto(e, default) for e in engines]
        )


class TranscriptHandler:
    IMPLEMENTED = ("GetTranscript", "ExportTranscript")

    def __init__(self, domain: TranscriptionDomain) -> None:
        self.domain = domain

    async def GetTranscript(self, request, context):
        view, segments, token = await self.domain.get_transcript(
            principal(),
            request.session_id,
            list(request.speaker_identities),
            request.page_size,
            request.page_token,
        )
        return data_api.GetTranscriptResponse(
            transcript=conv.transcript_to_proto(view),
            segments=[conv.segment_to_proto(s) for s in segments],
            next_page_token=token,
        )

    async def ExportTranscript(self, request, context):
        chunks = await self.domain.export_transcript(
            principal(), request.session_id, request.format, request.omit_speakers
        )
        async for media_type, file_name, text in chunks:
            yield data_api.ExportTranscriptResponse(
                media_type=media_type, file_name=file_name, text=text
            )


def transcription_methods(domain: TranscriptionDomain) -> dict:
    """MediaService methods by RPC name."""
    return delegates(TranscriptionHandler(domain), TranscriptionHandler.IMPLEMENTED)


def transcript_methods(domain: TranscriptionDomain) -> dict:
    """DataService methods by RPC name."""
    return delegates(TranscriptHandler(domain), TranscriptHandler.IMPLEMENTED)
