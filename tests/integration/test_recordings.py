"""Recordings over real gRPC: control errors, scopes and tenants, idempotent starts, paging,
the consent flow on the participant connection, downloads with resume, and deletion removing the
stored files. The media here is the server's own mixed-audio file (silence when nobody
publishes); real WebRTC media is recorded in tests/e2e/test_recording_webrtc.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import av
import grpc
import pytest
from test_classroom import (
    INSTRUCTOR,
    Connection,
    call,
    details,
    expect_error,
    has,
    join,
    ts,
    types,
    violations,
    watch,
)

from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.media.v1 import service_pb2_grpc as media_grpc
from classwire.api.platform.v1 import resources_pb2 as platform_pb
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.session.v1 import resources_pb2 as session_pb
from classwire.api.session.v1 import service_pb2 as session_api

READY = media_pb.RECORDING_STATE_READY
MIXED = media_pb.RECORDING_FILE_KIND_MIXED_AUDIO


async def media(server, method, request, credential=None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = media_grpc.MediaServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential or server.api_key}"),)
        result = getattr(stub, method)(request, metadata=metadata)
        if method == "DownloadRecording":
            return [m async for m in result]
        return await result


async def new_tenant(server, **settings) -> str:
    async with grpc.aio.insecure_channel(server.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(
                display_name="Recorded school", settings=platform_pb.TenantSettings(**settings)
            ),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return created.admin_api_key_secret


async def key_with(server, *scopes: str) -> str:
    async with grpc.aio.insecure_channel(server.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateApiKey(
            platform_api.CreateApiKeyRequest(display_name="narrow", scopes=list(scopes)),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return created.secret


async def live_session(server, key=None, **fields) -> session_pb.Session:
    key = key or server.api_key
    start = (datetime.now(UTC) + timedelta(minutes=3)).replace(microsecond=0)
    session = session_pb.Session(
        title="Recorded",
        scheduled_start_time=ts(start),
        scheduled_end_time=ts(start + timedelta(hours=1)),
        **fields,
    )
    created = await call(
        server, "CreateSession", session_api.CreateSessionRequest(session=session), key
    )
    await call(
        server, "StartSession", session_api.StartSessionRequest(session_id=created.session.id), key
    )
    return created.session


async def wait_state(server, recording_id: str, state: int, key=None) -> media_pb.Recording:
    async with asyncio.timeout(30):
        while True:
            got = await media(
                server,
                "GetRecording",
                media_api.GetRecordingRequest(recording_id=recording_id),
                key,
            )
            if got.recording.state == state:
                return got.recording
            assert got.recording.state != media_pb.RECORDING_STATE_FAILED, got.recording
            await asyncio.sleep(0.1)


async def record(server, session_id: str, seconds: float, key=None) -> media_pb.Recording:
    started = await media(
        server, "StartRecording", media_api.StartRecordingRequest(session_id=session_id), key
    )
    await asyncio.sleep(seconds)
    stopped = await media(
        server,
        "StopRecording",
        media_api.StopRecordingRequest(recording_id=started.recording.id),
        key,
    )
    assert stopped.recording.state in (media_pb.RECORDING_STATE_PROCESSING, READY)
    return await wait_state(server, started.recording.id, READY, key)


def mixed(recording_id: str, offset: int = 0) -> media_api.DownloadRecordingRequest:
    return media_api.DownloadRecordingRequest(
        recording_id=recording_id,
        mixed_audio=media_api.DownloadRecordingRequest.MixedAudio(),
        offset_bytes=offset,
    )


async def test_control_errors_scopes_and_tenants(server):
    other = await new_tenant(server)
    start_time = datetime.now(UTC) + timedelta(minutes=3)
    created = await call(
        server,
        "CreateSession",
        session_api.CreateSessionRequest(
            session=session_pb.Session(
                title="Not yet",
                scheduled_start_time=ts(start_time),
                scheduled_end_time=ts(start_time + timedelta(hours=1)),
            )
        ),
        server.api_key,
    )
    await expect_error(
        media(
            server,
            "StartRecording",
            media_api.StartRecordingRequest(session_id=created.session.id),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_LIVE",
    )
    session = await live_session(server)
    exc = await expect_error(
        media(server, "StartRecording", media_api.StartRecordingRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(exc) == {"session_id"}
    exc = await expect_error(
        media(
            server,
            "StartRecording",
            media_api.StartRecordingRequest(
                session_id=session.id, options=media_pb.RecordingOptions(file_kinds=[MIXED, 42])
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(exc) == {"options.file_kinds[1]"}
    reader = await key_with(server, "media:read")
    await expect_error(
        media(
            server, "StartRecording", media_api.StartRecordingRequest(session_id=session.id), reader
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_SCOPE",
    )
    await expect_error(
        media(
            server, "StartRecording", media_api.StartRecordingRequest(session_id=session.id), other
        ),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )

    request = media_api.StartRecordingRequest(request_id="rec-1", session_id=session.id)
    first = (await media(server, "StartRecording", request)).recording
    assert first.state == media_pb.RECORDING_STATE_RECORDING
    assert not first.auto_started and first.HasField("start_time")
    assert first.options.consent_mode == media_pb.RECORDING_CONSENT_MODE_NOTICE
    again = (await media(server, "StartRecording", request)).recording
    assert again.id == first.id
    exc = await expect_error(
        media(
            server,
            "StartRecording",
            media_api.StartRecordingRequest(
                request_id="rec-1",
                session_id=session.id,
                options=media_pb.RecordingOptions(file_kinds=[MIXED]),
            ),
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    exc = await expect_error(
        media(server, "StartRecording", media_api.StartRecordingRequest(session_id=session.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RECORDING_ALREADY_ACTIVE",
    )
    assert details(exc)[0].metadata["recording_id"] == first.id

    get = media_api.GetRecordingRequest(recording_id=first.id)
    for method, req in (
        ("GetRecording", get),
        ("StopRecording", media_api.StopRecordingRequest(recording_id=first.id)),
        ("DeleteRecording", media_api.DeleteRecordingRequest(recording_id=first.id)),
        ("DownloadRecording", mixed(first.id)),
    ):
        await expect_error(
            media(server, method, req, other), grpc.StatusCode.NOT_FOUND, "RECORDING_NOT_FOUND"
        )
    await expect_error(
        media(server, "GetRecording", media_api.GetRecordingRequest(recording_id="rec_nope")),
        grpc.StatusCode.NOT_FOUND,
        "RECORDING_NOT_FOUND",
    )
    await expect_error(
        media(server, "DeleteRecording", media_api.DeleteRecordingRequest(recording_id=first.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RECORDING_ACTIVE",
    )
    # The mix is written while recording, finalized only at the stop.
    await expect_error(
        media(server, "DownloadRecording", mixed(first.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RECORDING_FILE_NOT_READY",
    )
    exc = await expect_error(
        media(
            server,
            "DownloadRecording",
            media_api.DownloadRecordingRequest(recording_id=first.id),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(exc) == {"file"}
    await expect_error(
        media(
            server,
            "DownloadRecording",
            media_api.DownloadRecordingRequest(
                recording_id=first.id,
                participant_file=media_api.DownloadRecordingRequest.ParticipantFile(
                    participant_id="p_nobody", kind=media_pb.RECORDING_FILE_KIND_PARTICIPANT
                ),
            ),
        ),
        grpc.StatusCode.NOT_FOUND,
        "RECORDING_FILE_NOT_FOUND",
    )
    await expect_error(
        media(
            server, "StopRecording", media_api.StopRecordingRequest(recording_id=first.id), reader
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_SCOPE",
    )
    await asyncio.sleep(1.5)
    stopped = await media(
        server, "StopRecording", media_api.StopRecordingRequest(recording_id=first.id)
    )
    assert stopped.recording.HasField("stop_time")
    # Stopping again returns it unchanged.
    again = await media(
        server, "StopRecording", media_api.StopRecordingRequest(recording_id=first.id)
    )
    assert again.recording.stop_time == stopped.recording.stop_time
    ready = await wait_state(server, first.id, READY, reader)
    assert [f.kind for f in ready.files] == [MIXED]
    assert ready.files[0].ready and ready.files[0].mime_type == "audio/ogg"
    assert ready.total_size_bytes == ready.files[0].size_bytes > 0
    assert ready.files[0].duration.ToTimedelta() > timedelta(seconds=1)
    events = await watch(server, session.id, has("RecordingReady"))
    names = types(events)
    for name in ("RecordingStarted", "RecordingConsentRequested", "RecordingStopped"):
        assert names.count(name) == 1, names
    stop_event = next(e for e in events if e.type.endswith("RecordingStopped"))
    assert stop_event.media.recording_stopped.reason == 1  # REQUESTED


async def test_download_resumes_and_delete_removes_the_files(server):
    session = await live_session(server)
    recording = await record(server, session.id, 2.5)
    size = recording.files[0].size_bytes
    whole = await media(server, "DownloadRecording", mixed(recording.id))
    assert whole[0].WhichOneof("part") == "file" and whole[0].file.id == recording.files[0].id
    data = b"".join(m.chunk.data for m in whole[1:])
    assert len(data) == size and all(len(m.chunk.data) <= 1024 * 1024 for m in whole[1:])
    tail = await media(server, "DownloadRecording", mixed(recording.id, size // 2))
    assert tail[1].chunk.offset_bytes == size // 2
    assert b"".join(m.chunk.data for m in tail[1:]) == data[size // 2 :]
    by_id = await media(
        server,
        "DownloadRecording",
        media_api.DownloadRecordingRequest(
            recording_id=recording.id, file_id=recording.files[0].id
        ),
    )
    assert b"".join(m.chunk.data for m in by_id[1:]) == data
    await expect_error(
        media(server, "DownloadRecording", mixed(recording.id, size + 1)),
        grpc.StatusCode.OUT_OF_RANGE,
        "OFFSET_OUT_OF_RANGE",
    )
    # The file decodes, and lasts as long as the recording did.
    with av.open(__import__("io").BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    decoded = sum(f.samples for f in frames) / frames[0].sample_rate
    recorded = recording.duration.ToTimedelta().total_seconds()
    assert abs(decoded - recorded) <= 0.15 * recorded, (decoded, recorded)

    blobs = server.server.platform.providers["blob_store"]
    prefix = f"recordings/{server.tenant_id}/{recording.id}/"
    assert [b async for b in blobs.list(prefix)]
    await media(
        server, "DeleteRecording", media_api.DeleteRecordingRequest(recording_id=recording.id)
    )
    assert [b async for b in blobs.list(prefix)] == []
    await expect_error(
        media(
            server, "DeleteRecording", media_api.DeleteRecordingRequest(recording_id=recording.id)
        ),
        grpc.StatusCode.NOT_FOUND,
        "RECORDING_NOT_FOUND",
    )


async def test_list_pages_newest_first_with_filters(server):
    key = await new_tenant(server)
    session = await live_session(server, key)
    ids = [(await record(server, session.id, 0.3, key)).id for _ in range(3)]
    pages, token = [], ""
    while True:
        listed = await media(
            server,
            "ListRecordings",
            media_api.ListRecordingsRequest(session_id=session.id, page_size=2, page_token=token),
            key,
        )
        pages.append([r.id for r in listed.recordings])
        token = listed.next_page_token
        if not token:
            break
    assert [i for page in pages for i in page] == ids[::-1]
    assert len(pages[0]) == 2
    none = await media(
        server,
        "ListRecordings",
        media_api.ListRecordingsRequest(states=[media_pb.RECORDING_STATE_RECORDING]),
        key,
    )
    assert list(none.recordings) == []
    exc = await expect_error(
        media(
            server,
            "ListRecordings",
            media_api.ListRecordingsRequest(session_id="x", page_token=token or pages[0][0]),
            key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    assert violations(exc) == {"page_token"}
    exc = await expect_error(
        media(server, "ListRecordings", media_api.ListRecordingsRequest(states=[9]), key),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(exc) == {"states[0]"}
    # Another tenant sees none of them.
    theirs = await media(
        server, "ListRecordings", media_api.ListRecordingsRequest(session_id=session.id)
    )
    assert list(theirs.recordings) == []


async def test_consent_flow_on_the_participant_connection(server):
    key = await new_tenant(server, require_recording_consent=True)
    start = (datetime.now(UTC) + timedelta(minutes=3)).replace(microsecond=0)
    created = await call(
        server,
        "CreateSession",
        session_api.CreateSessionRequest(
            session=session_pb.Session(
                title="Consent",
                scheduled_start_time=ts(start),
                scheduled_end_time=ts(start + timedelta(hours=1)),
            )
        ),
        key,
    )
    session = created.session
    server_key = server.api_key
    try:
        server.api_key = key  # join() mints tokens with the tenant's key
        teacher = await join(server, session.id, "teacher", INSTRUCTOR)
        ann = await join(server, session.id, "ann")
    finally:
        server.api_key = server_key
    async with Connection(server, teacher) as t, Connection(server, ann) as a:
        # A learner may not start a recording; the instructor may.
        refused = await a.act(start_recording=session_api.ConnectRequest.StartRecording())
        assert refused.error.reason == "MISSING_PERMISSION"
        started = await t.act(start_recording=session_api.ConnectRequest.StartRecording())
        assert started.WhichOneof("message") == "ack", started
        recording_id = started.ack.created_id
        got = (
            await media(
                server,
                "GetRecording",
                media_api.GetRecordingRequest(recording_id=recording_id),
                key,
            )
        ).recording
        # The tenant's policy turns the default notice into required consent.
        assert got.options.consent_mode == media_pb.RECORDING_CONSENT_MODE_REQUIRED
        consent = session_api.ConnectRequest.RecordingConsent
        bad = await a.act(recording_consent=consent(recording_id=recording_id))
        assert bad.error.reason == "INVALID_ARGUMENT"
        assert [v.field for v in bad.error.field_violations] == ["recording_consent.answer"]
        unknown = await a.act(recording_consent=consent(recording_id="rec_nope", grant=True))
        assert unknown.error.reason == "RECORDING_NOT_FOUND"
        granted = await a.act(recording_consent=consent(recording_id=recording_id, grant=True))
        assert granted.ack.created_id == recording_id
        declined = await t.act(recording_consent=consent(recording_id=recording_id, decline=True))
        assert declined.WhichOneof("message") == "ack"
        got = (
            await media(
                server,
                "GetRecording",
                media_api.GetRecordingRequest(recording_id=recording_id),
                key,
            )
        ).recording
        assert list(got.declined_participant_ids) == [teacher.id]
        stopped = await t.act(stop_recording=session_api.ConnectRequest.StopRecording())
        assert stopped.ack.created_id == recording_id
        again = await t.act(stop_recording=session_api.ConnectRequest.StopRecording())
        assert again.error.reason == "RECORDING_NOT_ACTIVE"
    await wait_state(server, recording_id, READY, key)
    server_key = server.api_key
    server.api_key = key
    try:
        events = await watch(server, session.id, has("RecordingReady"))
    finally:
        server.api_key = server_key
    names = types(events)
    assert (
        names.count("RecordingConsentGranted") == 1 and names.count("RecordingConsentDeclined") == 1
    )
    requested = next(e for e in events if e.type.endswith("RecordingConsentRequested"))
    assert requested.media.recording_consent_requested.consent_required
    granted_event = next(e for e in events if e.type.endswith("RecordingConsentGranted"))
    assert granted_event.media.recording_consent_granted.participant_id == ann.id


async def test_session_settings_auto_start_and_end_stop(server):
    settings = session_pb.SessionSettings(
        auto_start_recording=True,
        recording_options=media_pb.RecordingOptions(file_kinds=[MIXED]),
    )
    session = await live_session(server, settings=settings)
    async with asyncio.timeout(10):
        while True:
            listed = await media(
                server, "ListRecordings", media_api.ListRecordingsRequest(session_id=session.id)
            )
            if listed.recordings:
                break
            await asyncio.sleep(0.1)
    recording = listed.recordings[0]
    assert recording.auto_started and list(recording.options.file_kinds) == [MIXED]
    await call(
        server,
        "EndSession",
        session_api.EndSessionRequest(session_id=session.id),
        server.api_key,
    )
    await wait_state(server, recording.id, READY)
    events = await watch(server, session.id, has("RecordingStopped"))
    stop = next(e for e in events if e.type.endswith("RecordingStopped"))
    assert stop.media.recording_stopped.reason == 2  # SESSION_ENDED


@pytest.fixture(autouse=True)
def _needs_media(server):
    if not server.server.platform.media.available:
        pytest.skip("no media backend in this build")
