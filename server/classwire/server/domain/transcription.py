"""Live transcription: control, recognizers on published audio tracks, stored transcripts.

State lives in the database (`transcriptions`, `transcription_tracks`, `transcript_segments`)
and every change commits with its event. Recognizers live in the process that decodes the
tracks: the media domain tells this one (an AudioTrackListener) when audio tracks start and end,
and StartTranscription attaches recognizers to the tracks already published.

Captions: final captions are durable (a CaptionFinal event and a transcript segment in one unit
of work). Partial captions travel the same log, so participants and WatchSession receive them in
order with everything else, but only until their utterance is final: the unit of work that
writes the final caption deletes the utterance's partial events, and the one that completes the
transcript deletes any left over. The log keeps the finals, not every interim guess.

The session lifecycle is followed from the log (SessionStateChanged to LIVE auto-starts when
the session's settings say so; SessionEnded stops, flushes the recognizers and announces
TranscriptReady); a pass at start-up catches up with what happened while the server was down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import media_events_pb2 as mev
from classwire.api.events.v1 import session_events_pb2 as sev
from classwire.api.media.v1 import resources_pb2 as media_pb

from ..events.outbox import UnitOfWorkFactory, system_actor
from ..store import repositories as repo
from ..store import transcription_repositories as trepo
from ..store.documentation_models import (
    TranscriptionRow,
    TranscriptionTrackRow,
    TranscriptSegmentRow,
)
from ..store.engine import Database
from ..store.models import LiveSession
from ..store.types import utcnow
from . import paging
from .auth import Principal
from .errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from .ids import new_id
from .platform import TenantSettings, actor_of
from .session_lifecycle import SessionLifecycle
from .sessions import SessionSettings, effective_permissions
from .transcription_engines import EngineInfo, EngineRegistry
from .transcription_pipeline import Caption, Recognizer

log = structlog.get_logger(__name__)

STOPPED = media_pb.TRANSCRIPTION_STATE_STOPPED
STARTING = media_pb.TRANSCRIPTION_STATE_STARTING
RUNNING = media_pb.TRANSCRIPTION_STATE_RUNNING
FAILED = media_pb.TRANSCRIPTION_STATE_FAILED
TRACK_RUNNING = media_pb.TRACK_TRANSCRIPTION_STATE_RUNNING
TRACK_FAILED = media_pb.TRACK_TRANSCRIPTION_STATE_FAILED
TRACK_FINISHED = media_pb.TRACK_TRANSCRIPTION_STATE_FINISHED
T_NONE = data_pb.TRANSCRIPT_STATE_NONE
T_IN_PROGRESS = data_pb.TRANSCRIPT_STATE_IN_PROGRESS
T_COMPLETE = data_pb.TRANSCRIPT_STATE_COMPLETE
T_PARTIAL = data_pb.TRANSCRIPT_STATE_PARTIAL
LIVE = common_pb2.SESSION_STATE_LIVE
ENDED = common_pb2.SESSION_STATE_ENDED
CANCELLED = common_pb2.SESSION_STATE_CANCELLED
MANAGE_MEDIA = sev.PARTICIPANT_PERMISSION_MANAGE_MEDIA

PARTIAL_TYPE = mev.CaptionPartial.DESCRIPTOR.full_name
MAX_SPEAKER_FILTER = 100
EXPORT_CHUNK = 200  # segments per export chunk


# -- the media plane's side (domain/media.py) ----------------------------------------------


class PublishedAudioTrackLike(Protocol):
    tenant_id: str
    session_id: str
    main_session_id: str
    track_id: str
    participant_id: str
    identity: str


# -- views ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    engine: str = ""
    language: str = ""


@dataclass
class StatusView:
    session_id: str
    row: TranscriptionRow | None
    tracks: list[TranscriptionTrackRow] = field(default_factory=list)

    @property
    def state(self) -> int:
        if self.row is None:
            return STOPPED
        if (
            self.row.state == RUNNING
            and self.tracks
            and all(t.state == TRACK_FAILED for t in self.tracks)
        ):
            return FAILED
        return self.row.state


@dataclass
class TranscriptView:
    session_id: str
    state: int
    segment_count: int = 0
    languages: list[str] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)
    speech_duration: timedelta = timedelta(0)
    update_time: datetime | None = None
    complete_time: datetime | None = None


@dataclass(frozen=True)
class ExportFormat:
    media_type: str
    extension: str


FORMATS = {
    data_pb.TRANSCRIPT_FORMAT_WEBVTT: ExportFormat("text/vtt", "vtt"),
    data_pb.TRANSCRIPT_FORMAT_SRT: ExportFormat("application/x-subrip", "srt"),
    data_pb.TRANSCRIPT_FORMAT_PLAIN_TEXT: ExportFormat("text/plain", "txt"),
}


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")


def _actor_json(actor: common_pb2.Actor) -> dict:
    return {"kind": actor.kind, "id": actor.id, "identity": actor.identity}


def _origin(room: LiveSession) -> datetime:
    return room.live_time or room.open_time or room.create_time


# -- the domain ----------------------------------------------------------------------------------


class _Live:
    """The recognizers running on this replica for one room."""

    def __init__(self) -> None:
        self.recognizers: dict[str, Recognizer] = {}


class TranscriptionDomain:
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        sessions: Any,
        engines: EngineRegistry,
    ) -> None:
        self.db = db
        self.uow = uow
        self.sessions = sessions
        self.engines = engines
        self.media: Any = None
        self._rooms: dict[tuple[str, str], _Live] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        # The participant connection's start/stop transcription actions come here.
        presence = getattr(sessions, "presence", None)
        if presence is not None:
            presence.transcription = self

    # -- wiring ------------------------------------------------------------------------------------

    def attach_media(self, media: Any) -> None:
        """Listens to the media domain's audio tracks and taps their decoded audio."""
        self.media = media
        media.add_audio_listener(self)

    def follow(self, lifecycle: SessionLifecycle) -> None:
        """Acts on sessions going live (auto-start) and ending (stop, flush, TranscriptReady),
        after catching up with what happened while no replica followed."""
        lifecycle.listen(self._on_event, label="transcription", catch_up=self._catch_up)

    async def close(self) -> None:
        for live in list(self._rooms.values()):
            for recognizer in list(live.recognizers.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(recognizer.finish(), 5.0)
        self._rooms.clear()
        await self.engines.close()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    # -- access ------------------------------------------------------------------------------------

    async def _authorize(self, session, principal: Principal, session_id: str, write: bool):
        """`media:write`/`media:read`, or a participant token of this session (or its parent),
        with MANAGE_MEDIA to change anything. Returns the room; NOT_FOUND across tenants."""
        if principal.participant is None:
            principal.require("media:write" if write else "media:read")
        if not session_id:
            raise InvalidArgument(FieldViolation("session_id", "is required"))
        room = await repo.get_live_session(session, principal.tenant_id, session_id)
        if principal.participant is not None:
            await self.sessions._authorize_read(session, principal, session_id)
            if write:
                claims = principal.participant
                actor = await repo.get_participant(
                    session, principal.tenant_id, claims.participant_id
                )
                main = await repo.get_live_session(session, principal.tenant_id, claims.session_id)
                settings = SessionSettings.from_json(main.settings) if main else SessionSettings()
                if actor is None or MANAGE_MEDIA not in effective_permissions(actor, settings):
                    raise PermissionDenied(
                        "this action needs the MANAGE_MEDIA permission",
                        reason="MISSING_PERMISSION",
                        metadata={"permission": "PARTICIPANT_PERMISSION_MANAGE_MEDIA"},
                    )
        if room is None:
            raise _not_found(session_id)
        return room

    # -- engines -----------------------------------------------------------------------------------

    async def list_engines(self, principal: Principal) -> tuple[list[EngineInfo], str]:
        principal.require("media:read")
        async with self.db.reader() as session:
            tenant = await repo.get_tenant(session, principal.tenant_id)
        settings = TenantSettings.from_json(tenant.settings if tenant else {})
        default = settings.default_transcription_engine or self.engines.server_default
        return await self.engines.describe(), default

    async def _resolve(self, session, room: LiveSession, requested: Options, prefix: str):
        """Engine and language: the request, then the session's settings, then the tenant's
        defaults, then the server's."""
        main = room
        if room.parent_session_id:
            main = await repo.get_live_session(session, room.tenant_id, room.parent_session_id)
        configured = (
            (SessionSettings.from_json(main.settings).transcription_options or {}) if main else {}
        )
        tenant = await repo.get_tenant(session, room.tenant_id)
        defaults = TenantSettings.from_json(tenant.settings if tenant else {})
        engine_name = (
            requested.engine
            or configured.get("engine", "")
            or defaults.default_transcription_engine
            or self.engines.server_default
        )
        language = (
            requested.language
            or configured.get("language", "")
            or defaults.default_transcription_language
            or "en-US"
        )
        engine_field = f"{prefix}.engine" if requested.engine else f"{prefix}.engine"
        engine, tag = await self.engines.resolve(
            engine_name,
            language,
            engine_field=engine_field,
            language_field=f"{prefix}.language",
        )
        return engine_name, engine, tag

    # -- control -----------------------------------------------------------------------------------

    async def start_transcription(
        self, principal: Principal, session_id: str, options: Options, prefix: str = "options"
    ) -> StatusView:
        async with self.db.reader() as session:
            room = await self._authorize(session, principal, session_id, write=True)
            if room.state != LIVE:
                raise FailedPrecondition("the session is not live", reason="SESSION_NOT_LIVE")
            engine_name, _, language = await self._resolve(session, room, options, prefix)
        await self._start(
            principal.tenant_id, room.id, engine_name, language, actor_of(principal), False
        )
        return await self._status(principal.tenant_id, room.id)

    async def _start(
        self,
        tenant_id: str,
        room_id: str,
        engine_name: str,
        language: str,
        actor: common_pb2.Actor,
        auto: bool,
    ) -> bool:
        """Marks the room RUNNING with its event (idempotent for the same options), then
        attaches recognizers. False when it was already running with these options."""
        async with self.uow(tenant_id, actor) as uow:
            room = await repo.lock_live_session(uow.session, tenant_id, room_id)
            if room is None or room.state != LIVE:
                if auto:
                    return False
                raise FailedPrecondition("the session is not live", reason="SESSION_NOT_LIVE")
            row = await trepo.get_transcription(uow.session, room_id)
            now = utcnow()
            if row is not None and row.state == RUNNING:
                if (row.engine, row.language) == (engine_name, language):
                    started = False
                elif auto:
                    return False
                else:
                    raise FailedPrecondition(
                        f"transcription is running with engine {row.engine!r} and language "
                        f"{row.language!r}; stop it first",
                        reason="TRANSCRIPTION_ALREADY_RUNNING",
                    )
            else:
                if row is None:
                    row = TranscriptionRow(
                        session_id=room_id,
                        tenant_id=tenant_id,
                        engines=[],
                        transcript_state=T_IN_PROGRESS,
                        started_by={},
                        start_time=now,
                        update_time=now,
                        state=STARTING,
                        engine=engine_name,
                        language=language,
                    )
                    uow.session.add(row)
                row.state = RUNNING
                row.engine, row.language = engine_name, language
                row.auto_started = auto
                row.started_by = _actor_json(actor)
                row.start_time = row.update_time = now
                row.stop_time = None
                row.transcript_state = T_IN_PROGRESS
                row.complete_time = None
                if engine_name not in row.engines:
                    row.engines = [*row.engines, engine_name]
                uow.emit(
                    mev.TranscriptionStarted(
                        engine=engine_name, language=language, auto_started=auto
                    ),
                    session_id=room_id,
                    occur_time=now,
                )
                started = True
        if self.media is not None:
            for track in self.media.published_audio_tracks(tenant_id, room_id):
                await self._attach(track)
        return started

    async def stop_transcription(self, principal: Principal, session_id: str) -> StatusView:
        async with self.db.reader() as session:
            room = await self._authorize(session, principal, session_id, write=True)
        await self._stop(
            principal.tenant_id,
            room.id,
            mev.TranscriptionStopped.REASON_REQUESTED,
            actor_of(principal),
        )
        return await self._status(principal.tenant_id, room.id)

    async def _stop(self, tenant_id: str, room_id: str, reason: int, actor) -> bool:
        async with self.uow(tenant_id, actor) as uow:
            row = await trepo.get_transcription(uow.session, room_id, lock=True)
            if row is None or row.state != RUNNING:
                return False
            now = utcnow()
            row.state = STOPPED
            row.stop_time = row.update_time = now
            uow.emit(mev.TranscriptionStopped(reason=reason), session_id=room_id, occur_time=now)
        live = self._rooms.get((tenant_id, room_id))
        if live is not None:
            await asyncio.gather(
                *(r.finish() for r in list(live.recognizers.values())), return_exceptions=True
            )
        return True

    async def get_status(self, principal: Principal, session_id: str) -> StatusView:
        async with self.db.reader() as session:
            room = await self._authorize(session, principal, session_id, write=False)
        return await self._status(principal.tenant_id, room.id)

    async def _status(self, tenant_id: str, room_id: str) -> StatusView:
        async with self.db.reader() as session:
            row = await trepo.get_transcription(session, room_id)
            if row is not None and row.tenant_id != tenant_id:
                row = None
            tracks = await trepo.tracks_of(session, tenant_id, room_id)
        return StatusView(room_id, row, tracks)

    # -- audio tracks (AudioTrackListener) -----------------------------------------------------

    async def audio_track_started(self, track: PublishedAudioTrackLike) -> None:
        async with self.db.reader() as session:
            row = await trepo.get_transcription(session, track.session_id)
        if row is not None and row.tenant_id == track.tenant_id and row.state == RUNNING:
            await self._attach(track)

    async def audio_track_ended(self, track: PublishedAudioTrackLike) -> None:
        # The tap ends with the track; the recognizer flushes and finishes by itself.
        live = self._rooms.get((track.tenant_id, track.session_id))
        recognizer = live.recognizers.get(track.track_id) if live else None
        if recognizer is not None and recognizer.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(recognizer.task), 10.0)

    async def _attach(
        self, track: PublishedAudioTrackLike, audio: AsyncIterator | None = None
    ) -> None:
        async with self._lock:
            live = self._rooms.setdefault((track.tenant_id, track.session_id), _Live())
            current = live.recognizers.get(track.track_id)
            if current is not None and current.task is not None and not current.task.done():
                return
            async with self.db.reader() as session:
                row = await trepo.get_transcription(session, track.session_id)
                room = await repo.get_live_session(session, track.tenant_id, track.session_id)
                participant = await repo.get_participant(
                    session, track.tenant_id, track.participant_id
                )
            if row is None or row.state != RUNNING or room is None:
                return
            sink = _TrackSink(
                self,
                track,
                row.engine,
                participant.display_name if participant else track.identity,
                _origin(room),
            )
            await sink.register()
            try:
                engine = await self.engines.engine(row.engine)
            except FailedPrecondition as exc:
                await sink.failed("ENGINE_UNAVAILABLE", exc.message)
                return
            if audio is None:
                if self.media is None:
                    return
                audio = self.media.audio_tap(track, sample_rate=16000)
            recognizer = Recognizer(
                engine, row.language, audio, sink, label=f"{track.session_id}/{track.track_id}"
            )
            live.recognizers[track.track_id] = recognizer
            task = recognizer.start()
            task.add_done_callback(lambda _t, key=track.track_id: self._spawn(sink.finished()))

    async def attach_audio(self, track: PublishedAudioTrackLike, audio: AsyncIterator) -> None:
        """Attaches a recognizer to decoded audio the caller brings (offline replays and
        benchmarks use it; live tracks come through the media plane's tap)."""
        await self._attach(track, audio)

    async def wait_track(self, track: PublishedAudioTrackLike) -> None:
        """Returns once the track's recognizer has flushed its last segments."""
        live = self._rooms.get((track.tenant_id, track.session_id))
        recognizer = live.recognizers.get(track.track_id) if live else None
        if recognizer is not None and recognizer.task is not None:
            await asyncio.shield(recognizer.task)
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- captions --------------------------------------------------------------------------------

    async def _write_partial(self, sink: _TrackSink, caption: Caption) -> None:
        async with self.uow(sink.track.tenant_id, system_actor("transcription")) as uow:
            row = await trepo.get_transcription(uow.session, sink.track.session_id)
            if row is None or row.state != RUNNING:
                return
            uow.emit(sink.caption_event(caption, final=False), session_id=sink.track.session_id)
            written = await uow.write_pending()
        sink.partial_ids.setdefault(caption.utterance_id, []).extend(e.id for e in written)

    async def _write_final(self, sink: _TrackSink, caption: Caption) -> None:
        track = sink.track
        stale = sink.partial_ids.pop(caption.utterance_id, [])
        async with self.uow(track.tenant_id, system_actor("transcription")) as uow:
            uow.session.add(
                TranscriptSegmentRow(
                    id=new_id("seg"),
                    tenant_id=track.tenant_id,
                    session_id=track.session_id,
                    participant_id=track.participant_id,
                    identity=track.identity,
                    display_name=sink.display_name,
                    track_id=track.track_id,
                    utterance_id=caption.utterance_id,
                    start_time=caption.start,
                    end_time=caption.end,
                    start_offset_ms=max(0, _ms(caption.start - sink.origin)),
                    end_offset_ms=max(0, _ms(caption.end - sink.origin)),
                    text=caption.text[:10_000],
                    confidence=caption.confidence,
                    language=caption.language,
                    engine=sink.engine,
                )
            )
            await trepo.count_final_caption(uow.session, track.session_id, track.track_id, utcnow())
            if stale:
                # The final replaces its partials: the log keeps the final only.
                await trepo.delete_caption_events(uow.session, track.tenant_id, stale)
            uow.emit(sink.caption_event(caption, final=True), session_id=track.session_id)

    async def _track_state(
        self, track: PublishedAudioTrackLike, state: int, reason: str = "", message: str = ""
    ) -> None:
        async with self.uow(track.tenant_id, system_actor("transcription")) as uow:
            row = await trepo.get_track(uow.session, track.session_id, track.track_id, lock=True)
            if row is None or row.state == TRACK_FAILED:
                return
            row.state = state
            row.update_time = utcnow()
            if state == TRACK_FAILED:
                row.failure_reason, row.failure_message = reason, message
                uow.emit(
                    mev.TranscriptionEngineFailed(
                        engine=row.engine,
                        track_id=track.track_id,
                        participant_id=track.participant_id,
                        reason=reason,
                        message=message,
                    ),
                    session_id=track.session_id,
                )

    # -- the session lifecycle ---------------------------------------------------------------------

    async def _on_event(self, envelope: event_pb2.Event) -> None:
        name = envelope.type.rsplit(".", 1)[-1]
        if name == "SessionStateChanged" and envelope.session.session_state_changed.state == LIVE:
            await self._auto_start(envelope.tenant_id, envelope.session_id)
        elif name == "SessionEnded":
            self._spawn(self._session_ended(envelope.tenant_id, envelope.session_id))

    async def _auto_start(self, tenant_id: str, room_id: str) -> None:
        async with self.db.reader() as session:
            room = await repo.get_live_session(session, tenant_id, room_id)
            if room is None or room.state != LIVE:
                return
            main = room
            if room.parent_session_id:
                main = await repo.get_live_session(session, tenant_id, room.parent_session_id)
            if (
                main is None
                or not SessionSettings.from_json(main.settings).auto_start_transcription
            ):
                return
            try:
                engine_name, _, language = await self._resolve(session, room, Options(), "options")
            except (InvalidArgument, FailedPrecondition) as exc:
                log.warning(
                    "auto-start of transcription refused", session_id=room_id, error=str(exc)
                )
                return
        await self._start(
            tenant_id, room_id, engine_name, language, system_actor("transcription"), True
        )

    async def _session_ended(self, tenant_id: str, room_id: str) -> None:
        await self._stop(
            tenant_id,
            room_id,
            mev.TranscriptionStopped.REASON_SESSION_ENDED,
            system_actor("transcription"),
        )
        live = self._rooms.pop((tenant_id, room_id), None)
        if live is not None:
            await asyncio.gather(
                *(r.finish() for r in list(live.recognizers.values())), return_exceptions=True
            )
        await self._complete(tenant_id, room_id)

    async def _complete(self, tenant_id: str, room_id: str) -> None:
        """The transcript is complete: state, TranscriptReady, and no partials left behind."""
        async with self.uow(tenant_id, system_actor("transcription")) as uow:
            row = await trepo.get_transcription(uow.session, room_id, lock=True)
            if row is None or row.transcript_state != T_IN_PROGRESS:
                return
            tracks = await trepo.tracks_of(uow.session, tenant_id, room_id)
            for track in tracks:
                if track.state == TRACK_RUNNING:
                    track.state = TRACK_FINISHED
            now = utcnow()
            failed = any(t.state == TRACK_FAILED for t in tracks)
            row.transcript_state = T_PARTIAL if failed else T_COMPLETE
            row.complete_time = row.update_time = now
            view = await _transcript_view(uow.session, row, tenant_id, room_id)
            await trepo.delete_room_events_of_type(uow.session, tenant_id, room_id, PARTIAL_TYPE)
            ready = dev.TranscriptReady(
                session_id=room_id,
                segment_count=view.segment_count,
                languages=view.languages,
                engines=view.engines,
            )
            ready.speech_duration.FromTimedelta(view.speech_duration)
            uow.emit(ready, session_id=room_id, occur_time=now)

    async def _catch_up(self) -> None:
        """What happened while no replica followed: rooms still running whose session ended,
        live sessions that should have auto-started."""
        async with self.db.reader() as session:
            stale = await trepo.in_progress_of_ended_rooms(
                session, T_IN_PROGRESS, [ENDED, CANCELLED]
            )
            live = await trepo.rooms_without_transcription(session, LIVE)
        for tenant_id, room_id in stale:
            self._spawn(self._session_ended(tenant_id, room_id))
        for tenant_id, room_id in live:
            with contextlib.suppress(Exception):
                await self._auto_start(tenant_id, room_id)

    # -- transcripts -------------------------------------------------------------------------------

    async def get_transcript(
        self,
        principal: Principal,
        session_id: str,
        identities: list[str],
        size: int,
        token: str,
    ) -> tuple[TranscriptView, list[TranscriptSegmentRow], str]:
        principal.require("data:read")
        if not session_id:
            raise InvalidArgument(FieldViolation("session_id", "is required"))
        if len(identities) > MAX_SPEAKER_FILTER:
            raise InvalidArgument(
                FieldViolation("speaker_identities", f"at most {MAX_SPEAKER_FILTER} identities")
            )
        limit = paging.page_size(size)
        filters = {"s": session_id, "who": sorted(set(identities))}
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            room = await repo.get_live_session(session, principal.tenant_id, session_id)
            if room is None:
                raise _not_found(session_id)
            row = await trepo.get_transcription(session, session_id)
            view = await _transcript_view(session, row, principal.tenant_id, session_id)
            items = await trepo.segments_page(
                session, principal.tenant_id, session_id, identities, after, limit
            )
        return view, items, paging.next_token(items, limit, "start_time", filters)

    async def export_transcript(
        self, principal: Principal, session_id: str, fmt: int, omit_speakers: bool
    ) -> AsyncIterator[tuple[str, str, str]]:
        """(media type, file name, text) chunks; the first carries the media type and name."""
        principal.require("data:read")
        if not session_id:
            raise InvalidArgument(FieldViolation("session_id", "is required"))
        if fmt not in FORMATS:
            raise InvalidArgument(FieldViolation("format", "set one of WEBVTT, SRT or PLAIN_TEXT"))
        async with self.db.reader() as session:
            room = await repo.get_live_session(session, principal.tenant_id, session_id)
            if room is None:
                raise _not_found(session_id)
            row = await trepo.get_transcription(session, session_id)
        if row is None:
            raise FailedPrecondition(
                "transcription never ran for this session", reason="TRANSCRIPT_NONE"
            )
        return self._export(principal.tenant_id, session_id, fmt, omit_speakers)

    async def _export(
        self, tenant_id: str, session_id: str, fmt: int, omit_speakers: bool
    ) -> AsyncIterator[tuple[str, str, str]]:
        from ..convert.transcription import render_cues

        kind = FORMATS[fmt]
        yield kind.media_type, f"{session_id}.{kind.extension}", render_cues(fmt, [], 0, True)
        after = None
        number = 0
        while True:
            async with self.db.reader() as session:
                items = await trepo.segments_page(
                    session, tenant_id, session_id, [], after, EXPORT_CHUNK
                )
            if not items:
                return
            text = render_cues(fmt, items, number, False, omit_speakers=omit_speakers)
            number += len(items)
            yield "", "", text
            if len(items) < EXPORT_CHUNK:
                return
            after = (items[-1].start_time, items[-1].id)


