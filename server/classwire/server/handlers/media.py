"""MediaService: tracks, server-side mute, subscriptions, talk time and quality statistics.
Recording and transcription RPCs come from their own handler modules, merged by RPC name."""

from __future__ import annotations

from classwire.api.media.v1 import service_pb2 as api
from classwire.api.media.v1 import service_pb2_grpc

from ..convert import media as conv
from ..convert.common import time_or_none
from ..domain.media import MediaDomain
from ..rpc.context import principal
from .unimplemented import delegates, unimplemented_servicer

SERVICE = "classwire.api.media.v1.MediaService"


class MediaHandler:
    IMPLEMENTED = (
        "ListTracks",
        "GetTrack",
        "MuteTrack",
        "ListSubscriptions",
        "GetMediaStats",
        "ListQualitySamples",
        "GetTalkTime",
        "ListSpeakingIntervals",
    )

    def __init__(self, media: MediaDomain) -> None:
        self.media = media

    async def ListTracks(self, request, context):
        views, token = await self.media.list_tracks(
            principal(),
            request.session_id,
            request.participant_id,
            request.include_unpublished,
            request.page_size,
            request.page_token,
        )
        return api.ListTracksResponse(
            tracks=[conv.track_to_proto(v) for v in views], next_page_token=token
        )

    async def GetTrack(self, request, context):
        view = await self.media.get_track(principal(), request.track_id)
        return api.GetTrackResponse(track=conv.track_to_proto(view))

    async def MuteTrack(self, request, context):
        view = await self.media.mute_track(principal(), request.track_id)
        return api.MuteTrackResponse(track=conv.track_to_proto(view))

    async def ListSubscriptions(self, request, context):
        rows, token = await self.media.list_subscriptions(
            principal(),
            request.session_id,
            request.track_id,
            request.subscriber_participant_id,
            request.page_size,
            request.page_token,
        )
        return api.ListSubscriptionsResponse(
            subscriptions=[conv.subscription_to_proto(r) for r in rows], next_page_token=token
        )

    async def GetMediaStats(self, request, context):
        view = await self.media.media_stats(principal(), request.session_id)
        return api.GetMediaStatsResponse(stats=conv.media_stats_to_proto(view))

    async def ListQualitySamples(self, request, context):
        rows, token = await self.media.list_quality_samples(
            principal(),
            request.session_id,
            request.participant_id,
            request.direction,
            time_or_none(request, "sample_time_from"),
            time_or_none(request, "sample_time_to"),
            request.page_size,
            request.page_token,
        )
        return api.ListQualitySamplesResponse(
            samples=[conv.quality_sample_to_proto(r) for r in rows], next_page_token=token
        )

    async def GetTalkTime(self, request, context):
        entries, total = await self.media.talk_time(
            principal(), request.session_id, request.include_breakouts
        )
        return conv.talk_time_to_response(entries, total)

    async def ListSpeakingIntervals(self, request, context):
        rows, token = await self.media.list_speaking_intervals(
            principal(),
            request.session_id,
            request.participant_id,
            request.page_size,
            request.page_token,
        )
        return api.ListSpeakingIntervalsResponse(
            intervals=[conv.speaking_interval_to_proto(r) for r in rows], next_page_token=token
        )


def media_servicer(media: MediaDomain, extra_methods: dict | None = None) -> object:
    """The MediaService servicer: tracks, stats and talk time here; recording and transcription
    methods (handlers/recordings.py, handlers/transcription.py) merged in by RPC name."""
    implemented = delegates(MediaHandler(media), MediaHandler.IMPLEMENTED)
    implemented.update(extra_methods or {})
    return unimplemented_servicer(
        service_pb2_grpc.MediaServiceServicer, SERVICE, implemented=implemented
    )
