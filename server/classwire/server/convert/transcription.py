"""Transcription: domain views <-> media.v1 and data.v1 messages, and the transcript formats
(WebVTT, SubRip, plain text)."""

from __future__ import annotations

from datetime import timedelta

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.media.v1 import resources_pb2 as media_pb

from ..domain.transcription import Options, StatusView, TranscriptView
from ..domain.transcription_engines import EngineInfo
from ..store.documentation_models import TranscriptSegmentRow
from .common import set_duration, set_time


def options_from_proto(message: media_pb.TranscriptionOptions) -> Options:
    return Options(engine=message.engine.strip(), language=message.language.strip())


def status_to_proto(view: StatusView) -> media_pb.TranscriptionStatus:
    status = media_pb.TranscriptionStatus(session_id=view.session_id, state=view.state)
    row = view.row
    if row is not None:
        status.options.engine = row.engine
        status.options.language = row.language
        status.auto_started = row.auto_started
        actor = row.started_by or {}
        status.started_by.CopyFrom(
            common_pb2.Actor(
                kind=actor.get("kind", 0),
                id=actor.get("id", ""),
                identity=actor.get("identity", ""),
            )
        )
        set_time(status.start_time, row.start_time)
        set_time(status.stop_time, row.stop_time)
    for track in view.tracks:
        status.tracks.add(
            track_id=track.track_id,
            participant_id=track.participant_id,
            state=track.state,
            final_caption_count=track.final_caption_count,
            failure_reason=track.failure_reason,
            failure_message=track.failure_message,
        )
    return status


def engine_to_proto(info: EngineInfo, tenant_default: str) -> media_pb.TranscriptionEngine:
    return media_pb.TranscriptionEngine(
        name=info.name,
        display_name=info.display_name,
        languages=list(info.languages),
        tenant_default=info.name == tenant_default,
        available=info.available,
        unavailable_message=info.unavailable_message,
    )


def transcript_to_proto(view: TranscriptView) -> data_pb.Transcript:
    transcript = data_pb.Transcript(
        session_id=view.session_id,
        state=view.state,
        segment_count=view.segment_count,
        languages=view.languages,
        engines=view.engines,
    )
    set_duration(transcript.speech_duration, view.speech_duration)
    set_time(transcript.update_time, view.update_time)
    set_time(transcript.complete_time, view.complete_time)
    return transcript


def segment_to_proto(row: TranscriptSegmentRow) -> data_pb.TranscriptSegment:
    segment = data_pb.TranscriptSegment(
        segment_id=row.id,
        session_id=row.session_id,
        participant_id=row.participant_id,
        identity=row.identity,
        display_name=row.display_name,
        track_id=row.track_id,
        text=row.text,
        confidence=row.confidence,
        language=row.language,
    )
    set_duration(segment.start_offset, timedelta(milliseconds=row.start_offset_ms))
    set_duration(segment.end_offset, timedelta(milliseconds=row.end_offset_ms))
    set_time(segment.start_time, row.start_time)
    set_time(segment.end_time, row.end_time)
    return segment


# -- formats -------------------------------------------------------------------------------------


def _clock(ms: int, separator: str) -> str:
    hours, rest = divmod(max(0, ms), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def _one_line(text: str) -> str:
    # A blank line ends a cue in both subtitle formats; `-->` would start a timing line.
    return " ".join(text.split()).replace("-->", "->")


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _speaker(row: TranscriptSegmentRow) -> str:
    return _one_line(row.display_name or row.identity or row.participant_id)


def _end_ms(row: TranscriptSegmentRow) -> int:
    # Cue end times must follow their start times.
    return max(row.end_offset_ms, row.start_offset_ms + 1)


def render_cues(
    fmt: int,
    rows: list[TranscriptSegmentRow],
    first_number: int,
    header: bool,
    *,
    omit_speakers: bool = False,
) -> str:
    """The text of one chunk: the file header when `header`, else the cues of `rows`, numbered
    from `first_number + 1` (SRT numbers its cues)."""
    if fmt == data_pb.TRANSCRIPT_FORMAT_WEBVTT:
        if header:
            return "WEBVTT\n\n"
        parts = []
        for row in rows:
            text = _vtt_escape(_one_line(row.text))
            if not omit_speakers:
                text = f"<v {_vtt_escape(_speaker(row))}>{text}</v>"
            parts.append(
                f"{_clock(row.start_offset_ms, '.')} --> {_clock(_end_ms(row), '.')}\n{text}\n\n"
            )
        return "".join(parts)
    if fmt == data_pb.TRANSCRIPT_FORMAT_SRT:
        if header:
            return ""
        parts = []
        for i, row in enumerate(rows, start=first_number + 1):
            text = _one_line(row.text)
            if not omit_speakers:
                text = f"{_speaker(row)}: {text}"
            parts.append(
                f"{i}\n{_clock(row.start_offset_ms, ',')} --> {_clock(_end_ms(row), ',')}\n"
                f"{text}\n\n"
            )
        return "".join(parts)
    if header:
        return ""
    lines = []
    for row in rows:
        stamp = _clock(row.start_offset_ms, ".")[:8]
        text = _one_line(row.text)
        lines.append(
            f"[{stamp}] {text}\n" if omit_speakers else f"[{stamp}] {_speaker(row)}: {text}\n"
        )
    return "".join(lines)
