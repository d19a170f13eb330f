"""ExportRecords of engagement, ratings and transcript segments over real gRPC.

The records come from the API: a live lesson with participants on Connect streams (chat,
reactions, hands, a graded poll) whose report holds the engagement, ratings submitted with
SubmitRating, and transcript segments recognized by PocketSphinx from Festival speech. Each
export is read back with the json and csv modules and compared with what GetSessionReport,
ListRatings and GetTranscript return; the trailer's byte count and SHA-256 match the body.
Filters (sessions, classes, identities, time range) narrow the records; records that span
several pages come out as they do in one; another tenant exports nothing of ours; bad filters
are INVALID_ARGUMENT with field violations.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import json_format
from support import speech
from test_analytics import run_lesson
from test_classroom import (
    INSTRUCTOR,
    go_live,
    join,
    open_session,
    other_key,  # noqa: F401 - a fixture
)
from test_connect import ts
from test_exports import EV, assemble, data, failure
from test_reports import ready_report
from test_transcription import SENTENCES, Track, frames_48k_stereo, media, start

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.server.domain import exports as exports_domain

JSONL, CSV = dev.EXPORT_FORMAT_JSON_LINES, dev.EXPORT_FORMAT_CSV
ENGAGEMENT = dev.EXPORT_RECORD_KIND_ENGAGEMENT
RATINGS = dev.EXPORT_RECORD_KIND_RATINGS
SEGMENTS = dev.EXPORT_RECORD_KIND_TRANSCRIPT_SEGMENTS
CLASS = "cls-export-kinds"
# Commas, quotes, a line break and non-ASCII text: CSV must quote them, JSON escape them.
COMMENT = 'clear, "patient"\nmerci — à demain'


async def export(server, kind, fmt, credential=None, **filters):
    """(header, body, trailer, records): records parsed from JSON Lines or CSV."""
    request = data_api.ExportRecordsRequest(kind=kind, format=fmt, **filters)
    header, body, trailer = assemble(await data(server, "ExportRecords", request, credential))
    text = body.decode()
    if fmt == CSV:
        assert list(csv.reader(io.StringIO(text, newline="")))[0] == list(header.columns)
        records = list(csv.DictReader(io.StringIO(text, newline="")))
    else:
        assert header.media_type == "application/jsonl" and not header.columns
        records = [json.loads(line) for line in text.splitlines()]
    assert trailer.record_count == len(records)
    if kind != dev.EXPORT_RECORD_KIND_EVENTS:
        assert trailer.last_sequence == 0  # only event exports continue from a sequence
    return header, body, trailer, records


def around(moment, before: timedelta, after: timedelta) -> data_pb.TimeRange:
    at = moment.ToDatetime(tzinfo=UTC)
    return data_pb.TimeRange(start_time=ts(at - before), end_time=ts(at + after))


@pytest.fixture
def small_pages(monkeypatch):
    """Exports read one record per page, so the few records of a test span several pages."""
    monkeypatch.setattr(exports_domain, "PAGE", 1)


@pytest.fixture(scope="module")
async def lesson(server):
    """A finished lesson of the class (teacher-k; ann-k and bob-k attend, dan-k does not), its
    ready report, and two ratings: ann-k rates 4 and then replaces it with 5 and a comment, then
    bob-k rates 2."""
    session, _ = await run_lesson(server, CLASS, "teacher-k", ["ann-k", "bob-k"], "dan-k")
    report = await ready_report(server, session.id)
    for rater, score, comment in (("ann-k", 4, ""), ("ann-k", 5, COMMENT), ("bob-k", 2, "")):
        await data(
            server,
            "SubmitRating",
            data_api.SubmitRatingRequest(
                session_id=session.id, rater_identity=rater, score=score, comment=comment
            ),
        )
    listed = await data(server, "ListRatings", data_api.ListRatingsRequest(session_id=session.id))
    return session, report, list(reversed(listed.ratings))  # oldest first, as exports go


async def test_engagement_export(server, lesson):
    session, report, _ = lesson
    expected = {e.identity: e for e in report.engagement}
    assert {"ann-k", "bob-k"} <= set(expected)

    header, _, _, records = await export(server, ENGAGEMENT, JSONL, session_ids=[session.id])
    assert header.kind == ENGAGEMENT and header.format == JSONL and header.export_id
    assert all(r.pop("sessionId") == session.id for r in records)
    parsed = [json_format.ParseDict(r, data_pb.ParticipantEngagement()) for r in records]
    assert parsed == list(report.engagement)
    ann, bob = expected["ann-k"], expected["bob-k"]
    assert (ann.chat_messages, ann.reactions, ann.hand_raises) == (1, 1, 1)
    assert (bob.chat_messages, bob.reactions, bob.hand_raises) == (2, 1, 1)
    assert (ann.correct_answers, bob.correct_answers) == (1, 0)

    header, _, trailer, rows = await export(server, ENGAGEMENT, CSV, session_ids=[session.id])
    assert header.media_type == "text/csv"
    assert list(header.columns[:3]) == ["sessionId", "identity", "participantIds"]
    assert {"chatMessages", "presentDuration", "pollAccuracy"} <= set(header.columns)
    by_identity = {r["identity"]: r for r in rows}
    assert set(by_identity) == set(expected)
    assert by_identity["bob-k"]["chatMessages"] == "2"
    assert by_identity["ann-k"]["pollAccuracy"] == "1.0"
    assert by_identity["bob-k"]["correctAnswers"] == ""  # zero: absent in proto3 JSON
    assert json.loads(by_identity["ann-k"]["participantIds"]) == list(ann.participant_ids)
    assert (
        by_identity["ann-k"]["presentDuration"]
        == json_format.MessageToDict(
            data_pb.ParticipantEngagement(present_duration=ann.present_duration)
        )["presentDuration"]
    )
    assert trailer.record_count == len(report.engagement)

    # Filters: identities, classes, and the time range on the session's start.
    *_, only_bob = await export(
        server, ENGAGEMENT, JSONL, session_ids=[session.id], identities=["bob-k"]
    )
    assert [r["identity"] for r in only_bob] == ["bob-k"]
    *_, of_class = await export(server, ENGAGEMENT, JSONL, class_ids=[CLASS])
    assert {r["identity"] for r in of_class} == set(expected)
    assert {r["sessionId"] for r in of_class} == {session.id}
    *_, of_no_class = await export(server, ENGAGEMENT, JSONL, class_ids=["cls-no-such-class"])
    assert of_no_class == []
    hour = timedelta(hours=1)
    minute = timedelta(minutes=1)
    *_, inside = await export(
        server,
        ENGAGEMENT,
        JSONL,
        session_ids=[session.id],
        time_range=around(report.start_time, minute, minute),
    )
    assert len(inside) == len(expected)
    *_, before = await export(
        server,
        ENGAGEMENT,
        CSV,
        session_ids=[session.id],
        time_range=around(report.start_time, hour, -minute),
    )
    assert before == []


async def test_ratings_export(server, lesson):
    session, _, ratings = lesson
    assert [(r.rater_identity, r.score) for r in ratings] == [("ann-k", 5), ("bob-k", 2)]

    header, _, trailer, records = await export(server, RATINGS, JSONL, session_ids=[session.id])
    assert [json_format.ParseDict(r, data_pb.Rating()) for r in records] == ratings
    assert records[0]["comment"] == COMMENT and records[0]["instructorIdentity"] == "teacher-k"

    # The export is announced with its counts.
    announced = await data(
        server,
        "ListEvents",
        data_api.ListEventsRequest(
            filter=data_pb.EventFilter(types=[EV + "ExportCompleted"]), page_size=500
        ),
    )
    [done] = [
        e.data.export_completed
        for e in announced.events
        if e.data.export_completed.export_id == header.export_id
    ]
    assert (done.kind, done.format) == (RATINGS, JSONL)
    assert (done.record_count, done.byte_count) == (trailer.record_count, trailer.byte_count)

    header, body, _, rows = await export(server, RATINGS, CSV, session_ids=[session.id])
    assert list(header.columns) == [
        "ratingId",
        "sessionId",
        "raterIdentity",
        "instructorIdentity",
        "score",
        "comment",
        "createTime",
        "updateTime",
    ]
    assert body.endswith(b"\r\n") and COMMENT.encode() not in body  # the quote is doubled
    assert [(r["ratingId"], r["score"], r["comment"]) for r in rows] == [
        (r.rating_id, str(r.score), r.comment) for r in ratings
    ]
    assert [r["createTime"] for r in rows] == [
        json_format.MessageToDict(r)["createTime"] for r in ratings
    ]

    # Identities match the rater or the instructor.
    for identities, raters in (
        (["bob-k"], ["bob-k"]),
        (["teacher-k"], ["ann-k", "bob-k"]),
        (["dan-k"], []),
    ):
        *_, found = await export(
            server, RATINGS, JSONL, session_ids=[session.id], identities=identities
        )
        assert [r["raterIdentity"] for r in found] == raters, identities
    # The time range applies to create_time: [ann's, bob's) holds ann's rating only.
    first, second = ratings
    *_, found = await export(
        server,
        RATINGS,
        JSONL,
        class_ids=[CLASS],
        time_range=data_pb.TimeRange(start_time=first.create_time, end_time=second.create_time),
    )
    assert [r["ratingId"] for r in found] == [first.rating_id]


async def test_records_spanning_pages_come_out_as_in_one(server, lesson, small_pages):
    session, report, ratings = lesson
    *_, records = await export(server, RATINGS, CSV, session_ids=[session.id])
    assert [r["ratingId"] for r in records] == [r.rating_id for r in ratings]
    *_, records = await export(server, ENGAGEMENT, JSONL, session_ids=[session.id])
    assert len(records) == len(report.engagement)
    # Events page by sequence through the same pager.
    listed = await data(
        server,
        "ListEvents",
        data_api.ListEventsRequest(
            filter=data_pb.EventFilter(session_ids=[session.id]), page_size=1000
        ),
    )
    *_, events = await export(
        server, dev.EXPORT_RECORD_KIND_EVENTS, JSONL, session_ids=[session.id]
    )
    assert [e["id"] for e in events] == [e.id for e in listed.events]


async def test_another_tenant_exports_nothing_of_ours(server, lesson, other_key):  # noqa: F811
    session, _, _ = lesson
    for kind in (ENGAGEMENT, RATINGS, SEGMENTS):
        for filters in ({"session_ids": [session.id]}, {"class_ids": [CLASS]}, {}):
            _, body, trailer, _ = await export(server, kind, JSONL, other_key, **filters)
            assert (body, trailer.record_count) == (b"", 0), (kind, filters)
        header, body, _, rows = await export(
            server, kind, CSV, other_key, identities=["ann-k", "teacher-k"]
        )
        assert rows == [] and body == (",".join(header.columns) + "\r\n").encode()


async def test_bad_filters_are_invalid_argument(server):
    cases = [
        (
            data_api.ExportRecordsRequest(
                kind=RATINGS,
                format=JSONL,
                after_sequence=1,
                event_filter=data_pb.EventFilter(types=[EV + "RatingSubmitted"]),
            ),
            ["after_sequence", "event_filter"],
        ),
        (
            data_api.ExportRecordsRequest(
                kind=ENGAGEMENT, format=CSV, identities=["", "x" * 129, "ann-k"]
            ),
            ["identities[0]", "identities[1]"],
        ),
        (
            data_api.ExportRecordsRequest(
                kind=SEGMENTS,
                format=CSV,
                class_ids=[""],
                time_range=data_pb.TimeRange(start_time={"seconds": 20}, end_time={"seconds": 20}),
            ),
            ["class_ids[0]", "time_range.end_time"],
        ),
        (
            data_api.ExportRecordsRequest(
                kind=SEGMENTS, format=99, session_ids=[f"ses_{i}" for i in range(501)]
            ),
            ["format", "session_ids"],
        ),
        (data_api.ExportRecordsRequest(kind=42, format=JSONL), ["kind"]),
    ]
    for request, fields in cases:
        assert await failure(data(server, "ExportRecords", request)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            fields,
        ), fields


# -- transcript segments ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def transcribed(server):
    """A live session whose instructor spoke two sentences through the real recognizer (the
    audio enters the transcription pipeline as a published track's frames would); returns the
    session and its segments as GetTranscript pages them."""
    if not speech.festival_available():
        pytest.skip("Festival (text2wave) is not installed")
    spoken = speech.join_with_silence([speech.festival_pcm(s) for s in SENTENCES], gap=1.0)
    session = await open_session(server, class_id=CLASS)
    await go_live(server, session.id)
    teacher = await join(server, session.id, "mx-kowal", role=INSTRUCTOR)
    await media(server, "StartTranscription", start(session.id))
    domain = server.server.platform.transcription
    track = Track(
        server.tenant_id, session.id, session.id, "TR_export", teacher.id, teacher.identity
    )
    await domain.attach_audio(track, frames_48k_stereo(spoken))
    await asyncio.wait_for(domain.wait_track(track), 120)
    got = await data(
        server,
        "GetTranscript",
        data_api.GetTranscriptRequest(session_id=session.id, page_size=1000),
    )
    assert got.segments and not got.next_page_token
    return session, list(got.segments)


async def test_transcript_segment_export(server, transcribed):
    session, segments = transcribed

    header, _, trailer, records = await export(server, SEGMENTS, JSONL, session_ids=[session.id])
    assert [json_format.ParseDict(r, data_pb.TranscriptSegment()) for r in records] == segments
    assert all(r["identity"] == "mx-kowal" and r["text"] for r in records)

    header, _, trailer, rows = await export(server, SEGMENTS, CSV, class_ids=[CLASS])
    assert list(header.columns[:4]) == ["segmentId", "sessionId", "participantId", "identity"]
    assert {"startOffset", "startTime", "text", "confidence", "language"} <= set(header.columns)
    assert [(r["segmentId"], r["text"], r["language"]) for r in rows] == [
        (s.segment_id, s.text, s.language) for s in segments
    ]
    assert [r["startTime"] for r in rows] == [
        json_format.MessageToDict(s)["startTime"] for s in segments
    ]
    assert trailer.record_count == len(segments)

    # Filters: the speaker, and the time range on each segment's start.
    *_, nobody = await export(server, SEGMENTS, JSONL, identities=["nobody"], class_ids=[CLASS])
    assert nobody == []
    *_, spoke = await export(server, SEGMENTS, JSONL, identities=["mx-kowal"])
    assert [r["segmentId"] for r in spoke] == [s.segment_id for s in segments]
    first = segments[0].start_time.ToDatetime(tzinfo=UTC)
    *_, from_second = await export(
        server,
        SEGMENTS,
        JSONL,
        session_ids=[session.id],
        time_range=data_pb.TimeRange(start_time=ts(first + timedelta(microseconds=1))),
    )
    assert [r["segmentId"] for r in from_second] == [s.segment_id for s in segments[1:]]
    *_, until_first = await export(
        server,
        SEGMENTS,
        JSONL,
        session_ids=[session.id],
        time_range=data_pb.TimeRange(
            start_time=ts(datetime(2000, 1, 1, tzinfo=UTC)),
            end_time=ts(first + timedelta(microseconds=1)),
        ),
    )
    assert [r["segmentId"] for r in until_first] == [segments[0].segment_id]


async def test_transcript_segments_spanning_pages(server, transcribed, small_pages):
    session, segments = transcribed
    *_, records = await export(server, SEGMENTS, JSONL, session_ids=[session.id])
    assert [r["segmentId"] for r in records] == [s.segment_id for s in segments]
