"""Builds xAPI 1.0.3 statements from events with the pinned mapping (xapi_vocab.py).

Pure functions over decoded events and a little context (participant identities, polls, the
session tree, reports) that the caller loads; nothing here touches the database.

Ids: a statement's id is the UUID v5 of (tenant, event id, verb IRI), plus the identity for the
per-person summary statements, so building the same event again always gives the same id and a
resent statement is one the LRS already holds.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import session_events_pb2 as sev

from ..events.catalogue import unwrap
from . import xapi_vocab as v

MIC = common_pb2.TRACK_SOURCE_MICROPHONE
CAMERA = common_pb2.TRACK_SOURCE_CAMERA
SCREEN = common_pb2.TRACK_SOURCE_SCREEN


@dataclass(frozen=True)
class Poll:
    question: str
    anonymous: bool
    correct_option_ids: frozenset[str]
    option_ids: tuple[str, ...]


@dataclass
class BuildContext:
    """What statements need beyond the event itself. `identities`: participant id -> identity;
    `roots`: session id -> its root session (itself unless a breakout room)."""

    tenant_id: str
    home_page: str
    identities: dict[str, str] = field(default_factory=dict)
    polls: dict[str, Poll] = field(default_factory=dict)
    roots: dict[str, str] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    reports: dict[str, data_pb.SessionReport] = field(default_factory=dict)
    loaded_sessions: set[str] = field(default_factory=set)

    def learn(self, envelope: event_pb2.Event, payload) -> None:
        """Remembers what later events of the same scan need (joins, polls)."""
        name = payload.DESCRIPTOR.name
        if name == "ParticipantJoined":
            self.identities[payload.participant_id] = payload.identity
        elif name == "PollCreated":
            self.polls[payload.poll_id] = poll_of(payload)


def poll_of(payload: sev.PollCreated) -> Poll:
    return Poll(
        payload.question,
        payload.anonymous,
        frozenset(payload.correct_option_ids),
        tuple(o.option_id for o in payload.options),
    )


@dataclass(frozen=True)
class Statement:
    statement_id: str
    verb_id: str
    event_id: str
    event_sequence: int
    session_id: str
    actor_identity: str
    occur_time: datetime
    body: dict

    def to_json(self) -> str:
        return json.dumps(self.body, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def statement_id(tenant_id: str, event_id: str, verb: v.Verb, identity: str = "") -> str:
    name = f"{tenant_id}/{event_id}/{verb.id}"
    if identity:
        name += f"/{identity}"
    return str(uuid.uuid5(v.NAMESPACE, name))


def registration(tenant_id: str, root_session_id: str) -> str:
    return str(uuid.uuid5(v.NAMESPACE, f"{tenant_id}/sessions/{root_session_id}"))


def home_page(template: str, tenant_id: str) -> str:
    return template.replace("{tenant_id}", tenant_id)


def timestamp(at: datetime) -> str:
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def iso_duration(seconds: float) -> str:
    """ISO 8601 duration with the 0.01 s precision xAPI keeps."""
    return f"PT{round(max(seconds, 0.0), 2):.2f}S"


def actor_name(envelope: event_pb2.Event, identity: str) -> str:
    """The account name: the person's identity, or for actions without one (the lifecycle,
    an API key) the kind and id of the envelope's actor, never an e-mail address."""
    if identity:
        return identity
    actor = envelope.actor
    if actor.identity:
        return actor.identity
    if actor.kind == common_pb2.Actor.KIND_API_KEY:
        return f"api_key/{actor.id}"
    return f"system/{actor.id or 'classwire'}"


def build(ctx: BuildContext, envelope: event_pb2.Event) -> list[Statement]:
    """The statements one event maps to (often none), in mapping order."""
    payload = unwrap(envelope)
    ctx.learn(envelope, payload)
    name = payload.DESCRIPTOR.name
    p = payload
    out: list[Statement] = []

    def add(verb: v.Verb, identity: str = "", **extra) -> None:
        out.append(_statement(ctx, envelope, verb, actor_name(envelope, identity), **extra))

    def who(participant_id: str, identity: str = "") -> str:
        return identity or ctx.identities.get(participant_id, "")

    if name == "SessionStateChanged":
        if p.state == common_pb2.SESSION_STATE_LIVE:
            add(v.INITIALIZED)
    elif name == "ParticipantJoined":
        add(v.JOINED, p.identity)
    elif name == "ParticipantLeft":
        add(v.LEFT, who(p.participant_id, p.identity))
    elif name == "SessionEnded":
        add(v.TERMINATED)
    elif name == "HandRaised":
        add(v.RAISED_HAND, who(p.participant_id, p.identity))
    elif name == "HandLowered":
        add(v.LOWERED_HAND, who(p.participant_id, p.identity))
    elif name == "ParticipantMuted":
        identity = who(p.participant_id, p.identity)
        if MIC in p.sources:
            add(v.MUTED, identity)
        if CAMERA in p.sources:
            add(v.STOPPED_CAMERA, identity)
    elif name in ("TrackMuted", "TrackUnmuted", "TrackPublished", "TrackUnpublished"):
        identity = who(p.participant_id, getattr(p, "identity", ""))
        verb = _track_verb(name, p)
        if verb is not None:
            add(verb, identity)
    elif name == "PollCreated":
        add(v.ASKED, "", poll_id=p.poll_id)
    elif name == "PollAnswered":
        poll = ctx.polls.get(p.poll_id)
        if poll is not None and not poll.anonymous:
            result: dict = {"response": "[,]".join(p.option_ids)}
            if poll.correct_option_ids:
                result["success"] = set(p.option_ids) == set(poll.correct_option_ids)
            add(v.ANSWERED, who(p.participant_id, p.identity), poll_id=p.poll_id, result=result)
    elif name == "ChatMessagePosted":
        if p.audience == sev.CHAT_AUDIENCE_EVERYONE:
            identity = who(p.sender_participant_id, p.sender_identity)
            add(v.POSTED, identity, message_id=p.message_id)
    elif name == "SessionReportReady":
        report = ctx.reports.get(p.session_id or envelope.session_id)
        if report is not None:
            for person in report.attendance:
                if person.status != data_pb.ATTENDANCE_STATUS_PRESENT or not person.identity:
                    continue
                duration = person.total_duration.ToTimedelta().total_seconds()
                out.append(
                    _statement(
                        ctx,
                        envelope,
                        v.ATTENDED,
                        person.identity,
                        result={"duration": iso_duration(duration), "completion": True},
                        summary=True,
                    )
                )
    return out


