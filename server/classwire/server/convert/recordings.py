"""media.v1 recordings <-> recording domain values, and the recording actions of Connect."""

from __future__ import annotations

from datetime import timedelta

from classwire.api.common.v1 import common_pb2
from classwire.api.media.v1 import resources_pb2 as pb

from ..domain import recordings as r
from ..domain.errors import FieldViolation, InvalidArgument
from .common import set_duration, set_time


def _actor(data: dict) -> common_pb2.Actor:
    kind = data.get("kind", 0)
    # An API key's id is not shown to partners or participants.
    shown = "" if kind == common_pb2.Actor.KIND_API_KEY else data.get("id", "")
    return common_pb2.Actor(kind=kind, id=shown, identity=data.get("identity", ""))


def file_to_proto(row) -> pb.RecordingFile:
    message = pb.RecordingFile(
        id=row.id,
        kind=row.kind,
        participant_id=row.participant_id,
        identity=row.identity,
        track_ids=list(row.track_ids or []),
        mime_type=row.mime_type,
        size_bytes=row.size_bytes,
        ready=row.ready,
    )
    set_duration(message.duration, timedelta(milliseconds=row.duration_ms))
    set_time(message.start_time, row.start_time)
    return message


def recording_to_proto(view: r.RecordingView) -> pb.Recording:
    row = view.row
    message = pb.Recording(
        id=row.id,
        session_id=row.session_id,
        state=row.state,
        options=r.options_of(row),
        auto_started=row.auto_started,
        started_by=_actor(row.started_by or {}),
        files=[file_to_proto(f) for f in view.files],
        total_size_bytes=sum(f.size_bytes for f in view.files),
        failure_reason=row.failure_reason,
        failure_message=row.failure_message,
        declined_participant_ids=list(row.declined_participant_ids or []),
    )
    set_time(message.start_time, row.start_time)
    if row.stop_time is not None:
        set_time(message.stop_time, row.stop_time)
    if row.ready_time is not None:
        set_time(message.ready_time, row.ready_time)
    set_duration(message.duration, view.duration)
    return message


def selector_from_request(request) -> r.FileSelector | None:
    which = request.WhichOneof("file")
    if which == "file_id":
        if not request.file_id:
            raise InvalidArgument(FieldViolation("file_id", "must not be empty"))
        return r.FileSelector(file_id=request.file_id)
    if which == "participant_file":
        f = request.participant_file
        return r.FileSelector(participant_id=f.participant_id, kind=f.kind)
    if which == "mixed_audio":
        return r.FileSelector(mixed=True)
    return None


def action_args(kind: str, message) -> dict:
    """The domain arguments of a recording action of ConnectRequest."""
    if kind == "start_recording":
        return {"options": message.options if message.HasField("options") else None}
    if kind == "recording_consent":
        which = message.WhichOneof("answer")
        if which is None or not getattr(message, which):
            raise InvalidArgument(
                FieldViolation("recording_consent.answer", "set grant: true or decline: true")
            )
        if not message.recording_id:
            raise InvalidArgument(FieldViolation("recording_consent.recording_id", "is required"))
        return {"recording_id": message.recording_id, "grant": which == "grant"}
    return {}
