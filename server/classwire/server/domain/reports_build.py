"""Computes a post-session report from what the durable log and tables hold about a session.

Pure functions over rows and event envelopes (no I/O): domain/reports.py gathers the inputs,
this turns them into a data.v1 SessionReport. Every measure is absolute and per person, so it
means the same in a one-to-one lesson as in a class of thirty.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.events.v1 import event_pb2

from ..events.catalogue import unwrap
from ..store.models import AttendanceInterval, LiveSession, SessionParticipant

HOSTS = (common_pb2.PARTICIPANT_ROLE_INSTRUCTOR, common_pb2.PARTICIPANT_ROLE_CO_INSTRUCTOR)
LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER
CAMERA = common_pb2.TRACK_SOURCE_CAMERA
SCREEN = common_pb2.TRACK_SOURCE_SCREEN
# Lateness and early leave within these count as on time (the tenant settings have no such
# knobs yet): a learner two minutes late is not flagged, one ten minutes late is.
LATE_GRACE = timedelta(minutes=5)
EARLY_LEAVE_GRACE = timedelta(minutes=5)
EXCERPT_SEGMENTS = 20
ZERO = timedelta(0)

EV = "classwire.api.events.v1."
EVENT_TYPES = tuple(
    EV + name
    for name in (
        "ParticipantReconnecting",
        "ParticipantResumed",
        "HandRaised",
        "ChatMessagePosted",
        "ReactionSent",
        "PollCreated",
        "PollAnswered",
        "PollClosed",
        "TrackPublished",
        "TrackUnpublished",
        "TrackMuted",
        "TrackUnmuted",
        "SpeakingIntervalRecorded",
        "QualitySampleRecorded",
        "TranscriptionStarted",
        "TranscriptionEngineFailed",
        "TranscriptReady",
        "CaptionFinal",
        "CustomEvent",
    )
)


@dataclass
class Inputs:
    """What the builder reads: the session, its people, attendance rows and events (in log
    order), and the people expected who have no participant row."""

    session: LiveSession
    breakout_ids: list[str]
    participants: list[SessionParticipant]
    intervals: list[AttendanceInterval]
    events: list[event_pb2.Event]
    reconnect_grace: timedelta
    # identity -> (display name, role) of expected people with no participant row.
    expected: dict[str, tuple[str, int]] = field(default_factory=dict)
    # identities of expected people (participants invited by token included).
    expected_identities: set[str] = field(default_factory=set)


@dataclass
class Person:
    identity: str
    display_name: str
    role: int
    participant_ids: list[str] = field(default_factory=list)
    # merged (start, end, leave reason, room) stretches
    stretches: list[list] = field(default_factory=list)


def _dt(stamp) -> datetime:
    return stamp.ToDatetime().astimezone()


def _merge(spans: list[tuple[datetime, datetime]], gap: timedelta = ZERO):
    merged: list[list[datetime]] = []
    for start, end in sorted(spans):
        if end < start:
            continue
        if merged and start <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _total(spans) -> timedelta:
    return sum((end - start for start, end in spans), ZERO)


def _overlaps(spans, start: datetime, end: datetime) -> bool:
    return any(s < end and start < e for s, e in spans)


def build(
    inputs: Inputs, now: datetime
) -> tuple[data_pb.SessionReport, list[data_pb.TranscriptSegment]]:
    """The report (without summary and key terms) and the transcript's final segments."""
    row = inputs.session
    end = row.end_time or now
    report = data_pb.SessionReport(
        session_id=row.id,
        title=row.title,
        class_id=row.class_id,
        course_id=row.course_id,
        parent_session_id=row.parent_session_id or "",
        breakout_session_ids=inputs.breakout_ids,
    )
    report.scheduled_start_time.FromDatetime(row.scheduled_start_time)
    report.scheduled_end_time.FromDatetime(row.scheduled_end_time)
    if row.live_time is not None:
        report.start_time.FromDatetime(row.live_time)
    report.end_time.FromDatetime(end)

    people = _attendance(inputs, report, end)
    by_participant = {pid: p for p in people.values() for pid in p.participant_ids}
    presence = {identity: [(s[0], s[1]) for s in p.stretches] for identity, p in people.items()}
    segments = _engagement_and_quality(inputs, report, people, by_participant, presence, end)
    return report, segments


