"""Recordings: control, consent, files in the blob store, downloads.

State lives in the database (`recordings`, `recording_files`) and every change commits with its
event (RecordingStarted, ConsentRequested/Granted/Declined, Stopped, Ready, Failed). The
recorders live in the process that runs the room's media (see recordings_live.py): the media
domain tells this one (a TrackListener) when tracks start and end, so tracks published after
the start join the recording, and a publisher that vanishes ends its file cleanly.

Lifecycle: RECORDING -> (stop, or the session ends) PROCESSING -> READY once every file is
stored and probed, or FAILED with a reason; files finalized before a failure stay downloadable.
A recording still unfinished when this process starts lost its recorders: it becomes FAILED
(RECORDER_LOST) with the files already stored (single-process assumption, like the media plane).

Consent: participants are told at the start (RecordingConsentRequested). When the recording
requires consent (its options, or the tenant's `require_recording_consent`), a participant's
media is recorded only after it grants; a decline leaves it out and is listed on the recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from google.protobuf import json_format

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import media_events_pb2 as mev
from classwire.api.events.v1 import session_events_pb2 as sev
from classwire.api.media.v1 import resources_pb2 as media_pb

from ..events.outbox import UnitOfWorkFactory, system_actor
from ..plugins import types as pt
from ..store import recording_repositories as rrepo
from ..store import repositories as repo
from ..store.engine import Database
from ..store.models import LiveSession
from ..store.recording_models import RecordingFileRow, RecordingRow
from ..store.types import utcnow
from . import paging
from .auth import Principal
from .errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Unavailable,
)
from .idempotency import IdempotencyKey, run_idempotent
from .ids import new_id
from .platform import TenantSettings, actor_of
from .recordings_live import LiveRecording, Mixer, Recorder, store_stream, until_stopped
from .session_lifecycle import SessionLifecycle
from .sessions import SessionSettings, effective_permissions

log = structlog.get_logger(__name__)

STARTING = media_pb.RECORDING_STATE_STARTING
RECORDING = media_pb.RECORDING_STATE_RECORDING
PROCESSING = media_pb.RECORDING_STATE_PROCESSING
READY = media_pb.RECORDING_STATE_READY
FAILED = media_pb.RECORDING_STATE_FAILED
ACTIVE = (STARTING, RECORDING)
UNFINISHED = (STARTING, RECORDING, PROCESSING)
PARTICIPANT = media_pb.RECORDING_FILE_KIND_PARTICIPANT
SCREEN = media_pb.RECORDING_FILE_KIND_SCREEN
MIXED = media_pb.RECORDING_FILE_KIND_MIXED_AUDIO
ALL_KINDS = frozenset({PARTICIPANT, SCREEN, MIXED})
NOTICE = media_pb.RECORDING_CONSENT_MODE_NOTICE
REQUIRED = media_pb.RECORDING_CONSENT_MODE_REQUIRED
LIVE = common_pb2.SESSION_STATE_LIVE
MANAGE_MEDIA = sev.PARTICIPANT_PERMISSION_MANAGE_MEDIA
KIND_OF_SOURCE = {
    common_pb2.TRACK_SOURCE_MICROPHONE: PARTICIPANT,
    common_pb2.TRACK_SOURCE_CAMERA: PARTICIPANT,
    common_pb2.TRACK_SOURCE_SCREEN: SCREEN,
    common_pb2.TRACK_SOURCE_SCREEN_AUDIO: SCREEN,
}
RECORDING_ACTIONS = frozenset({"start_recording", "stop_recording", "recording_consent"})
CHUNK = 1024 * 1024  # DownloadRecording's largest chunk


@dataclass(frozen=True)
class RecordingSettings:
    # A participant's tracks published within this time start one file together.
    settle: float = 0.5
    # How long finalizing may take before the recording fails (a stuck store or backend).
    finalize_timeout: float = 120.0


@dataclass
class RecordingView:
    row: RecordingRow
    files: list[RecordingFileRow] = field(default_factory=list)

    @property
    def duration(self) -> timedelta:
        end = self.row.stop_time or utcnow()
        return max(timedelta(0), end - self.row.start_time)


@dataclass(frozen=True)
class FileSelector:
    """Which file DownloadRecording streams: by id, a participant's by kind, or the mix."""

    file_id: str = ""
    participant_id: str = ""
    kind: int = 0
    mixed: bool = False


