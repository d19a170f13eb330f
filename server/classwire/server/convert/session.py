"""session.v1 protos <-> session domain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import json_format

from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api

from ..domain import presence as pr
from ..domain.errors import DomainError, FieldViolation, InvalidArgument
from ..domain.media import MEDIA_ACTIONS
from ..domain.sessions import (
    AttendanceView,
    IssuedToken,
    JoinTokenInput,
    PermissionOverrides,
    RolePermissions,
    SessionFilter,
    SessionInput,
    SessionSettings,
    SessionView,
    guardian_of,
)
from ..domain.sessions import ParticipantView as ParticipantView
from . import classroom as classroom_conv
from . import media as media_conv
from . import transcription as transcription_conv
from .common import duration_or_none, set_duration, set_time


def _time(message, name: str, path: str) -> datetime | None:
    if not message.HasField(name):
        return None
    try:
        return getattr(message, name).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(FieldViolation(path, "is not a valid timestamp")) from None


def overrides_from_proto(message: pb.PermissionOverrides) -> PermissionOverrides:
    return PermissionOverrides(tuple(message.grant), tuple(message.revoke))


def overrides_to_proto(value: PermissionOverrides) -> pb.PermissionOverrides:
    return pb.PermissionOverrides(grant=list(value.grant), revoke=list(value.revoke))


def settings_from_proto(message: pb.SessionSettings) -> SessionSettings:
    def options(name: str) -> dict | None:
        if not message.HasField(name):
            return None
        return json_format.MessageToDict(getattr(message, name))

    return SessionSettings(
        waiting_room=message.waiting_room,
        learners_join_before_instructor=message.learners_join_before_instructor,
        join_window=duration_or_none(message, "join_window"),
        empty_room_timeout=duration_or_none(message, "empty_room_timeout"),
        reconnect_grace=duration_or_none(message, "reconnect_grace"),
        overrun_limit=duration_or_none(message, "overrun_limit"),
        auto_start_recording=message.auto_start_recording,
        auto_start_transcription=message.auto_start_transcription,
        recording_options=options("recording_options"),
        transcription_options=options("transcription_options"),
        role_permissions=tuple(
            RolePermissions(r.role, overrides_from_proto(r.overrides))
            for r in message.role_permissions
        ),
    )


def settings_to_proto(settings: SessionSettings) -> pb.SessionSettings:
    message = pb.SessionSettings(
        waiting_room=settings.waiting_room,
        learners_join_before_instructor=settings.learners_join_before_instructor,
        auto_start_recording=settings.auto_start_recording,
        auto_start_transcription=settings.auto_start_transcription,
        role_permissions=[
            pb.RolePermissions(role=r.role, overrides=overrides_to_proto(r.overrides))
            for r in settings.role_permissions
        ],
    )
    for name in ("join_window", "empty_room_timeout", "reconnect_grace", "overrun_limit"):
        value = getattr(settings, name)
        if value is not None:
            set_duration(getattr(message, name), value)
    if settings.recording_options is not None:
        message.recording_options.CopyFrom(
            json_format.ParseDict(settings.recording_options, media_pb.RecordingOptions())
        )
    if settings.transcription_options is not None:
        message.transcription_options.CopyFrom(
            json_format.ParseDict(settings.transcription_options, media_pb.TranscriptionOptions())
        )
    return message


def session_input_from_proto(message: pb.Session, prefix: str = "session") -> SessionInput:
    return SessionInput(
        title=message.title,
        class_id=message.class_id,
        course_id=message.course_id,
        instructor_identities=tuple(message.instructor_identities),
        scheduled_start_time=_time(
            message, "scheduled_start_time", f"{prefix}.scheduled_start_time"
        ),
        scheduled_end_time=_time(message, "scheduled_end_time", f"{prefix}.scheduled_end_time"),
        capacity=message.capacity,
        settings=settings_from_proto(message.settings),
        metadata=dict(message.metadata),
    )


def session_to_proto(view: SessionView) -> pb.Session:
    row = view.session
    message = pb.Session(
        id=row.id,
        title=row.title,
        class_id=row.class_id,
        course_id=row.course_id,
        instructor_identities=view.instructor_identities,
        state=row.state,
        capacity=row.capacity,
        settings=settings_to_proto(view.settings),
        parent_session_id=row.parent_session_id or "",
        breakout_name=row.breakout_name,
        room_locked=row.room_locked,
        metadata=dict(row.labels),
        end_reason=row.end_reason,
        end_message=row.end_message,
        connected_count=view.connected_count,
        waiting_count=view.waiting_count,
    )
    for name in (
        "scheduled_start_time",
        "scheduled_end_time",
        "create_time",
        "update_time",
        "open_time",
        "live_time",
        "end_time",
    ):
        set_time(getattr(message, name), getattr(row, name))
    return message


def filter_from_request(request: api.ListSessionsRequest) -> SessionFilter:
    return SessionFilter(
        states=tuple(request.states),
        start_from=_time(request, "scheduled_start_time_from", "scheduled_start_time_from"),
        start_to=_time(request, "scheduled_start_time_to", "scheduled_start_time_to"),
        class_id=request.class_id,
        course_id=request.course_id,
        instructor_identity=request.instructor_identity,
        parent_session_id=request.parent_session_id,
    )


def join_token_input_from_request(request: api.CreateJoinTokenRequest) -> JoinTokenInput:
    return JoinTokenInput(
        session_id=request.session_id,
        identity=request.identity,
        display_name=request.display_name,
        role=request.role,
        ttl=duration_or_none(request, "ttl"),
        permission_overrides=overrides_from_proto(request.permission_overrides),
        guardian_of_identities=tuple(request.guardian_of_identities),
        metadata=dict(request.metadata),
    )


def token_to_response(issued: IssuedToken) -> api.CreateJoinTokenResponse:
    response = api.CreateJoinTokenResponse(
        token=issued.token, token_id=issued.token_id, participant_id=issued.participant_id
    )
    set_time(response.expire_time, issued.expire_time)
    return response


SETTINGS_FIELDS = frozenset(SessionSettings.__dataclass_fields__)
SESSION_UPDATABLE = frozenset(
    {
        "title",
        "class_id",
        "course_id",
        "instructor_identities",
        "scheduled_start_time",
        "scheduled_end_time",
        "capacity",
        "settings",
        "metadata",
    }
    | {f"settings.{name}" for name in SETTINGS_FIELDS}
)
PARTICIPANT_UPDATABLE = frozenset({"role", "permission_overrides", "display_name", "metadata"})


def participant_to_proto(view: ParticipantView) -> pb.Participant:
    p = view.participant
    message = pb.Participant(
        id=p.id,
        session_id=p.session_id,
        room_session_id=p.room_session_id or "",
        identity=p.identity,
        display_name=p.display_name,
        role=p.role,
        state=p.state,
        permissions=list(view.permissions),
        permission_overrides=overrides_to_proto(
            PermissionOverrides.from_json(p.permission_overrides or {})
        ),
        guardian_of_identities=guardian_of(p),
        leave_reason=p.leave_reason,
        reconnect_count=p.reconnect_count,
        metadata=dict(p.labels or {}),
    )
    for name in ("first_join_time", "join_time", "leave_time"):
        set_time(getattr(message, name), getattr(p, name))
    return message


def snapshot_to_proto(snapshot: pr.Snapshot) -> pb.SessionSnapshot:
    message = pb.SessionSnapshot(
        session=session_to_proto(snapshot.session),
        local_participant=participant_to_proto(snapshot.local),
        participants=[participant_to_proto(p) for p in snapshot.participants],
        session_sequence=snapshot.session_sequence,
    )
    tracks = getattr(snapshot, "tracks", None) or {}
    for participant in [message.local_participant, *message.participants]:
        for view in tracks.get(participant.id, ()):
            participant.tracks.append(media_conv.track_to_proto(view))
    return message


def attendance_to_proto(view: AttendanceView) -> pb.Attendance:
    message = pb.Attendance(session_id=view.session_id, finalized=view.finalized)
    for mark in view.participants:
        p = mark.participant
        entry = message.participants.add(
            participant_id=p.id,
            identity=p.identity,
            display_name=p.display_name,
            role=p.role,
            late=mark.late_by > timedelta(0),
            left_early=mark.left_early_by > timedelta(0),
            reconnect_count=p.reconnect_count,
        )
        set_duration(entry.total_duration, mark.total)
        set_duration(entry.late_by, mark.late_by)
        set_duration(entry.left_early_by, mark.left_early_by)
        for interval in mark.intervals:
            item = entry.intervals.add(
                room_session_id=interval.room_session_id, leave_reason=interval.leave_reason
            )
            set_time(item.join_time, interval.join_time)
            set_time(item.leave_time, interval.leave_time)
    return message


def action_error(action_id: str, error: DomainError) -> api.ConnectResponse:
    from ..rpc.errors import STATUS_OF  # the one table of codes

    code = 2
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            code = STATUS_OF[cls].value[0]
            break
    failure = api.ConnectResponse.ActionError(
        code=code, reason=error.reason, message=error.message, metadata=error.metadata
    )
    for violation in getattr(error, "violations", ()):
        failure.field_violations.add(field=violation.field, description=violation.description)
    return api.ConnectResponse(action_id=action_id, error=failure)


def connect_response(item) -> api.ConnectResponse:
    if isinstance(item, pr.Push):
        return api.ConnectResponse(sequence=item.sequence, event=item.event)
    if isinstance(item, (pr.HandQueue, pr.PollResults)):
        # One item is shared by every connection of its audience: convert it once.
        response = getattr(item, "response", None)
        if response is None:
            response = item.response = _shared_push(item)
        return response
    if isinstance(item, pr.Ack):
        return api.ConnectResponse(
            action_id=item.action_id, ack=api.ConnectResponse.ActionAck(created_id=item.created_id)
        )
    if isinstance(item, pr.ActionFailed):
        return action_error(item.action_id, item.error)
    if isinstance(item, pr.Joined):
        joined = api.ConnectResponse.Joined(
            participant_id=item.participant_id,
            resume_token=item.resume_token,
            resumed=item.resumed,
            snapshot=snapshot_to_proto(item.snapshot),
            last_sequence=item.last_sequence,
        )
        set_duration(joined.reconnect_grace, item.grace)
        return api.ConnectResponse(joined=joined)
    if isinstance(item, pr.RoomEntered):
        return api.ConnectResponse(
            sequence=item.sequence,
            room_entered=api.ConnectResponse.RoomEntered(
                reason=item.reason, snapshot=snapshot_to_proto(item.snapshot)
            ),
        )
    if isinstance(item, pr.Pong):
        pong = api.ConnectResponse.Pong()
        if item.client_time is not None:
            pong.client_time.CopyFrom(item.client_time)
        set_time(pong.server_time, item.server_time)
        return api.ConnectResponse(action_id=item.action_id, pong=pong)
    if isinstance(item, pr.Disconnect):
        return api.ConnectResponse(
            disconnect=api.ConnectResponse.Disconnect(reason=item.reason, message=item.message)
        )
    media = media_conv.connect_response(item)
    if media is not None:
        return media
    raise TypeError(f"no conversion for {type(item).__name__}")


def _shared_push(item) -> api.ConnectResponse:
    if isinstance(item, pr.HandQueue):
        return api.ConnectResponse(
            sequence=item.sequence,
            hand_queue_update=api.ConnectResponse.HandQueueUpdate(
                entries=classroom_conv.hand_queue_to_proto(item.entries)
            ),
        )
    return api.ConnectResponse(
        sequence=item.sequence,
        poll_results_update=api.ConnectResponse.PollResultsUpdate(
            poll_id=item.poll_id, results=classroom_conv.poll_results_to_proto(item.view)
        ),
    )


MAX_ACTION_ID = 64


def action_from_request(request: api.ConnectRequest) -> pr.Action:
    """A client message as a domain action. Invalid ones become an `invalid` action carrying
    the error, so the stream answers with an ActionError and goes on."""
    action_id = request.action_id
    try:
        if len(action_id) > MAX_ACTION_ID:
            raise InvalidArgument(
                FieldViolation("action_id", f"must be at most {MAX_ACTION_ID} characters")
            )
        kind = request.WhichOneof("action")
        if kind is None:
            raise InvalidArgument(FieldViolation("action", "is required"))
        return pr.Action(action_id, kind, _action_args(kind, getattr(request, kind)))
    except InvalidArgument as exc:
        return pr.Action(action_id[:MAX_ACTION_ID], "invalid", {"error": exc})


def _target(message, one: str, every: str, path: str) -> str | None:
    """The participant id of a oneof target, or None for "everyone" (which must be true)."""
    which = message.WhichOneof("target")
    if which == one:
        if not getattr(message, one):
            raise InvalidArgument(FieldViolation(f"{path}.{one}", "must not be empty"))
        return getattr(message, one)
    if which == every and getattr(message, every):
        return None
    raise InvalidArgument(FieldViolation(f"{path}.target", f"set {one} or {every}: true"))


def _action_args(kind: str, m) -> dict:
    if kind == "join":
        return {
            "resume_token": m.resume_token,
            "after_sequence": m.after_sequence,
            "manual_subscription": m.manual_subscription,
        }
    if kind == "ping":
        return {"client_time": m.client_time if m.HasField("client_time") else None}
    if kind == "leave" or kind == "raise_hand" or kind in ("start_session",):
        return {}
    if kind == "lower_hand":
        which = m.WhichOneof("target")
        if which is None:
            return {"args": ("",)}  # the participant's own hand: resolved below
        return {"args": (_target(m, "participant_id", "all", "lower_hand"),)}
    if kind == "send_chat":
        from ..domain.classroom import ChatDraft

        return {
            "args": (
                ChatDraft(
                    text=m.text,
                    audience=m.audience,
                    recipient_participant_id=m.recipient_participant_id,
                    reply_to_message_id=m.reply_to_message_id,
                ),
            )
        }
    if kind == "answer_poll":
        from ..domain.classroom import PollAnswerInput

        return {"args": (PollAnswerInput(m.poll_id, tuple(m.option_ids)),)}
    if kind == "react":
        return {"args": (m.emoji,)}
    if kind == "admit":
        return {"participant_id": _target(m, "participant_id", "all_waiting", "admit")}
    if kind == "deny":
        return {"participant_id": m.participant_id, "message": m.message}
    if kind == "mute_participant":
        return {
            "participant_id": _target(m, "participant_id", "all_learners", "mute_participant"),
            "sources": tuple(m.sources),
        }
    if kind == "remove":
        return {
            "participant_id": m.participant_id,
            "message": m.message,
            "block_rejoin": m.block_rejoin,
        }
    if kind == "set_room_lock":
        return {"locked": m.locked, "message": m.message}
    if kind == "update_participant":
        paths = []
        if m.role:
            paths.append("role")
        if m.HasField("permission_overrides"):
            paths.append("permission_overrides")
        if not paths:
            raise InvalidArgument(
                FieldViolation("update_participant", "set role or permission_overrides")
            )
        return {
            "participant_id": m.participant_id,
            "paths": paths,
            "role": m.role or None,
            "overrides": overrides_from_proto(m.permission_overrides)
            if m.HasField("permission_overrides")
            else None,
            "display_name": None,
            "metadata": None,
        }
    if kind == "end_session":
        return {"message": m.message}
    if kind == "delete_chat":
        return {"message_id": m.message_id}
    if kind == "create_poll":
        return {"poll": classroom_conv.poll_draft_from_proto(m.poll)}
    if kind == "close_poll":
        return {"poll_id": m.poll_id}
    if kind == "open_breakouts":
        return {"plan": classroom_conv.plan_from_proto(m.plan)}
    if kind == "move_participant":
        return {"participant_id": m.participant_id, "to_session_id": m.to_session_id}
    if kind == "broadcast_to_breakouts":
        return {"text": m.text}
    if kind == "close_breakouts":
        return {"countdown": duration_or_none(m, "countdown")}
    if kind in MEDIA_ACTIONS:
        return media_conv.action_args(kind, m)
    if kind == "start_transcription":
        return {"options": transcription_conv.options_from_proto(m.options)}
    if kind in ("start_recording", "stop_recording", "recording_consent"):
        from . import recordings as recording_conv

        return recording_conv.action_args(kind, m)
    return {}
