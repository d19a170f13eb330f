"""session.v1 protos <-> session domain values."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import json_format

from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api

from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.sessions import (
    IssuedToken,
    JoinTokenInput,
    PermissionOverrides,
    RolePermissions,
    SessionFilter,
    SessionInput,
    SessionSettings,
    SessionView,
)
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