def _track_verb(name: str, p) -> v.Verb | None:
    source = p.source
    if name == "TrackPublished":
        if source == SCREEN:
            return v.SHARED_SCREEN
        if p.muted:
            return None
        return {MIC: v.UNMUTED, CAMERA: v.STARTED_CAMERA}.get(source)
    if name == "TrackUnpublished":
        return {CAMERA: v.STOPPED_CAMERA, SCREEN: v.UNSHARED_SCREEN}.get(source)
    if name == "TrackMuted":
        return {MIC: v.MUTED, CAMERA: v.STOPPED_CAMERA}.get(source)
    return {MIC: v.UNMUTED, CAMERA: v.STARTED_CAMERA}.get(source)


def _statement(
    ctx: BuildContext,
    envelope: event_pb2.Event,
    verb: v.Verb,
    identity: str,
    *,
    poll_id: str = "",
    message_id: str = "",
    result: dict | None = None,
    summary: bool = False,
) -> Statement:
    session_id = envelope.session_id
    root = ctx.roots.get(session_id, session_id)
    base = ctx.home_page.rstrip("/")
    session_activity = {
        "objectType": "Activity",
        "id": f"{base}/sessions/{session_id}",
        "definition": {"type": v.ACTIVITY_CLASSROOM},
    }
    title = ctx.titles.get(session_id)
    if title:
        session_activity["definition"]["name"] = {"en-US": title}
    if poll_id:
        poll = ctx.polls.get(poll_id)
        definition: dict = {"type": v.ACTIVITY_POLL, "interactionType": "choice"}
        if poll is not None:
            definition["description"] = {"en-US": poll.question}
            definition["choices"] = [
                {"id": o, "description": {"en-US": o}} for o in poll.option_ids
            ]
            if poll.correct_option_ids:
                definition["correctResponsesPattern"] = [
                    "[,]".join(sorted(poll.correct_option_ids))
                ]
        obj = {
            "objectType": "Activity",
            "id": f"{base}/sessions/{session_id}/polls/{poll_id}",
            "definition": definition,
        }
    elif message_id:
        obj = {
            "objectType": "Activity",
            "id": f"{base}/sessions/{session_id}/messages/{message_id}",
            "definition": {"type": v.ACTIVITY_MESSAGE},
        }
    else:
        obj = session_activity
    parents = [session_activity] if obj is not session_activity else []
    if root != session_id:
        parents.append(
            {
                "objectType": "Activity",
                "id": f"{base}/sessions/{root}",
                "definition": {"type": v.ACTIVITY_CLASSROOM},
            }
        )
    context_activities: dict = {
        "category": [
            {
                "objectType": "Activity",
                "id": v.PROFILE_ID,
                "definition": {"type": v.ACTIVITY_PROFILE},
            }
        ]
    }
    if parents:
        context_activities["parent"] = parents
    occur = envelope.occur_time.ToDatetime(tzinfo=UTC)
    sid = statement_id(ctx.tenant_id, envelope.id, verb, identity if summary else "")
    body: dict = {
        "id": sid,
        "actor": {
            "objectType": "Agent",
            "account": {"homePage": ctx.home_page, "name": identity},
        },
        "verb": {"id": verb.id, "display": {"en-US": verb.display}},
        "object": obj,
        "context": {
            "registration": registration(ctx.tenant_id, root),
            "platform": "classwire",
            "contextActivities": context_activities,
            "extensions": {
                v.EXT_EVENT_ID: envelope.id,
                v.EXT_EVENT_SEQUENCE: envelope.sequence,
            },
        },
        "timestamp": timestamp(occur),
        "version": v.XAPI_VERSION,
    }
    if result:
        body["result"] = result
    return Statement(
        statement_id=sid,
        verb_id=verb.id,
        event_id="" if summary else envelope.id,
        event_sequence=0 if summary else envelope.sequence,
        session_id=session_id,
        actor_identity=identity,
        occur_time=occur,
        body=body,
    )
