"""The one follower of sessions going live and ending that recordings and transcription share:
both auto-start from the same follower and both act on the end, and a listener that fails does
not keep the lifecycle from the others."""

from __future__ import annotations

import asyncio

import pytest
from test_classroom import call, has, watch
from test_recordings import MIXED, READY, live_session, media, wait_state

from classwire.api.common.v1 import common_pb2
from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.session.v1 import resources_pb2 as session_pb
from classwire.api.session.v1 import service_pb2 as session_api

EV = "classwire.api.events.v1."


async def test_recordings_and_transcription_share_one_follower(server):
    platform = server.server.platform
    if not platform.media.available:
        pytest.skip("no media backend in this build")
    names = [task.get_name() for task in platform.tasks]
    assert names.count("session-lifecycle") == 1
    assert not {"recording-lifecycle", "transcription-lifecycle"} & set(names)

    seen: list[tuple[str, str, int]] = []

    async def broken(event) -> None:
        raise RuntimeError("a listener that always fails")

    async def record(event) -> None:
        state = event.session.session_state_changed.state
        seen.append((event.session_id, event.type.rsplit(".", 1)[-1], state))

    removers = [
        platform.lifecycle.listen(broken, label="broken"),
        platform.lifecycle.listen(record, label="observer"),
    ]
    try:
        settings = session_pb.SessionSettings(
            auto_start_recording=True,
            auto_start_transcription=True,
            recording_options=media_pb.RecordingOptions(file_kinds=[MIXED]),
        )
        session = await live_session(server, settings=settings)
        status_request = media_api.GetTranscriptionStatusRequest(session_id=session.id)
        async with asyncio.timeout(10):
            while True:
                listed = await media(
                    server,
                    "ListRecordings",
                    media_api.ListRecordingsRequest(session_id=session.id),
                )
                status = (await media(server, "GetTranscriptionStatus", status_request)).status
                if listed.recordings and status.state == media_pb.TRANSCRIPTION_STATE_RUNNING:
                    break
                await asyncio.sleep(0.1)
        (recording,) = listed.recordings
        assert recording.auto_started and status.auto_started

        await call(
            server,
            "EndSession",
            session_api.EndSessionRequest(session_id=session.id),
            server.api_key,
        )
        await wait_state(server, recording.id, READY)
        # Each area acted on the end: the recording stopped, the transcript is complete.
        ended = ("RecordingStopped", "TranscriptionStopped", "TranscriptReady")
        events = await watch(server, session.id, lambda got: all(has(n)(got) for n in ended))
        stopped = next(e for e in events if e.type == f"{EV}RecordingStopped")
        assert stopped.media.recording_stopped.reason == 2  # SESSION_ENDED
        ours = [(kind, state) for sid, kind, state in seen if sid == session.id]
        assert ("SessionStateChanged", common_pb2.SESSION_STATE_LIVE) in ours
        assert ours[-1][0] == "SessionEnded"
    finally:
        for remove in removers:
            remove()