class _TrackSink:
    """Where one track's recognizer delivers: partial and final captions, and its failure."""

    def __init__(
        self,
        domain: TranscriptionDomain,
        track: PublishedAudioTrackLike,
        engine: str,
        display_name: str,
        origin: datetime,
    ) -> None:
        self.domain = domain
        self.track = track
        self.engine = engine
        self.display_name = display_name
        self.origin = origin
        self.partial_ids: dict[str, list[str]] = {}

    async def register(self) -> None:
        track = self.track
        async with self.domain.uow(track.tenant_id, system_actor("transcription")) as uow:
            row = await trepo.get_track(uow.session, track.session_id, track.track_id, lock=True)
            if row is None:
                uow.session.add(
                    TranscriptionTrackRow(
                        session_id=track.session_id,
                        track_id=track.track_id,
                        tenant_id=track.tenant_id,
                        participant_id=track.participant_id,
                        engine=self.engine,
                        state=TRACK_RUNNING,
                        final_caption_count=0,
                        failure_reason="",
                        failure_message="",
                        update_time=utcnow(),
                    )
                )
            else:
                row.state, row.engine = TRACK_RUNNING, self.engine
                row.failure_reason = row.failure_message = ""
                row.update_time = utcnow()

    def caption_event(self, caption: Caption, *, final: bool):
        cls = mev.CaptionFinal if final else mev.CaptionPartial
        event = cls(
            utterance_id=caption.utterance_id,
            participant_id=self.track.participant_id,
            identity=self.track.identity,
            display_name=self.display_name,
            track_id=self.track.track_id,
            text=caption.text,
            confidence=caption.confidence,
            language=caption.language,
        )
        event.start_time.FromDatetime(caption.start)
        event.end_time.FromDatetime(caption.end)
        return event

    async def caption(self, caption: Caption) -> None:
        try:
            if caption.final:
                await self.domain._write_final(self, caption)
            else:
                await self.domain._write_partial(self, caption)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A storage hiccup loses this caption, not the recognizer.
            log.exception("caption not stored", track_id=self.track.track_id)

    async def failed(self, reason: str, message: str) -> None:
        await self.domain._track_state(self.track, TRACK_FAILED, reason, message)

    async def finished(self) -> None:
        await self.domain._track_state(self.track, TRACK_FINISHED)


# -- the transcript's totals ---------------------------------------------------------------------


async def _transcript_view(session, row, tenant_id: str, session_id: str) -> TranscriptView:
    if row is None or row.tenant_id != tenant_id:
        return TranscriptView(session_id, T_NONE)
    count, speech_ms, languages = await trepo.segment_totals(session, tenant_id, session_id)
    return TranscriptView(
        session_id=session_id,
        state=row.transcript_state,
        segment_count=count,
        languages=sorted(set(languages)) or [row.language],
        engines=list(row.engines),
        speech_duration=timedelta(milliseconds=speech_ms),
        update_time=row.update_time,
        complete_time=row.complete_time,
    )


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("transcription task failed", exc_info=task.exception())