def _attendance(inputs: Inputs, report: data_pb.SessionReport, end: datetime) -> dict[str, Person]:
    row = inputs.session
    people: dict[str, Person] = {}
    participant_of = {p.id: p for p in inputs.participants}
    for p in inputs.participants:
        person = people.setdefault(p.identity, Person(p.identity, p.display_name, p.role))
        person.participant_ids.append(p.id)
        person.display_name = p.display_name or person.display_name
        person.role = p.role
    pieces: dict[str, list[tuple[datetime, datetime, int, str]]] = defaultdict(list)
    for interval in inputs.intervals:
        p = participant_of.get(interval.participant_id)
        if p is None:
            continue
        leave = interval.leave_time or end
        pieces[p.identity].append(
            (interval.join_time, leave, interval.leave_reason, interval.room_session_id)
        )
    for identity, items in pieces.items():
        items.sort()
        stretches: list[list] = []
        for start, stop, reason, room in items:
            # A gap shorter than the reconnection grace window is one stretch of presence.
            if (
                stretches
                and start <= stretches[-1][1] + inputs.reconnect_grace
                and room == stretches[-1][3]
            ):
                if stop >= stretches[-1][1]:
                    stretches[-1][1], stretches[-1][2] = stop, reason
            else:
                stretches.append([start, stop, reason, room])
        people[identity].stretches = stretches
    for identity, (name, role) in inputs.expected.items():
        people.setdefault(identity, Person(identity, name, role))

    reference_end = min(row.scheduled_end_time, end)
    for identity in sorted(
        people,
        key=lambda i: (
            people[i].stretches[0][0]
            if people[i].stretches
            else datetime.max.replace(tzinfo=end.tzinfo),
            i,
        ),
    ):
        person = people[identity]
        entry = report.attendance.add(
            identity=identity,
            participant_ids=person.participant_ids,
            display_name=person.display_name,
            role=person.role,
            expected=identity in inputs.expected_identities,
        )
        if not person.stretches:
            entry.status = data_pb.ATTENDANCE_STATUS_ABSENT
            entry.total_duration.FromTimedelta(ZERO)
            continue
        entry.status = data_pb.ATTENDANCE_STATUS_PRESENT
        for start, stop, reason, room in person.stretches:
            item = entry.intervals.add(leave_reason=reason, room_session_id=room)
            item.join_time.FromDatetime(start)
            item.leave_time.FromDatetime(stop)
        total = _total(_merge([(s[0], s[1]) for s in person.stretches]))
        entry.total_duration.FromTimedelta(total)
        first, last = person.stretches[0][0], max(s[1] for s in person.stretches)
        entry.first_join_time.FromDatetime(first)
        entry.last_leave_time.FromDatetime(last)
        late_by = max(ZERO, first - row.scheduled_start_time)
        entry.late_by.FromTimedelta(late_by)
        entry.late = late_by > LATE_GRACE
        early = max(ZERO, reference_end - last)
        entry.early_leave_by.FromTimedelta(early)
        entry.left_early = early > EARLY_LEAVE_GRACE
    return people


@dataclass
class _Poll:
    poll_id: str
    question: str
    correct: frozenset[str]
    opened: datetime
    closed: datetime | None = None
    answers: dict[str, frozenset[str]] = field(default_factory=dict)