def _not_found(recording_id: str) -> NotFound:
    return NotFound(f"recording {recording_id!r} not found", reason="RECORDING_NOT_FOUND")


def _actor_json(actor: common_pb2.Actor) -> dict:
    return {"kind": actor.kind, "id": actor.id, "identity": actor.identity}


def _options_json(options: media_pb.RecordingOptions) -> dict:
    return json_format.MessageToDict(options)


def options_of(row: RecordingRow) -> media_pb.RecordingOptions:
    return json_format.ParseDict(row.options or {}, media_pb.RecordingOptions())


def _blob_key(tenant_id: str, recording_id: str, file_id: str, extension: str) -> str:
    return f"recordings/{tenant_id}/{recording_id}/{file_id}.{extension}"


class RecordingsDomain:
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        sessions: Any,
        media: Any,
        blobs: pt.BlobStore,
        settings: RecordingSettings | None = None,
    ) -> None:
        self.db = db
        self.uow = uow
        self.sessions = sessions
        self.media = media  # domain.media.MediaDomain, or None without a media plane
        self.blobs = blobs
        self.settings = settings or RecordingSettings()
        self.live: dict[str, LiveRecording] = {}  # recording id -> recorders on this process
        self._tasks: set[asyncio.Task] = set()
        if media is not None:
            media.add_track_listener(self)

    # -- wiring ------------------------------------------------------------------------------

    def follow(self, lifecycle: SessionLifecycle) -> None:
        """Recovers recordings left unfinished, then acts on the session lifecycle (auto-start
        when a session goes live, stop when it ends)."""
        lifecycle.listen(self._on_event, label="recording", catch_up=self._recover)

    async def close(self) -> None:
        for live in list(self.live.values()):
            with contextlib.suppress(Exception):
                await self._finish(live, mev.RecordingStopped.REASON_SESSION_ENDED, shutdown=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    # -- access ------------------------------------------------------------------------------

    async def _authorize_room(self, session, principal: Principal, session_id: str):
        """`media:write`, or a participant token of this room (or its parent) with
        MANAGE_MEDIA. Returns the room; NOT_FOUND across tenants."""
        if principal.participant is None:
            principal.require("media:write")
        if not session_id:
            raise InvalidArgument(FieldViolation("session_id", "is required"))
        room = await repo.get_live_session(session, principal.tenant_id, session_id)
        if principal.participant is not None:
            await self.sessions._authorize_read(session, principal, session_id)
            await _require_manage_media(session, principal)
        if room is None:
            raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
        return room

    async def _recording_for(self, session, principal: Principal, recording_id: str, scope: str):
        if principal.participant is None:
            principal.require(scope)
        if not recording_id:
            raise InvalidArgument(FieldViolation("recording_id", "is required"))
        row = await rrepo.get_recording(session, principal.tenant_id, recording_id)
        if row is None:
            raise _not_found(recording_id)
        if principal.participant is not None:
            try:
                await self.sessions._authorize_read(session, principal, row.session_id)
            except NotFound:
                raise _not_found(recording_id) from None
            await _require_manage_media(session, principal)
        return row

    # -- control -----------------------------------------------------------------------------

    async def start_recording(
        self,
        principal: Principal,
        session_id: str,
        options: media_pb.RecordingOptions | None,
        request_id: str = "",
    ) -> RecordingView:
        if options is not None:
            _validate_options(options)
        async with self.db.reader() as session:
            room = await self._authorize_room(session, principal, session_id)
            if room.state != LIVE:
                raise FailedPrecondition("the session is not live", reason="SESSION_NOT_LIVE")
        if self.media is None or not self.media.available:
            raise Unavailable(
                "this server has no media backend", reason="MEDIA_BACKEND_UNAVAILABLE"
            )
        requested = _options_json(options) if options is not None else None
        fingerprint = hashlib.sha256(repr((session_id, requested)).encode()).hexdigest()
        key = (
            IdempotencyKey("StartRecording", request_id, fingerprint, str.encode, bytes.decode)
            if request_id
            else None
        )
        actor = actor_of(principal)
        recording_id = await run_idempotent(
            lambda: self.uow(principal.tenant_id, actor),
            key,
            lambda uow: self._insert(uow, room.id, options, actor, auto=False),
        )
        self._begin_live(principal.tenant_id, recording_id)
        return await self._view(principal.tenant_id, recording_id)

    async def _insert(
        self,
        uow,
        room_id: str,
        options: media_pb.RecordingOptions | None,
        actor: common_pb2.Actor,
        auto: bool,
    ) -> str:
        tenant_id = uow.tenant_id
        room = await repo.lock_live_session(uow.session, tenant_id, room_id)
        if room is None or room.state != LIVE:
            raise FailedPrecondition("the session is not live", reason="SESSION_NOT_LIVE")
        active = await rrepo.active_recording(uow.session, tenant_id, room_id, ACTIVE)
        if active is not None:
            raise FailedPrecondition(
                "the session is already being recorded",
                reason="RECORDING_ALREADY_ACTIVE",
                metadata={"recording_id": active.id},
            )
        resolved = await self._resolve_options(uow.session, tenant_id, room, options)
        required = resolved.consent_mode == REQUIRED
        now = utcnow()
        row = RecordingRow(
            id=new_id("rec"),
            tenant_id=tenant_id,
            session_id=room_id,
            state=RECORDING,
            options=_options_json(resolved),
            consent_required=required,
            auto_started=auto,
            started_by=_actor_json(actor),
            start_time=now,
            stop_time=None,
            ready_time=None,
            stop_reason=0,
            failure_reason="",
            failure_message="",
            consented_participant_ids=[],
            declined_participant_ids=[],
        )
        uow.session.add(row)
        uow.emit(
            mev.RecordingStarted(recording_id=row.id, auto_started=auto, consent_required=required),
            session_id=room_id,
            occur_time=now,
        )
        uow.emit(
            mev.RecordingConsentRequested(recording_id=row.id, consent_required=required),
            session_id=room_id,
            occur_time=now,
        )
        return row.id

    async def _resolve_options(
        self, session, tenant_id: str, room: LiveSession, options
    ) -> media_pb.RecordingOptions:
        """The request's options, else the session's, with the tenant's consent policy."""
        resolved = media_pb.RecordingOptions()
        if options is not None:
            resolved.CopyFrom(options)
        else:
            main = room
            if room.parent_session_id:
                main = await repo.get_live_session(session, tenant_id, room.parent_session_id)
            configured = (
                SessionSettings.from_json(main.settings).recording_options if main else None
            )
            if configured:
                with contextlib.suppress(json_format.ParseError):
                    json_format.ParseDict(configured, resolved)
        tenant = await repo.get_tenant(session, tenant_id)
        policy = TenantSettings.from_json(tenant.settings if tenant else {})
        if policy.require_recording_consent or resolved.consent_mode != REQUIRED:
            resolved.consent_mode = REQUIRED if policy.require_recording_consent else NOTICE
        if not resolved.file_kinds:
            resolved.file_kinds.extend(sorted(ALL_KINDS))
        return resolved

    async def stop_recording(self, principal: Principal, recording_id: str) -> RecordingView:
        async with self.db.reader() as session:
            row = await self._recording_for(session, principal, recording_id, "media:write")
        await self._stop(
            principal.tenant_id, row.id, mev.RecordingStopped.REASON_REQUESTED, actor_of(principal)
        )
        return await self._view(principal.tenant_id, row.id)

    async def _stop(self, tenant_id: str, recording_id: str, reason: int, actor) -> bool:
        """RECORDING -> PROCESSING with its event, then finalizes in the background."""
        async with self.uow(tenant_id, actor) as uow:
            row = await rrepo.get_recording(uow.session, tenant_id, recording_id, lock=True)
            if row is None or row.state not in ACTIVE:
                return False
            now = utcnow()
            row.state = PROCESSING
            row.stop_time = now
            row.stop_reason = reason
            event = mev.RecordingStopped(recording_id=row.id, reason=reason)
            event.duration.FromTimedelta(now - row.start_time)
            uow.emit(event, session_id=row.session_id, occur_time=now)
        live = self.live.get(recording_id)
        if live is not None:
            self._spawn(self._finish(live, reason))
        else:
            # No recorders here (none were ever attached): settle it from what is stored.
            self._spawn(self._settle(tenant_id, recording_id))
        return True

    async def get_recording(self, principal: Principal, recording_id: str) -> RecordingView:
        async with self.db.reader() as session:
            row = await self._recording_for(session, principal, recording_id, "media:read")
        return await self._view(principal.tenant_id, row.id)

    async def list_recordings(
        self,
        principal: Principal,
        session_id: str,
        states: list[int],
        start_from: datetime | None,
        start_to: datetime | None,
        size: int,
        token: str,
    ) -> tuple[list[RecordingView], str]:
        principal.require("media:read")
        for i, state in enumerate(states):
            if state not in (STARTING, RECORDING, PROCESSING, READY, FAILED):
                raise InvalidArgument(FieldViolation(f"states[{i}]", "not a recording state"))
        if start_from and start_to and start_to <= start_from:
            raise InvalidArgument(FieldViolation("start_time_to", "must be after start_time_from"))
        limit = paging.page_size(size)
        filters = {
            "s": session_id,
            "st": sorted(set(states)),
            "f": start_from.isoformat() if start_from else "",
            "t": start_to.isoformat() if start_to else "",
        }
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            query = rrepo.recordings(principal.tenant_id, session_id, states, start_from, start_to)
            rows = await repo.page(
                session,
                query,
                RecordingRow.start_time,
                RecordingRow.id,
                limit,
                after,
                newest_first=True,
            )
            files = await rrepo.files_of(session, principal.tenant_id, [r.id for r in rows])
        views = [RecordingView(r, files[r.id]) for r in rows]
        return views, paging.next_token(rows, limit, "start_time", filters)

    async def delete_recording(self, principal: Principal, recording_id: str) -> None:
        principal.require("media:write")
        if not recording_id:
            raise InvalidArgument(FieldViolation("recording_id", "is required"))
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            row = await rrepo.get_recording(
                uow.session, principal.tenant_id, recording_id, lock=True
            )
            if row is None:
                raise _not_found(recording_id)
            if row.state not in (READY, FAILED):
                raise FailedPrecondition(
                    "the recording is still in progress; stop it first",
                    reason="RECORDING_ACTIVE",
                )
            files = (await rrepo.files_of(uow.session, principal.tenant_id, [row.id]))[row.id]
            await rrepo.delete_recording(uow.session, principal.tenant_id, row.id)
        # Rows first: a blob left behind by a failing store is unreachable, never dangling.
        for f in files:
            try:
                await self.blobs.delete(f.blob_key)
            except Exception:
                log.warning("recording blob not deleted", key=f.blob_key, exc_info=True)

    async def download(
        self, principal: Principal, recording_id: str, selector: FileSelector | None, offset: int
    ) -> tuple[RecordingFileRow, AsyncIterator[tuple[int, bytes]]]:
        principal.require("media:read")
        if not recording_id:
            raise InvalidArgument(FieldViolation("recording_id", "is required"))
        if selector is None:
            raise InvalidArgument(
                FieldViolation("file", "set file_id, participant_file or mixed_audio")
            )
        if selector.participant_id == "" and not selector.file_id and not selector.mixed:
            raise InvalidArgument(FieldViolation("participant_file.participant_id", "is required"))
        if (
            not selector.file_id
            and not selector.mixed
            and selector.kind not in (PARTICIPANT, SCREEN)
        ):
            raise InvalidArgument(
                FieldViolation("participant_file.kind", "must be PARTICIPANT or SCREEN")
            )
        async with self.db.reader() as session:
            row = await rrepo.get_recording(session, principal.tenant_id, recording_id)
            if row is None:
                raise _not_found(recording_id)
            files = (await rrepo.files_of(session, principal.tenant_id, [row.id]))[row.id]
        chosen = _select(files, selector)
        if chosen is None:
            raise NotFound("no such file in this recording", reason="RECORDING_FILE_NOT_FOUND")
        if not chosen.ready:
            raise FailedPrecondition(
                "the file is not finalized yet", reason="RECORDING_FILE_NOT_READY"
            )
        if offset > chosen.size_bytes:
            raise OutOfRange(
                f"offset_bytes {offset} is past the end of the file ({chosen.size_bytes} bytes)",
                reason="OFFSET_OUT_OF_RANGE",
                metadata={"size_bytes": str(chosen.size_bytes)},
            )
        try:
            source = await self.blobs.open(chosen.blob_key, offset=offset)
        except Exception as exc:
            raise Unavailable(
                "the recording's storage is not available", reason="STORAGE_UNAVAILABLE"
            ) from exc
        return chosen, _rechunk(source, offset)

    async def _view(self, tenant_id: str, recording_id: str) -> RecordingView:
        async with self.db.reader() as session:
            row = await rrepo.get_recording(session, tenant_id, recording_id)
            files = (await rrepo.files_of(session, tenant_id, [recording_id]))[recording_id]
        return RecordingView(row, files)

    async def active_view(self, tenant_id: str, room_id: str) -> RecordingView | None:
        async with self.db.reader() as session:
            row = await rrepo.active_recording(session, tenant_id, room_id, ACTIVE)
        return None if row is None else await self._view(tenant_id, row.id)

    # -- the participant connection ------------------------------------------------------------

    async def perform(self, connection, action) -> str:
        """start_recording, stop_recording and recording_consent from Connect; returns the id
        the ack carries."""
        principal, room, args = connection.principal, connection.room, action.args
        if action.kind == "start_recording":
            view = await self.start_recording(principal, room, args.get("options"))
            return view.row.id
        if action.kind == "stop_recording":
            async with self.db.reader() as session:
                await _require_manage_media(session, principal)
                row = await rrepo.active_recording(session, principal.tenant_id, room, ACTIVE)
            if row is None:
                raise FailedPrecondition(
                    "the room is not being recorded", reason="RECORDING_NOT_ACTIVE"
                )
            await self._stop(
                principal.tenant_id,
                row.id,
                mev.RecordingStopped.REASON_REQUESTED,
                actor_of(principal),
            )
            return row.id
        return await self.answer_consent(
            principal, connection.participant_id, args["recording_id"], args["grant"]
        )

    async def answer_consent(
        self, principal: Principal, participant_id: str, recording_id: str, grant: bool
    ) -> str:
        claims = principal.participant
        if claims is None:
            raise PermissionDenied(
                "consent is given on the participant connection",
                reason="PARTICIPANT_TOKEN_REQUIRED",
            )
        if not recording_id:
            raise InvalidArgument(FieldViolation("recording_id", "is required"))
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            row = await rrepo.get_recording(
                uow.session, principal.tenant_id, recording_id, lock=True
            )
            room = (
                await repo.get_live_session(uow.session, principal.tenant_id, row.session_id)
                if row is not None
                else None
            )
            if room is None or claims.session_id not in (room.id, room.parent_session_id):
                raise _not_found(recording_id)
            if row.state not in ACTIVE:
                raise FailedPrecondition(
                    "the recording is not in progress", reason="RECORDING_NOT_ACTIVE"
                )
            if not grant and not row.consent_required:
                raise FailedPrecondition(
                    "this recording does not ask for consent; everyone in the room is recorded",
                    reason="RECORDING_CONSENT_NOT_REQUIRED",
                )
            consented = set(row.consented_participant_ids)
            declined = set(row.declined_participant_ids)
            if grant and participant_id not in consented:
                consented.add(participant_id)
                declined.discard(participant_id)
                uow.emit(
                    mev.RecordingConsentGranted(
                        recording_id=row.id, participant_id=participant_id, identity=claims.identity
                    ),
                    session_id=row.session_id,
                )
            elif not grant and participant_id not in declined:
                declined.add(participant_id)
                consented.discard(participant_id)
                uow.emit(
                    mev.RecordingConsentDeclined(
                        recording_id=row.id, participant_id=participant_id, identity=claims.identity
                    ),
                    session_id=row.session_id,
                )
            row.consented_participant_ids = sorted(consented)
            row.declined_participant_ids = sorted(declined)
        live = self.live.get(recording_id)
        if live is not None:
            live.allowed, live.declined = consented, declined
            if grant:
                for track in self.media.published_tracks(live.tenant_id, live.room_id):
                    if track.participant_id == participant_id:
                        self._track_joined(live, track)
            else:
                self._leave_out(live, participant_id)
        return recording_id

    # -- recorders (this process) ------------------------------------------------------------

    def _begin_live(self, tenant_id: str, recording_id: str) -> None:
        if recording_id in self.live or self.media is None:
            return
        self._spawn(self._attach(tenant_id, recording_id))

    async def _attach(self, tenant_id: str, recording_id: str) -> None:
        async with self.db.reader() as session:
            row = await rrepo.get_recording(session, tenant_id, recording_id)
        if row is None or row.state not in ACTIVE or recording_id in self.live:
            return
        kinds = frozenset(options_of(row).file_kinds) or ALL_KINDS
        live = LiveRecording(
            tenant_id,
            row.session_id,
            row.id,
            time.monotonic() - max(0.0, (utcnow() - row.start_time).total_seconds()),
            kinds,
            row.consent_required,
            set(row.consented_participant_ids),
            set(row.declined_participant_ids),
        )
        self.live[recording_id] = live
        if MIXED in kinds:
            live.mixer = Mixer(live.origin)
            live.mixer.start()
            file_id = new_id("rfl")
            live.mixer_task = self._spawn(
                self._store(
                    live,
                    file_id,
                    MIXED,
                    "",
                    "",
                    [],
                    "audio/ogg",
                    "ogg",
                    lambda _id=file_id: live.mixer.chunks(),
                )
            )
        for track in self.media.published_tracks(tenant_id, row.session_id):
            self._track_joined(live, track)

    async def track_started(self, track) -> None:
        for live in list(self.live.values()):
            if live.room_id == track.session_id and live.tenant_id == track.tenant_id:
                self._track_joined(live, track)

    async def track_ended(self, track) -> None:
        # The backend ends the recorders and taps of an ended track by itself.
        for live in list(self.live.values()):
            if live.mixer is not None and live.room_id == track.session_id:
                live.mixer.untap(track.track_id)

    def _track_joined(self, live: LiveRecording, track) -> None:
        if live.stopping or not live.may_record(track.participant_id):
            return
        kind = KIND_OF_SOURCE.get(track.source, PARTICIPANT)
        if track.kind == "audio" and live.mixer is not None:
            from .media import PublishedAudioTrack

            audio = PublishedAudioTrack(
                track.tenant_id,
                track.session_id,
                "",
                track.track_id,
                track.participant_id,
                track.identity,
            )
            live.mixer.tap(track.track_id, self.media.audio_tap(audio, sample_rate=48000))
        if kind not in live.kinds:
            return
        key = (track.participant_id, kind)
        if key in live.settling:
            return  # a restart with every track published meanwhile is on its way
        live.settling[key] = self._spawn(self._settle_recorder(live, key, track.identity))

    async def _settle_recorder(self, live: LiveRecording, key: tuple[str, int], identity: str):
        """After a short settle time, records the participant's current tracks of this kind in
        one file; a running file over fewer tracks is finalized and a new one starts."""
        try:
            await asyncio.sleep(self.settings.settle)
        finally:
            live.settling.pop(key, None)
        if live.stopping or not live.may_record(key[0]):
            return
        tracks = [
            t
            for t in self.media.published_tracks(live.tenant_id, live.room_id)
            if t.participant_id == key[0] and KIND_OF_SOURCE.get(t.source, PARTICIPANT) == key[1]
        ]
        ids = frozenset(t.track_id for t in tracks)
        current = live.recorders.get(key)
        if not ids or (
            current is not None and current.track_ids == ids and not current.task.done()
        ):
            return
        if current is not None:
            current.stop.set()
            live.finished.append(current)
        try:
            source = self.media.record(tracks, "webm")
        except pt.TrackNotFoundError:
            return
        recorder = Recorder(key, ids)
        has_video = any(t.kind == "video" for t in tracks)
        file_id = new_id("rfl")
        recorder.task = self._spawn(
            self._store(
                live,
                file_id,
                key[1],
                key[0],
                identity,
                sorted(ids),
                "video/webm" if has_video else "audio/webm",
                "webm",
                lambda: until_stopped(source, recorder.stop),
            )
        )
        live.recorders[key] = recorder

    def _leave_out(self, live: LiveRecording, participant_id: str) -> None:
        for key in [k for k in live.recorders if k[0] == participant_id]:
            recorder = live.recorders.pop(key)
            recorder.stop.set()
            live.finished.append(recorder)
        if live.mixer is not None:
            for track in self.media.published_tracks(live.tenant_id, live.room_id):
                if track.participant_id == participant_id:
                    live.mixer.untap(track.track_id)

    async def _store(
        self,
        live: LiveRecording,
        file_id: str,
        kind: int,
        participant_id: str,
        identity: str,
        track_ids: list[str],
        mime_type: str,
        extension: str,
        source,
    ) -> None:
        key = _blob_key(live.tenant_id, live.recording_id, file_id, extension)
        async with self.uow(live.tenant_id, system_actor("recording")) as uow:
            uow.session.add(
                RecordingFileRow(
                    id=file_id,
                    recording_id=live.recording_id,
                    tenant_id=live.tenant_id,
                    kind=kind,
                    participant_id=participant_id,
                    identity=identity,
                    track_ids=track_ids,
                    mime_type=mime_type,
                    blob_key=key,
                    size_bytes=0,
                    duration_ms=0,
                    start_time=utcnow(),
                    ready=False,
                )
            )
        result = await store_stream(self.blobs, key, source())
        async with self.uow(live.tenant_id, system_actor("recording")) as uow:
            row = await rrepo.get_file(uow.session, live.tenant_id, live.recording_id, file_id)
            if row is None:
                return
            if result is None:
                await rrepo.delete_files(uow.session, [row])  # nothing was ever recorded in it
                return
            row.size_bytes = result.size
            row.duration_ms = int(result.duration * 1000)
            row.ready = True

    async def _finish(self, live: LiveRecording, reason: int, shutdown: bool = False) -> None:
        """Stops every recorder of `live`, waits for its files, then READY or FAILED."""
        if live.stopping:
            return
        live.stopping = True
        stopped_at = time.monotonic()
        for task in live.settling.values():
            task.cancel()
        recorders = [*live.recorders.values(), *live.finished]
        for recorder in recorders:
            recorder.stop.set()
        tasks = [r.task for r in recorders if r.task is not None]
        if live.mixer is not None:
            await live.mixer.finish(stopped_at)
            tasks.append(live.mixer_task)
        timeout = 5.0 if shutdown else self.settings.finalize_timeout
        done, pending = await asyncio.wait(tasks, timeout=timeout) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        self.live.pop(live.recording_id, None)
        failure = ""
        if pending:
            failure = "files were not finalized in time"
        else:
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    failure = f"a file could not be stored: {type(task.exception()).__name__}"
        await self._settle(live.tenant_id, live.recording_id, failure)

    async def _settle(self, tenant_id: str, recording_id: str, failure: str = "") -> None:
        async with self.uow(tenant_id, system_actor("recording")) as uow:
            row = await rrepo.get_recording(uow.session, tenant_id, recording_id, lock=True)
            if row is None or row.state != PROCESSING:
                return
            files = (await rrepo.files_of(uow.session, tenant_id, [row.id]))[row.id]
            await rrepo.delete_files(uow.session, [f for f in files if not f.ready])
            ready = [f for f in files if f.ready]
            now = utcnow()
            if failure:
                row.state = FAILED
                row.failure_reason = "STORAGE_UNAVAILABLE"
                row.failure_message = failure[:1000]
                uow.emit(
                    mev.RecordingFailed(
                        recording_id=row.id, reason=row.failure_reason, message=row.failure_message
                    ),
                    session_id=row.session_id,
                    occur_time=now,
                )
                return
            row.state = READY
            row.ready_time = now
            event = mev.RecordingReady(
                recording_id=row.id,
                file_count=len(ready),
                total_size_bytes=sum(f.size_bytes for f in ready),
            )
            event.duration.FromTimedelta((row.stop_time or now) - row.start_time)
            uow.emit(event, session_id=row.session_id, occur_time=now)

    # -- the session lifecycle ---------------------------------------------------------------

    async def _recover(self) -> None:
        async with self.db.reader() as session:
            rows = await rrepo.unfinished(session, UNFINISHED)
        for row in rows:
            if row.id in self.live:
                continue
            async with self.uow(row.tenant_id, system_actor("recording")) as uow:
                current = await rrepo.get_recording(uow.session, row.tenant_id, row.id, lock=True)
                if current is None or current.state not in UNFINISHED:
                    continue
                files = (await rrepo.files_of(uow.session, row.tenant_id, [row.id]))[row.id]
                await rrepo.delete_files(uow.session, [f for f in files if not f.ready])
                current.state = FAILED
                current.stop_time = current.stop_time or utcnow()
                current.failure_reason = "RECORDER_LOST"
                current.failure_message = "the server stopped while the recording was in progress"
                uow.emit(
                    mev.RecordingFailed(
                        recording_id=current.id,
                        reason=current.failure_reason,
                        message=current.failure_message,
                    ),
                    session_id=current.session_id,
                )

    async def _on_event(self, envelope: event_pb2.Event) -> None:
        name = envelope.type.rsplit(".", 1)[-1]
        if name == "SessionStateChanged" and envelope.session.session_state_changed.state == LIVE:
            await self._auto_start(envelope.tenant_id, envelope.session_id)
        elif name == "SessionEnded":
            await self._session_ended(envelope.tenant_id, envelope.session_id)

    async def _auto_start(self, tenant_id: str, room_id: str) -> None:
        async with self.db.reader() as session:
            room = await repo.get_live_session(session, tenant_id, room_id)
            if room is None or room.state != LIVE or room.parent_session_id:
                return
            if not SessionSettings.from_json(room.settings).auto_start_recording:
                return
        if self.media is None or not self.media.available:
            log.warning("auto-start of recording skipped: no media backend", session_id=room_id)
            return
        try:
            recording_id = await run_idempotent(
                lambda: self.uow(tenant_id, system_actor("recording")),
                None,
                lambda uow: self._insert(uow, room_id, None, system_actor("recording"), auto=True),
            )
        except FailedPrecondition:
            return  # already recording, or no longer live
        self._begin_live(tenant_id, recording_id)

    async def _session_ended(self, tenant_id: str, session_id: str) -> None:
        async with self.db.reader() as session:
            recording_ids = await rrepo.recording_ids_of_session(
                session, tenant_id, session_id, ACTIVE
            )
        for recording_id in recording_ids:
            await self._stop(
                tenant_id,
                recording_id,
                mev.RecordingStopped.REASON_SESSION_ENDED,
                system_actor("recording"),
            )


async def _require_manage_media(session, principal: Principal) -> None:
    claims = principal.participant
    if claims is None:
        return
    actor = await repo.get_participant(session, principal.tenant_id, claims.participant_id)
    main = await repo.get_live_session(session, principal.tenant_id, claims.session_id)
    settings = SessionSettings.from_json(main.settings) if main else SessionSettings()
    if actor is None or MANAGE_MEDIA not in effective_permissions(actor, settings):
        raise PermissionDenied(
            "this action needs the MANAGE_MEDIA permission",
            reason="MISSING_PERMISSION",
            metadata={"permission": "PARTICIPANT_PERMISSION_MANAGE_MEDIA"},
        )


def _validate_options(options: media_pb.RecordingOptions, prefix: str = "options") -> None:
    if options.consent_mode not in (0, NOTICE, REQUIRED):
        raise InvalidArgument(FieldViolation(f"{prefix}.consent_mode", "not a consent mode"))
    for i, kind in enumerate(options.file_kinds):
        if kind not in ALL_KINDS:
            raise InvalidArgument(
                FieldViolation(f"{prefix}.file_kinds[{i}]", "not a recording file kind")
            )


def _select(files: list[RecordingFileRow], selector: FileSelector) -> RecordingFileRow | None:
    if selector.file_id:
        return next((f for f in files if f.id == selector.file_id), None)
    if selector.mixed:
        matching = [f for f in files if f.kind == MIXED]
    else:
        matching = [
            f
            for f in files
            if f.participant_id == selector.participant_id and f.kind == selector.kind
        ]
    if not matching:
        return None
    # A participant whose tracks changed mid-recording has several files: the longest one.
    ready = [f for f in matching if f.ready] or matching
    return max(ready, key=lambda f: (f.duration_ms, -f.start_time.timestamp()))


async def _rechunk(source: AsyncIterator[bytes], offset: int) -> AsyncIterator[tuple[int, bytes]]:
    position = offset
    async for data in source:
        for start in range(0, len(data), CHUNK):
            piece = data[start : start + CHUNK]
            yield position, piece
            position += len(piece)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("recording task failed", exc_info=task.exception())