def _engagement_and_quality(inputs, report, people, by_participant, presence, end):
    row = inputs.session
    talk: dict[str, list] = defaultdict(list)
    camera: dict[str, list] = defaultdict(list)
    screen: dict[str, list] = defaultdict(list)
    tracks: dict[str, dict] = {}  # track id -> {identity, source, on_since}
    chat: dict[str, int] = defaultdict(int)
    hands: dict[str, int] = defaultdict(int)
    reactions: dict[str, int] = defaultdict(int)
    custom: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    disconnects: dict[str, int] = defaultdict(int)
    reconnects: dict[str, int] = defaultdict(int)
    loss: dict[str, float] = defaultdict(float)
    rtt: dict[str, timedelta] = defaultdict(lambda: ZERO)
    jitter: dict[str, timedelta] = defaultdict(lambda: ZERO)
    polls: dict[str, _Poll] = {}
    segments: list[data_pb.TranscriptSegment] = []
    transcription = {"started": False, "failed": False, "ready": False}
    origin = row.live_time or row.open_time or row.scheduled_start_time

    def who(participant_id: str, identity: str = "") -> str:
        if identity and identity in people:
            return identity
        person = by_participant.get(participant_id)
        return person.identity if person else ""

    def track_off(track_id: str, at: datetime) -> None:
        state = tracks.get(track_id)
        if state and state["on_since"] is not None:
            target = camera if state["source"] == CAMERA else screen
            target[state["identity"]].append((state["on_since"], at))
            state["on_since"] = None

    for envelope in inputs.events:
        at = _dt(envelope.occur_time)
        payload = unwrap(envelope)
        kind = envelope.type.removeprefix(EV)
        if kind == "ParticipantReconnecting":
            disconnects[who(payload.participant_id, payload.identity)] += 1
        elif kind == "ParticipantResumed":
            reconnects[who(payload.participant_id, payload.identity)] += 1
        elif kind == "HandRaised":
            hands[who(payload.participant_id, payload.identity)] += 1
        elif kind == "ChatMessagePosted":
            if payload.sender_participant_id or payload.sender_identity:
                chat[who(payload.sender_participant_id, payload.sender_identity)] += 1
        elif kind == "ReactionSent":
            reactions[who(payload.participant_id, payload.identity)] += 1
        elif kind == "PollCreated":
            polls[payload.poll_id] = _Poll(
                payload.poll_id, payload.question, frozenset(payload.correct_option_ids), at
            )
        elif kind == "PollAnswered":
            poll = polls.get(payload.poll_id)
            identity = who(payload.participant_id, payload.identity)
            if poll is not None:
                # Anonymous answers carry no participant: counted for the poll, not a person.
                key = identity or f"#{len(poll.answers)}"
                poll.answers[key] = frozenset(payload.option_ids)
        elif kind == "PollClosed":
            poll = polls.get(payload.poll_id)
            if poll is not None:
                poll.closed = at
        elif kind == "TrackPublished":
            if payload.source in (CAMERA, SCREEN):
                tracks[payload.track_id] = {
                    "identity": who(payload.participant_id, payload.identity),
                    "source": payload.source,
                    "on_since": None if payload.muted else at,
                }
        elif kind == "TrackUnpublished" or kind == "TrackMuted":
            track_off(payload.track_id, at)
        elif kind == "TrackUnmuted":
            state = tracks.get(payload.track_id)
            if state and state["on_since"] is None:
                state["on_since"] = at
        elif kind == "SpeakingIntervalRecorded":
            talk[who(payload.participant_id, payload.identity)].append(
                (_dt(payload.start_time), _dt(payload.end_time))
            )
        elif kind == "QualitySampleRecorded":
            identity = who(payload.participant_id)
            loss[identity] = max(loss[identity], payload.packet_loss_ratio)
            rtt[identity] = max(rtt[identity], payload.round_trip_time.ToTimedelta())
            jitter[identity] = max(jitter[identity], payload.jitter.ToTimedelta())
        elif kind == "TranscriptionStarted":
            transcription["started"] = True
        elif kind == "TranscriptionEngineFailed":
            transcription["failed"] = True
        elif kind == "TranscriptReady":
            transcription["ready"] = True
        elif kind == "CaptionFinal":
            if envelope.session_id != row.id:
                continue  # a breakout room's transcript is its own
            start, stop = _dt(payload.start_time), _dt(payload.end_time)
            segment = data_pb.TranscriptSegment(
                segment_id=payload.utterance_id,
                session_id=envelope.session_id,
                participant_id=payload.participant_id,
                identity=payload.identity,
                display_name=payload.display_name,
                track_id=payload.track_id,
                text=payload.text,
                confidence=payload.confidence,
                language=payload.language,
            )
            segment.start_time.CopyFrom(payload.start_time)
            segment.end_time.CopyFrom(payload.end_time)
            segment.start_offset.FromTimedelta(max(ZERO, start - origin))
            segment.end_offset.FromTimedelta(max(ZERO, stop - origin))
            segments.append(segment)
        elif kind == "CustomEvent":
            if payload.subject_identity:
                custom[payload.subject_identity][payload.name] += 1
    for track_id in list(tracks):
        track_off(track_id, end)

    talk_total = {identity: _total(_merge(spans)) for identity, spans in talk.items() if identity}
    everyone = sum(talk_total.values(), ZERO)
    hosts_talk = sum(
        (t for i, t in talk_total.items() if i in people and people[i].role in HOSTS), ZERO
    )

    offered: dict[str, int] = defaultdict(int)
    for poll in polls.values():
        closed = poll.closed or end
        eligible = {i for i, spans in presence.items() if _overlaps(spans, poll.opened, closed)}
        eligible |= {i for i in poll.answers if not i.startswith("#")}
        for identity in eligible:
            offered[identity] += 1
        outcome = report.polls.add(
            poll_id=poll.poll_id,
            question=poll.question,
            graded=bool(poll.correct),
            offered_count=len(eligible),
            answered_count=len(poll.answers),
        )
        if poll.correct:
            outcome.correct_count = sum(1 for a in poll.answers.values() if a == poll.correct)

    for attendance in report.attendance:
        if attendance.status != data_pb.ATTENDANCE_STATUS_PRESENT:
            continue
        identity = attendance.identity
        person = people[identity]
        t = talk_total.get(identity, ZERO)
        entry = report.engagement.add(
            identity=identity,
            participant_ids=person.participant_ids,
            display_name=person.display_name,
            role=person.role,
            chat_messages=chat.get(identity, 0),
            hand_raises=hands.get(identity, 0),
            reactions=reactions.get(identity, 0),
            polls_offered=offered.get(identity, 0),
        )
        entry.present_duration.CopyFrom(attendance.total_duration)
        entry.talk_time.FromTimedelta(t)
        if person.role not in HOSTS and t + hosts_talk > ZERO:
            entry.talk_share_against_instructor = t / (t + hosts_talk)
        if everyone > ZERO:
            entry.session_talk_share = t / everyone
        entry.camera_on_time.FromTimedelta(_total(_merge(camera.get(identity, []))))
        entry.screen_share_time.FromTimedelta(_total(_merge(screen.get(identity, []))))
        answered = [p for p in polls.values() if identity in p.answers]
        graded = [p for p in answered if p.correct]
        entry.polls_answered = len(answered)
        entry.graded_answers = len(graded)
        entry.correct_answers = sum(1 for p in graded if p.answers[identity] == p.correct)
        if entry.polls_offered:
            entry.poll_participation = min(1.0, entry.polls_answered / entry.polls_offered)
        if entry.graded_answers:
            entry.poll_accuracy = entry.correct_answers / entry.graded_answers
        for name, count in custom.get(identity, {}).items():
            entry.custom_event_counts[name] = count

    quality = report.quality
    quality.disconnects = sum(v for k, v in disconnects.items() if k)
    quality.reconnects = sum(v for k, v in reconnects.items() if k)
    for attendance in report.attendance:
        identity = attendance.identity
        if attendance.status != data_pb.ATTENDANCE_STATUS_PRESENT:
            continue
        item = quality.participants.add(
            identity=identity,
            disconnects=disconnects.get(identity, 0),
            reconnects=reconnects.get(identity, 0),
            worst_packet_loss=loss.get(identity, 0.0),
        )
        item.max_round_trip_time.FromTimedelta(rtt.get(identity, ZERO))
        item.max_jitter.FromTimedelta(jitter.get(identity, ZERO))
        if item.worst_packet_loss > quality.worst_packet_loss:
            quality.worst_packet_loss = item.worst_packet_loss
            quality.worst_packet_loss_identity = identity

    segments.sort(key=lambda s: (s.start_time.ToDatetime(), s.segment_id))
    transcript = report.transcript
    if transcription["failed"]:
        transcript.state = data_pb.TRANSCRIPT_STATE_PARTIAL
    elif segments or transcription["started"] or transcription["ready"]:
        transcript.state = data_pb.TRANSCRIPT_STATE_COMPLETE
    else:
        transcript.state = data_pb.TRANSCRIPT_STATE_NONE
    transcript.segment_count = len(segments)
    transcript.languages.extend(sorted({s.language for s in segments if s.language}))
    transcript.excerpt.extend(segments[:EXCERPT_SEGMENTS])
    return segments


def report_people(report: data_pb.SessionReport) -> dict[str, int]:
    """identity -> role of everyone a report lists (for the list filters)."""
    return {a.identity: a.role for a in report.attendance}
