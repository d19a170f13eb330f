"""The media plane: rooms, peers, tracks and subscriptions over a MediaBackend provider.

The backend (an in-process SFU, Janus, ...) carries the media; this domain decides who may do
what, keeps the durable record (tracks, subscriptions, speaking intervals, quality samples) and
turns what the backend reports into events and signaling pushes. It never imports a WebRTC
library: everything goes through `plugins.types.MediaBackend`.

Each room (a session or a breakout room) has one backend room, created when its first
participant connects and closed when its last one is gone. Every participant has two peer
connections (PUBLISHER: it offers; SUBSCRIBER: the backend offers). The peer id is the
participant id of the connection, so a participant can only ever signal for itself.

Backend events of a room are handled one at a time by the room's worker task, in the order the
backend reported them, so a provider calling the sink from inside one of its own methods never
re-enters itself. Signaling pushes (offers and candidates for one participant) go straight to
that participant's connection and are never replayed.

Single-process state (see the area README): rooms, peers and pending publications live in the
process that runs the backend room; the durable record is shared through the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import media_events_pb2 as mev

from ..events.outbox import UnitOfWorkFactory, system_actor
from ..plugins import types as pt
from ..store import media_repositories as mrepo
from ..store import repositories as repo
from ..store.engine import Database
from ..store.media_models import (
    MediaSubscription,
    MediaTrack,
    QualitySampleRow,
    SpeakingIntervalRow,
)
from ..store.types import utcnow
from . import paging
from . import sessions as s
from .auth import Principal
from .errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Violations,
)
from .ids import new_id
from .media_talk import TalkSettings, TalkTime
from .platform import actor_of

log = structlog.get_logger(__name__)

# Proto enum numbers (frozen by the v1 contract).
PUBLISHER = 1  # media.v1.PeerConnectionRole
SUBSCRIBER = 2
SDP_OFFER = 1  # media.v1.SessionDescription.Type
SDP_ANSWER = 2
UPSTREAM = mev.MEDIA_DIRECTION_UPSTREAM
DOWNSTREAM = mev.MEDIA_DIRECTION_DOWNSTREAM
MICROPHONE = common_pb2.TRACK_SOURCE_MICROPHONE
CAMERA = common_pb2.TRACK_SOURCE_CAMERA
SCREEN = common_pb2.TRACK_SOURCE_SCREEN
SCREEN_AUDIO = common_pb2.TRACK_SOURCE_SCREEN_AUDIO
SOURCES = {
    MICROPHONE: "microphone",
    CAMERA: "camera",
    SCREEN: "screen",
    SCREEN_AUDIO: "screen_audio",
}
SOURCE_OF_NAME = {name: number for number, name in SOURCES.items()}
PERMISSION_FOR_SOURCE = {
    MICROPHONE: s.ev.PARTICIPANT_PERMISSION_PUBLISH_AUDIO,
    CAMERA: s.ev.PARTICIPANT_PERMISSION_PUBLISH_VIDEO,
    SCREEN: s.ev.PARTICIPANT_PERMISSION_PUBLISH_SCREEN,
    SCREEN_AUDIO: s.ev.PARTICIPANT_PERMISSION_PUBLISH_SCREEN,
}
UNPUBLISHED_REASON = {
    "unpublished": mev.TrackUnpublished.REASON_UNPUBLISHED,
    "peer_left": mev.TrackUnpublished.REASON_PARTICIPANT_LEFT,
    "permission_revoked": mev.TrackUnpublished.REASON_PERMISSION_REVOKED,
}
MEDIA_ACTIONS = frozenset(
    {
        "session_description",
        "ice_candidate",
        "publish_track",
        "unpublish_track",
        "mute_track",
        "unmute_track",
        "subscribe",
        "unsubscribe",
    }
)
MAX_SDP = 64 * 1024
MAX_CANDIDATE = 1024
MAX_CLIENT_TRACK_ID = 128
MAX_TRACK_NAME = 100
MAX_TRACK_IDS = 100
# How long a pending TrackPublication waits for its track to appear in an offer.
PUBLICATION_TTL = 60.0


# What other areas code against ---------------------------------------------------------------


@dataclass(frozen=True)
class PublishedAudioTrack:
    """A published audio track, as transcription, recording and talk time see it."""

    tenant_id: str
    session_id: str  # the room
    main_session_id: str
    track_id: str
    participant_id: str
    identity: str


class AudioTrackListener(Protocol):
    """Told when audio tracks start and end (one task per track is the listener's business)."""

    async def audio_track_started(self, track: PublishedAudioTrack) -> None: ...

    async def audio_track_ended(self, track: PublishedAudioTrack) -> None: ...


@dataclass(frozen=True)
class PublishedTrack:
    """Any published track (audio or video), as recording sees it."""

    tenant_id: str
    session_id: str  # the room
    track_id: str
    participant_id: str
    identity: str
    kind: str  # audio | video
    source: int  # common.v1.TrackSource


class TrackListener(Protocol):
    """Told when tracks of any kind start and end."""

    async def track_started(self, track: PublishedTrack) -> None: ...

    async def track_ended(self, track: PublishedTrack) -> None: ...


@dataclass(frozen=True)
class MediaSettings:
    codecs: tuple[str, ...] = ("audio/opus", "video/VP8")
    quality_sample_period: float = 10.0
    talk: TalkSettings = field(default_factory=TalkSettings)


# Values the participant connection sends and receives ----------------------------------------


@dataclass(frozen=True)
class Publication:
    client_track_id: str
    source: int
    name: str = ""
    muted: bool = False
    width: int = 0
    height: int = 0
    preferred_mime_types: tuple[str, ...] = ()


@dataclass
class SignalDescription:
    """A session description pushed to one participant (never replayed)."""

    target: int
    type: int
    sdp: str
    action_id: str = ""


@dataclass
class SignalCandidate:
    target: int
    candidate: str
    sdp_mid: str
    sdp_mline_index: int


@dataclass
class PublishTrackResult:
    action_id: str
    client_track_id: str
    track: TrackView


@dataclass
class TrackView:
    row: MediaTrack
    subscriber_count: int = 0


@dataclass
class TalkTimeEntry:
    participant: Any  # SessionParticipant
    duration: timedelta
    interval_count: int
    share: float


@dataclass
class ParticipantStats:
    participant_id: str
    identity: str
    upstream: list[QualitySampleRow]
    downstream: list[QualitySampleRow]
    published: int
    subscribed: int
    reconnect_count: int


@dataclass
class MediaStatsView:
    session_id: str
    compute_time: datetime
    published: int
    subscriptions: int
    participants: list[ParticipantStats]


# In-memory state of the rooms on this process --------------------------------------------------


@dataclass
class _Peer:
    participant_id: str
    identity: str
    connection: Any  # presence.Connection: queue, permissions, manual_subscription
    # Tracks this (automatically subscribing) peer unsubscribed from: not re-subscribed.
    declined: set[str] = field(default_factory=set)


@dataclass
class _Track:
    id: str
    backend_id: str
    participant_id: str
    identity: str
    kind: str
    source: int
    audio: PublishedAudioTrack | None = None


@dataclass
class _Pending:
    action_id: str
    publication: Publication
    at: float


class _Room:
    def __init__(self, tenant_id: str, room_id: str, main_session_id: str) -> None:
        self.tenant_id = tenant_id
        self.room_id = room_id
        self.main_session_id = main_session_id
        self.peers: dict[str, _Peer] = {}
        self.tracks: dict[str, _Track] = {}  # server track id
        self.by_backend: dict[str, str] = {}  # backend track id -> server track id
        self.pending: dict[tuple[str, str], _Pending] = {}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.worker: asyncio.Task | None = None
        self.sampler: asyncio.Task | None = None
        self.closed = False
        # Active speakers: participant -> level (dBov), and the last set announced.
        self.speakers: dict[str, float] = {}
        self.announced: tuple[str, ...] = ()
        self.announce_at = 0.0
        self.announce_task: asyncio.Task | None = None


@dataclass
class _PeerGone:
    participant_id: str


class _CloseIfEmpty:
    pass


def _published(room: _Room, track: _Track) -> PublishedTrack:
    return PublishedTrack(
        room.tenant_id,
        room.room_id,
        track.id,
        track.participant_id,
        track.identity,
        track.kind,
        track.source,
    )


def _mime(kind: str, codec: str) -> str:
    if not codec:
        return ""
    return codec if "/" in codec else f"{kind}/{codec}"


class MediaDomain:
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        sessions: s.SessionsDomain,
        backend: pt.MediaBackend | None,
        settings: MediaSettings | None = None,
        *,
        unavailable_message: str = "",
    ) -> None:
        self.db = db
        self.uow = uow
        self.sessions = sessions
        self.backend = backend
        self.settings = settings or MediaSettings()
        self.unavailable_message = unavailable_message or "no media backend is configured"
        self.rooms: dict[str, _Room] = {}
        self.listeners: list[AudioTrackListener] = []
        self.track_listeners: list[TrackListener] = []
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._closing: dict[str, asyncio.Task] = {}  # participant id -> delayed close_peer
        self._moving: dict[str, asyncio.Task] = {}  # participant id -> room change in progress
        self._tasks: set[asyncio.Task] = set()
        self.talk = TalkTime(self, self.settings.talk)
        self.add_audio_listener(self.talk)

    # -- for other areas ------------------------------------------------------------------

    def add_audio_listener(self, listener: AudioTrackListener) -> None:
        """`listener` is told about every audio track published from now on, and at once
        about the ones already published."""
        self.listeners.append(listener)
        for room in list(self.rooms.values()):
            for track in room.tracks.values():
                if track.audio is not None:
                    self._spawn(listener.audio_track_started(track.audio))

    def add_track_listener(self, listener: TrackListener) -> None:
        """`listener` is told about every track (any kind) published or ended from now on."""
        self.track_listeners.append(listener)

    def published_tracks(self, tenant_id: str, session_id: str) -> list[PublishedTrack]:
        room = self.rooms.get(session_id)
        if room is None or room.tenant_id != tenant_id:
            return []
        return [_published(room, t) for t in room.tracks.values()]

    def record(self, tracks: list[PublishedTrack], format: str = "webm") -> AsyncIterator[bytes]:
        """The backend's recording of `tracks` (all of one room) as a byte stream. Raises
        TrackNotFoundError when one of them is no longer published."""
        backend = self._require_backend()
        room = self.rooms.get(tracks[0].session_id) if tracks else None
        known = [room.tracks.get(t.track_id) for t in tracks] if room is not None else [None]
        if room is None or room.tenant_id != tracks[0].tenant_id or None in known:
            raise pt.TrackNotFoundError("the track is no longer published")
        return backend.record(room.room_id, [t.backend_id for t in known], format=format)

    def published_audio_tracks(self, tenant_id: str, session_id: str) -> list[PublishedAudioTrack]:
        room = self.rooms.get(session_id)
        if room is None or room.tenant_id != tenant_id:
            return []
        return [t.audio for t in room.tracks.values() if t.audio is not None]

    async def audio_tap(
        self, track: PublishedAudioTrack, sample_rate: int = 16000
    ) -> AsyncIterator[pt.AudioFrame]:
        """Decoded mono audio of a published track until it ends (empty if it already has)."""
        room = self.rooms.get(track.session_id)
        known = room.tracks.get(track.track_id) if room is not None else None
        if self.backend is None or known is None or room.tenant_id != track.tenant_id:
            return
        try:
            async for frame in self.backend.audio_tap(
                room.room_id, known.backend_id, sample_rate=sample_rate, channels=1
            ):
                yield frame
        except (pt.TrackNotFoundError, pt.RoomNotFoundError):
            return

    @staticmethod
    def now() -> datetime:
        return utcnow()

    @property
    def available(self) -> bool:
        return self.backend is not None

    def _require_backend(self) -> pt.MediaBackend:
        if self.backend is None:
            raise Unavailable(self.unavailable_message, reason="MEDIA_BACKEND_UNAVAILABLE")
        return self.backend

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    # -- lifecycle (called by presence) ----------------------------------------------------

    async def peer_entered(self, connection) -> None:
        """The connection's participant is in `connection.room` with media: register it."""
        if self.backend is None:
            return
        pending = self._closing.pop(connection.participant_id, None)
        if pending is not None:
            pending.cancel()
        room = await self._open_room(
            connection.tenant_id, connection.room, connection.main_session_id
        )
        identity = connection.principal.participant.identity
        await self.backend.add_peer(room.room_id, connection.participant_id)
        peer = room.peers.get(connection.participant_id)
        if peer is None:
            peer = room.peers[connection.participant_id] = _Peer(
                connection.participant_id, identity, connection
            )
        peer.connection = connection
        if not getattr(connection, "manual_subscription", False):
            for track in list(room.tracks.values()):
                if track.participant_id != peer.participant_id:
                    await self._subscribe(room, peer, track, automatic=True)

    def peer_left(self, connection, room_id: str | None = None, after: float = 0.0) -> None:
        """The participant left `room_id` (default: its current room); after `after` seconds
        (a dropped connection's grace window) unless it comes back first."""
        room_id = room_id or connection.room
        if self.backend is None or room_id not in self.rooms:
            return
        pid = connection.participant_id

        async def close() -> None:
            if after:
                await asyncio.sleep(after)
            await self._close_peer(room_id, pid, connection)

        previous = self._closing.pop(pid, None)
        if previous is not None:
            previous.cancel()
        task = self._spawn(close())
        if after:
            self._closing[pid] = task
            task.add_done_callback(
                lambda t: self._closing.pop(pid, None) if self._closing.get(pid) is t else None
            )

    def peer_moved(self, connection, old_room: str | None, new_room: str) -> None:
        """The participant moved between rooms (or was admitted): close the old peer, open the
        new one. Signaling actions wait for this to finish."""
        if self.backend is None:
            return
        pid = connection.participant_id
        before = self._moving.get(pid)

        async def move() -> None:
            if before is not None:
                with contextlib.suppress(Exception):
                    await before
            if old_room and old_room != new_room:
                await self._close_peer(old_room, pid, connection)
            await self.peer_entered(connection)

        task = self._spawn(move())
        self._moving[pid] = task
        task.add_done_callback(
            lambda t: self._moving.pop(pid, None) if self._moving.get(pid) is t else None
        )

    async def _open_room(self, tenant_id: str, room_id: str, main_session_id: str) -> _Room:
        lock = self._room_locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            room = self.rooms.get(room_id)
            if room is not None and not room.closed:
                return room
            room = _Room(tenant_id, room_id, main_session_id)

            async def sink(event: pt.MediaEvent) -> None:
                self._on_backend_event(room, event)

            await self.backend.create_room(room_id, pt.RoomOptions(), sink)
            self.rooms[room_id] = room
            room.worker = asyncio.ensure_future(self._work(room))
            room.sampler = asyncio.ensure_future(self._sample_quality(room))
            return room

    async def _close_peer(self, room_id: str, participant_id: str, connection=None) -> None:
        room = self.rooms.get(room_id)
        if room is None:
            return
        peer = room.peers.get(participant_id)
        if peer is not None and connection is not None and peer.connection is not connection:
            # A newer connection of the participant owns the peer now.
            if getattr(peer.connection, "room", room_id) == room_id and not getattr(
                peer.connection, "closed", False
            ):
                return
        room.peers.pop(participant_id, None)
        for key in [k for k in room.pending if k[0] == participant_id]:
            del room.pending[key]
        with contextlib.suppress(pt.RoomNotFoundError, pt.PeerNotFoundError):
            await self.backend.close_peer(room_id, participant_id)
        room.queue.put_nowait(_PeerGone(participant_id))
        room.queue.put_nowait(_CloseIfEmpty())

    async def close(self) -> None:
        """Closes every room (shutdown)."""
        for task in list(self._closing.values()):
            task.cancel()
        await self.talk.close()
        for room in list(self.rooms.values()):
            await self._close_room(room)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _close_room(self, room: _Room) -> None:
        if room.closed:
            return
        room.closed = True
        if self.rooms.get(room.room_id) is room:
            del self.rooms[room.room_id]
        for task in (room.sampler, room.announce_task):
            if task is not None:
                task.cancel()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                await self.backend.close_room(room.room_id)
        # Tracks still registered end now (the backend may not report them once closed).
        for track in list(room.tracks.values()):
            await self._track_ended(room, track, "peer_left")
        if room.worker is not None and room.worker is not asyncio.current_task():
            room.worker.cancel()

    # -- backend events ------------------------------------------------------------------

    def _on_backend_event(self, room: _Room, event: pt.MediaEvent) -> None:
        if isinstance(event, pt.PeerSignal):
            self._deliver_signal(room, event)
        elif not room.closed:
            room.queue.put_nowait(event)

    def _deliver_signal(self, room: _Room, signal: pt.PeerSignal) -> None:
        peer = room.peers.get(signal.peer_id)
        if peer is None or getattr(peer.connection, "closed", False):
            return
        queue = peer.connection.queue
        if signal.description is not None:
            kind = SDP_OFFER if signal.description.type == "offer" else SDP_ANSWER
            queue.put_nowait(SignalDescription(SUBSCRIBER, kind, signal.description.sdp))
        if signal.candidate is not None:
            c = signal.candidate
            target = SUBSCRIBER if c.role == "subscriber" else PUBLISHER
            queue.put_nowait(
                SignalCandidate(target, c.candidate, c.sdp_mid or "", c.sdp_mline_index or 0)
            )

    async def _work(self, room: _Room) -> None:
        while True:
            event = await room.queue.get()
            try:
                if isinstance(event, pt.TrackPublished):
                    await self._track_published(room, event.track)
                elif isinstance(event, pt.TrackUnpublished):
                    track_id = room.by_backend.get(event.track_id)
                    if track_id in room.tracks:
                        await self._track_ended(room, room.tracks[track_id], event.reason)
                elif isinstance(event, pt.TrackMuted):
                    track_id = room.by_backend.get(event.track_id)
                    if track_id is not None:
                        await self._set_muted_row(
                            room.tenant_id, track_id, event.muted, system_actor("media")
                        )
                elif isinstance(event, _PeerGone):
                    await self._end_subscriptions_of(room, event.participant_id)
                elif isinstance(event, _CloseIfEmpty):
                    if not room.peers and room.queue.empty():
                        await self._close_room(room)
                        return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("media event not handled", room=room.room_id)

    async def _track_published(self, room: _Room, info: pt.TrackInfo) -> None:
        if info.track_id in room.by_backend:
            return
        peer = room.peers.get(info.peer_id)
        if peer is None:
            return
        pending = room.pending.pop((info.peer_id, info.client_track_id), None)
        if pending is not None:
            publication = pending.publication
        else:
            # Published without an announcement: its source follows from its kind.
            source = SOURCE_OF_NAME.get(info.source) or (
                MICROPHONE if info.kind == "audio" else CAMERA
            )
            publication = Publication(info.client_track_id, source)
        permission = PERMISSION_FOR_SOURCE.get(publication.source)
        if permission not in peer.connection.permissions:
            # Never forwarded: the participant may not publish this.
            with contextlib.suppress(Exception):
                await self.backend.set_track_muted(room.room_id, info.track_id, True)
            return
        now = utcnow()
        row = MediaTrack(
            id=new_id("trk"),
            tenant_id=room.tenant_id,
            session_id=room.room_id,
            main_session_id=room.main_session_id,
            participant_id=peer.participant_id,
            identity=peer.identity,
            client_track_id=info.client_track_id[:MAX_CLIENT_TRACK_ID],
            kind=info.kind,
            source=publication.source,
            name=publication.name,
            mime_type=_mime(info.kind, info.codec),
            muted=publication.muted or info.muted,
            muted_by=_actor_json(actor_of(peer.connection.principal))
            if publication.muted
            else None,
            width=publication.width,
            height=publication.height,
            publish_time=now,
            unpublish_time=None,
            unpublish_reason=0,
        )
        actor = actor_of(peer.connection.principal)
        async with self.uow(room.tenant_id, actor) as uow:
            uow.session.add(row)
            uow.emit(
                mev.TrackPublished(
                    track_id=row.id,
                    participant_id=row.participant_id,
                    identity=row.identity,
                    source=row.source,
                    mime_type=row.mime_type,
                    muted=row.muted,
                    width=row.width,
                    height=row.height,
                ),
                session_id=room.room_id,
                occur_time=now,
            )
        track = _Track(
            row.id, info.track_id, row.participant_id, row.identity, info.kind, row.source
        )
        if info.kind == "audio":
            track.audio = PublishedAudioTrack(
                room.tenant_id,
                room.room_id,
                room.main_session_id,
                row.id,
                row.participant_id,
                row.identity,
            )
        room.tracks[row.id] = track
        room.by_backend[info.track_id] = row.id
        if publication.muted and not info.muted:
            with contextlib.suppress(Exception):
                await self.backend.set_track_muted(room.room_id, info.track_id, True)
        if pending is not None:
            peer.connection.queue.put_nowait(
                PublishTrackResult(pending.action_id, row.client_track_id, TrackView(row))
            )
        for other in list(room.peers.values()):
            if other.participant_id == row.participant_id:
                continue
            if getattr(other.connection, "manual_subscription", False):
                continue
            await self._subscribe(room, other, track, automatic=True)
        if track.audio is not None:
            for listener in self.listeners:
                self._spawn(listener.audio_track_started(track.audio))
        for listener in self.track_listeners:
            self._spawn(listener.track_started(_published(room, track)))

    async def _track_ended(self, room: _Room, track: _Track, reason: str) -> None:
        room.tracks.pop(track.id, None)
        room.by_backend.pop(track.backend_id, None)
        now = utcnow()
        async with self.uow(room.tenant_id, system_actor("media")) as uow:
            row = await mrepo.get_track(uow.session, room.tenant_id, track.id)
            if row is not None and row.unpublish_time is None:
                row.unpublish_time = now
                row.unpublish_reason = UNPUBLISHED_REASON.get(
                    reason, mev.TrackUnpublished.REASON_MEDIA_LOST
                )
                await self._end_subscriptions(uow, room, track.id, now)
                uow.emit(
                    mev.TrackUnpublished(
                        track_id=row.id,
                        participant_id=row.participant_id,
                        source=row.source,
                        reason=row.unpublish_reason,
                    ),
                    session_id=room.room_id,
                    occur_time=now,
                )
        if track.audio is not None:
            for listener in self.listeners:
                self._spawn(listener.audio_track_ended(track.audio))
        for listener in self.track_listeners:
            self._spawn(listener.track_ended(_published(room, track)))

    async def _end_subscriptions(self, uow, room: _Room, track_id: str, now: datetime) -> None:
        for sub in await mrepo.active_subscriptions_of_track(uow.session, room.tenant_id, track_id):
            sub.unsubscribe_time = now
            uow.emit(
                mev.TrackUnsubscribed(
                    track_id=track_id,
                    subscriber_participant_id=sub.subscriber_participant_id,
                    publisher_participant_id=sub.publisher_participant_id,
                ),
                session_id=room.room_id,
                occur_time=now,
            )

    async def _end_subscriptions_of(self, room: _Room, participant_id: str) -> None:
        now = utcnow()
        async with self.uow(room.tenant_id, system_actor("media")) as uow:
            subs = await mrepo.active_subscriptions_of_subscriber(
                uow.session, room.tenant_id, room.room_id, participant_id
            )
            for sub in subs:
                sub.unsubscribe_time = now
                uow.emit(
                    mev.TrackUnsubscribed(
                        track_id=sub.track_id,
                        subscriber_participant_id=participant_id,
                        publisher_participant_id=sub.publisher_participant_id,
                    ),
                    session_id=room.room_id,
                    occur_time=now,
                )

    async def _subscribe(self, room: _Room, peer: _Peer, track: _Track, automatic: bool) -> bool:
        if automatic and track.id in peer.declined:
            return False
        async with self.db.reader() as session:
            existing = await mrepo.active_subscription(
                session, room.tenant_id, track.id, peer.participant_id
            )
        if existing is not None:
            return False
        try:
            await self.backend.subscribe(room.room_id, peer.participant_id, track.backend_id)
        except (pt.PeerNotFoundError, pt.TrackNotFoundError, pt.RoomNotFoundError):
            return False
        now = utcnow()
        async with self.uow(room.tenant_id, system_actor("media")) as uow:
            uow.session.add(
                MediaSubscription(
                    id=new_id("sub"),
                    tenant_id=room.tenant_id,
                    session_id=room.room_id,
                    track_id=track.id,
                    subscriber_participant_id=peer.participant_id,
                    publisher_participant_id=track.participant_id,
                    automatic=automatic,
                    subscribe_time=now,
                    unsubscribe_time=None,
                )
            )
            uow.emit(
                mev.TrackSubscribed(
                    track_id=track.id,
                    subscriber_participant_id=peer.participant_id,
                    publisher_participant_id=track.participant_id,
                ),
                session_id=room.room_id,
                occur_time=now,
            )
        return True

    # -- signaling actions (called by presence) ---------------------------------------------

    async def perform(self, connection, action) -> Any:
        """Runs a media action of the participant connection. Returns the answer to send, or
        None when it is sent later (PublishTrackResult)."""
        self._require_backend()
        moving = self._moving.get(connection.participant_id)
        if moving is not None:
            with contextlib.suppress(Exception):
                await moving
        room = self.rooms.get(connection.room)
        peer = room.peers.get(connection.participant_id) if room is not None else None
        if peer is None:
            # The participant entered the room before the media backend was reachable.
            await self.peer_entered(connection)
            room = self.rooms[connection.room]
            peer = room.peers[connection.participant_id]
        peer.connection = connection
        a, kind = action.args, action.kind
        try:
            if kind == "session_description":
                return await self._description(room, peer, action.action_id, a)
            if kind == "ice_candidate":
                await self._candidate(room, peer, a)
                return _ack(action.action_id)
            if kind == "publish_track":
                return await self._publish_track(room, peer, action.action_id, a["publication"])
            if kind == "unpublish_track":
                await self._unpublish(room, peer, a["track_id"])
            elif kind == "mute_track":
                await self._mute(room, peer, a["track_id"], True)
            elif kind == "unmute_track":
                await self._mute(room, peer, a["track_id"], False)
            elif kind == "subscribe":
                await self._subscribe_action(room, peer, a["track_ids"], True)
            elif kind == "unsubscribe":
                await self._subscribe_action(room, peer, a["track_ids"], False)
            return _ack(action.action_id)
        except pt.InvalidSdpError as exc:
            reason = "CODEC_UNSUPPORTED" if "codec" in str(exc).lower() else "SDP_INVALID"
            path = "ice_candidate.candidate" if kind == "ice_candidate" else f"{kind}.sdp"
            raise InvalidArgument(FieldViolation(path, str(exc)[:300]), reason=reason) from None
        except pt.TrackNotFoundError:
            raise NotFound("no such track in this room", reason="TRACK_NOT_FOUND") from None
        except (pt.PeerNotFoundError, pt.RoomNotFoundError):
            raise FailedPrecondition(
                "the media connection is not set up; publish or wait for the server's offer",
                reason="MEDIA_NOT_CONNECTED",
            ) from None
        except DomainError:
            raise
        except Exception:
            log.exception("media backend failed", room=room.room_id, action=kind)
            raise Unavailable(
                "the media backend failed", reason="MEDIA_BACKEND_UNAVAILABLE"
            ) from None

    async def _description(self, room: _Room, peer: _Peer, action_id: str, a: dict):
        target, kind, sdp = a["target"], a["type"], a["sdp"]
        problems = Violations()
        if target not in (PUBLISHER, SUBSCRIBER):
            problems.add("session_description.target", "must be PUBLISHER or SUBSCRIBER")
        elif target == PUBLISHER and kind != SDP_OFFER:
            problems.add("session_description.type", "the publisher connection takes an OFFER")
        elif target == SUBSCRIBER and kind != SDP_ANSWER:
            problems.add("session_description.type", "the subscriber connection takes an ANSWER")
        if not sdp:
            problems.add("session_description.sdp", "is required")
        elif len(sdp) > MAX_SDP:
            problems.add("session_description.sdp", f"must be at most {MAX_SDP} characters")
        if problems.items:
            raise InvalidArgument(problems.items, reason="SDP_INVALID")
        if target == PUBLISHER:
            answer = await self.backend.publish(
                room.room_id, peer.participant_id, pt.SessionDescription("offer", sdp)
            )
            return SignalDescription(PUBLISHER, SDP_ANSWER, answer.sdp, action_id)
        await self.backend.set_remote_description(
            room.room_id, peer.participant_id, pt.SessionDescription("answer", sdp)
        )
        return _ack(action_id)

    async def _candidate(self, room: _Room, peer: _Peer, a: dict) -> None:
        problems = Violations()
        if a["target"] not in (PUBLISHER, SUBSCRIBER):
            problems.add("ice_candidate.target", "must be PUBLISHER or SUBSCRIBER")
        if len(a["candidate"]) > MAX_CANDIDATE:
            problems.add("ice_candidate.candidate", f"must be at most {MAX_CANDIDATE} characters")
        if len(a["sdp_mid"]) > 64:
            problems.add("ice_candidate.sdp_mid", "must be at most 64 characters")
        problems.raise_if_any()
        await self.backend.add_ice_candidate(
            room.room_id,
            peer.participant_id,
            pt.IceCandidate(
                a["candidate"],
                a["sdp_mid"] or None,
                a["sdp_mline_index"],
                role="publisher" if a["target"] == PUBLISHER else "subscriber",
            ),
        )

    async def _publish_track(self, room: _Room, peer: _Peer, action_id: str, p: Publication):
        problems = Violations()
        if not p.client_track_id:
            problems.add("publish_track.client_track_id", "is required")
        elif len(p.client_track_id) > MAX_CLIENT_TRACK_ID:
            problems.add(
                "publish_track.client_track_id",
                f"must be at most {MAX_CLIENT_TRACK_ID} characters",
            )
        if p.source not in SOURCES:
            problems.add("publish_track.source", "must be a track source")
        if len(p.name) > MAX_TRACK_NAME:
            problems.add("publish_track.name", f"must be at most {MAX_TRACK_NAME} characters")
        if not (0 <= p.width <= 16384 and 0 <= p.height <= 16384):
            problems.add("publish_track.width", "width and height must be at most 16384")
        problems.raise_if_any()
        supported = {c.lower() for c in self.settings.codecs}
        unsupported = [m for m in p.preferred_mime_types if m.lower() not in supported]
        if p.preferred_mime_types and len(unsupported) == len(p.preferred_mime_types):
            raise InvalidArgument(
                FieldViolation(
                    "publish_track.preferred_mime_types",
                    f"none is supported; the server forwards {', '.join(self.settings.codecs)}",
                ),
                reason="CODEC_UNSUPPORTED",
            )
        _require_permission(peer.connection, PERMISSION_FOR_SOURCE[p.source])
        async with self.db.reader() as session:
            existing = await session.scalar(
                mrepo.tracks(room.tenant_id, room.room_id, peer.participant_id).where(
                    MediaTrack.client_track_id == p.client_track_id
                )
            )
            if existing is not None:
                counts = await mrepo.subscriber_counts(session, room.tenant_id, [existing.id])
                return PublishTrackResult(
                    action_id, p.client_track_id, TrackView(existing, counts.get(existing.id, 0))
                )
        now = time.monotonic()
        for key in [k for k, v in room.pending.items() if now - v.at > PUBLICATION_TTL]:
            del room.pending[key]
        room.pending[(peer.participant_id, p.client_track_id)] = _Pending(action_id, p, now)
        return None

    def _own_track(self, room: _Room, peer: _Peer, track_id: str, path: str) -> _Track:
        track = room.tracks.get(track_id)
        if track is None:
            raise NotFound(
                f"track {track_id!r} is not published in this room", reason="TRACK_NOT_FOUND"
            )
        if track.participant_id != peer.participant_id:
            raise PermissionDenied(
                "only the publisher may do this with its track", reason="NOT_TRACK_OWNER"
            )
        return track

    async def _unpublish(self, room: _Room, peer: _Peer, track_id: str) -> None:
        track = self._own_track(room, peer, track_id, "unpublish_track.track_id")
        # Stop forwarding now; the client's next offer drops the track from its connection.
        with contextlib.suppress(pt.TrackNotFoundError):
            await self.backend.set_track_muted(room.room_id, track.backend_id, True)
        for other in list(room.peers.values()):
            with contextlib.suppress(pt.PeerNotFoundError, pt.TrackNotFoundError):
                if other.participant_id != peer.participant_id:
                    await self.backend.unsubscribe(
                        room.room_id, other.participant_id, track.backend_id
                    )
        await self._track_ended(room, track, "unpublished")

    async def _mute(self, room: _Room, peer: _Peer, track_id: str, muted: bool) -> None:
        track = room.tracks.get(track_id)
        if track is None:
            raise NotFound(
                f"track {track_id!r} is not published in this room", reason="TRACK_NOT_FOUND"
            )
        own = track.participant_id == peer.participant_id
        if muted and not own:
            _require_permission(peer.connection, s.MODERATE)
        if not muted:
            if not own:
                raise PermissionDenied(
                    "only the publisher may unmute its track", reason="NOT_TRACK_OWNER"
                )
            _require_permission(peer.connection, PERMISSION_FOR_SOURCE[track.source])
        # The row first: the backend's own TrackMuted report then finds it up to date, and
        # the event names who muted.
        await self._set_muted_row(
            room.tenant_id, track.id, muted, actor_of(peer.connection.principal)
        )
        await self.backend.set_track_muted(room.room_id, track.backend_id, muted)

    async def _set_muted_row(self, tenant_id: str, track_id: str, muted: bool, actor) -> MediaTrack:
        async with self.uow(tenant_id, actor) as uow:
            row = await mrepo.get_track(uow.session, tenant_id, track_id)
            if row is None or row.muted == muted:
                return row
            row.muted = muted
            row.muted_by = _actor_json(actor) if muted else None
            event_type = mev.TrackMuted if muted else mev.TrackUnmuted
            uow.emit(
                event_type(track_id=row.id, participant_id=row.participant_id, source=row.source),
                session_id=row.session_id,
            )
            return row

    async def _subscribe_action(
        self, room: _Room, peer: _Peer, track_ids: tuple[str, ...], subscribe: bool
    ) -> None:
        verb = "subscribe" if subscribe else "unsubscribe"
        problems = Violations()
        if not track_ids:
            problems.add(f"{verb}.track_ids", "name at least one track")
        if len(track_ids) > MAX_TRACK_IDS:
            problems.add(f"{verb}.track_ids", f"at most {MAX_TRACK_IDS} tracks")
        for i, track_id in enumerate(track_ids):
            track = room.tracks.get(track_id)
            if track is None:
                problems.add(f"{verb}.track_ids[{i}]", "no such published track in this room")
            elif track.participant_id == peer.participant_id:
                problems.add(f"{verb}.track_ids[{i}]", "is the participant's own track")
        if problems.items:
            raise InvalidArgument(problems.items, reason="TRACK_NOT_FOUND")
        for track_id in track_ids:
            track = room.tracks[track_id]
            if subscribe:
                peer.declined.discard(track_id)
                await self._subscribe(room, peer, track, automatic=False)
                continue
            peer.declined.add(track_id)
            with contextlib.suppress(pt.PeerNotFoundError, pt.TrackNotFoundError):
                await self.backend.unsubscribe(room.room_id, peer.participant_id, track.backend_id)
            now = utcnow()
            async with self.uow(room.tenant_id, actor_of(peer.connection.principal)) as uow:
                sub = await mrepo.active_subscription(
                    uow.session, room.tenant_id, track_id, peer.participant_id
                )
                if sub is not None:
                    sub.unsubscribe_time = now
                    uow.emit(
                        mev.TrackUnsubscribed(
                            track_id=track_id,
                            subscriber_participant_id=peer.participant_id,
                            publisher_participant_id=track.participant_id,
                        ),
                        session_id=room.room_id,
                        occur_time=now,
                    )

    async def mute_sources(
        self, tenant_id: str, room_id: str, participant_ids: list[str] | None, sources, actor
    ) -> list[MediaTrack]:
        """Server-side mute of the published tracks of these sources (moderation)."""
        room = self.rooms.get(room_id)
        if room is None or room.tenant_id != tenant_id or self.backend is None:
            return []
        sources = set(sources) or {MICROPHONE}
        muted = []
        for track in list(room.tracks.values()):
            if track.source not in sources:
                continue
            if participant_ids is not None and track.participant_id not in participant_ids:
                continue
            if participant_ids is None:
                peer = room.peers.get(track.participant_id)
                if peer is None or getattr(peer.connection, "role", None) != s.LEARNER:
                    continue  # "every learner"
            row = await self._set_muted_row(tenant_id, track.id, True, actor)
            with contextlib.suppress(pt.TrackNotFoundError):
                await self.backend.set_track_muted(room_id, track.backend_id, True)
            if row is not None:
                muted.append(row)
        return muted

    # -- talk time and active speakers ------------------------------------------------------

    async def record_speaking(
        self, track: PublishedAudioTrack, start: datetime, end: datetime
    ) -> None:
        async with self.uow(track.tenant_id, system_actor("media")) as uow:
            uow.session.add(
                SpeakingIntervalRow(
                    id=new_id("spk"),
                    tenant_id=track.tenant_id,
                    session_id=track.session_id,
                    main_session_id=track.main_session_id,
                    participant_id=track.participant_id,
                    identity=track.identity,
                    track_id=track.track_id,
                    start_time=start,
                    end_time=end,
                )
            )
            event = mev.SpeakingIntervalRecorded(
                participant_id=track.participant_id,
                identity=track.identity,
                track_id=track.track_id,
            )
            event.start_time.FromDatetime(start)
            event.end_time.FromDatetime(end)
            uow.emit(event, session_id=track.session_id, occur_time=end)

    def speaker_level(
        self, track: PublishedAudioTrack, speaking: bool, level: float, now: float
    ) -> None:
        """Called per 20 ms of a track's audio; announces the speaker set when it changes, at
        most once per `speakers_interval`."""
        room = self.rooms.get(track.session_id)
        if room is None or room.closed:
            return
        if speaking:
            room.speakers[track.participant_id] = level
        else:
            room.speakers.pop(track.participant_id, None)
        current = tuple(sorted(room.speakers))
        if current == room.announced or room.announce_task is not None:
            return
        delay = max(0.0, room.announce_at + self.settings.talk.speakers_interval - now)
        room.announce_task = self._spawn(self._announce_speakers(room, delay))

    async def _announce_speakers(self, room: _Room, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            speakers = sorted(room.speakers.items(), key=lambda kv: -kv[1])
            names = tuple(sorted(room.speakers))
            if names == room.announced:
                return
            room.announced = names
            room.announce_at = time.monotonic()
            event = mev.ActiveSpeakersChanged(
                speakers=[
                    mev.ActiveSpeakersChanged.Speaker(
                        participant_id=pid, level=float(min(1.0, max(0.0, 10 ** (lvl / 20))))
                    )
                    for pid, lvl in speakers
                ]
            )
            async with self.uow(room.tenant_id, system_actor("media")) as uow:
                uow.emit(event, session_id=room.room_id)
        finally:
            room.announce_task = None

    # -- quality samples ------------------------------------------------------------------

    async def _sample_quality(self, room: _Room) -> None:
        period = self.settings.quality_sample_period
        while not room.closed:
            await asyncio.sleep(period)
            try:
                await self.sample_quality(room.room_id, period)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("quality sample failed", room=room.room_id, exc_info=True)

    async def sample_quality(self, room_id: str, period: float) -> int:
        """Records one quality sample per peer, direction and track; returns how many."""
        room = self.rooms.get(room_id)
        if room is None:
            return 0
        stats = await self.backend.stats(room_id)
        now = utcnow()
        count = 0
        async with self.uow(room.tenant_id, system_actor("media")) as uow:
            for item in stats:
                peer = room.peers.get(item.peer_id)
                if peer is None:
                    continue
                track_id = room.by_backend.get(item.track_id, "")
                direction = UPSTREAM if item.direction == "inbound" else DOWNSTREAM
                row = QualitySampleRow(
                    id=new_id("qs"),
                    tenant_id=room.tenant_id,
                    session_id=room.room_id,
                    participant_id=peer.participant_id,
                    identity=peer.identity,
                    direction=direction,
                    track_id=track_id,
                    sample_time=now,
                    period_seconds=period,
                    packet_loss_ratio=max(0.0, min(1.0, float(item.fraction_lost or 0.0))),
                    jitter_ms=item.jitter_ms,
                    round_trip_time_ms=item.round_trip_time_ms,
                    bitrate_bps=int(item.bitrate_bps or 0),
                )
                uow.session.add(row)
                event = mev.QualitySampleRecorded(
                    participant_id=row.participant_id,
                    direction=direction,
                    track_id=track_id,
                    packet_loss_ratio=row.packet_loss_ratio,
                    bitrate_bps=row.bitrate_bps,
                )
                event.sample_time.FromDatetime(now)
                event.period.FromTimedelta(timedelta(seconds=period))
                if row.jitter_ms is not None:
                    event.jitter.FromTimedelta(timedelta(milliseconds=row.jitter_ms))
                if row.round_trip_time_ms is not None:
                    event.round_trip_time.FromTimedelta(
                        timedelta(milliseconds=row.round_trip_time_ms)
                    )
                uow.emit(event, session_id=room.room_id, occur_time=now)
                count += 1
        return count

    # -- reads (MediaService) ---------------------------------------------------------------

    async def _authorize(
        self, session, principal: Principal, session_id: str, scope: str, participants: bool
    ):
        """The session (room) row, for an API key with `scope` or, where `participants`, a
        participant token of this session family. Another tenant's session is NOT_FOUND."""
        claims = principal.participant
        if claims is None or not participants:
            principal.require(scope)
        if not session_id:
            raise InvalidArgument(FieldViolation("session_id", "is required"))
        row = await repo.get_live_session(session, principal.tenant_id, session_id)
        if claims is not None:
            main = (row.parent_session_id or row.id) if row is not None else None
            if main != claims.session_id:
                raise Unauthenticated(
                    "the participant token is for another session",
                    reason="TOKEN_SESSION_MISMATCH",
                )
            await s.SessionsDomain._check_not_revoked(session, principal.tenant_id, claims)
        if row is None:
            raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
        return row

    async def list_tracks(
        self,
        principal: Principal,
        session_id: str,
        participant_id: str,
        include_unpublished: bool,
        size: int,
        token: str,
    ) -> tuple[list[TrackView], str]:
        limit = paging.page_size(size)
        filters = {"s": session_id, "p": participant_id, "u": include_unpublished}
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            await self._authorize(session, principal, session_id, "media:read", True)
            query = mrepo.tracks(
                principal.tenant_id, session_id, participant_id, include_unpublished
            )
            rows = await repo.page(
                session, query, MediaTrack.publish_time, MediaTrack.id, limit, after
            )
            counts = await mrepo.subscriber_counts(
                session, principal.tenant_id, [r.id for r in rows]
            )
        views = [TrackView(r, counts.get(r.id, 0)) for r in rows]
        return views, paging.next_token(rows, limit, "publish_time", filters)

    async def _track_for(self, session, principal: Principal, track_id: str, scope: str):
        if not track_id:
            raise InvalidArgument(FieldViolation("track_id", "is required"))
        claims = principal.participant
        if claims is None:
            principal.require(scope)
        row = await mrepo.get_track(session, principal.tenant_id, track_id)
        if row is None or (claims is not None and row.main_session_id != claims.session_id):
            raise NotFound(f"track {track_id!r} not found", reason="TRACK_NOT_FOUND")
        if claims is not None:
            await s.SessionsDomain._check_not_revoked(session, principal.tenant_id, claims)
        return row

    async def get_track(self, principal: Principal, track_id: str) -> TrackView:
        async with self.db.reader() as session:
            row = await self._track_for(session, principal, track_id, "media:read")
            counts = await mrepo.subscriber_counts(session, principal.tenant_id, [row.id])
        return TrackView(row, counts.get(row.id, 0))

    async def mute_track(self, principal: Principal, track_id: str) -> TrackView:
        async with self.db.reader() as session:
            row = await self._track_for(session, principal, track_id, "media:write")
            if principal.participant is not None:
                me = await repo.get_participant(
                    session, principal.tenant_id, principal.participant.participant_id
                )
                main = await repo.get_live_session(
                    session, principal.tenant_id, row.main_session_id
                )
                settings = s.SessionSettings.from_json(main.settings)
                if me is None or s.MODERATE not in s.effective_permissions(me, settings):
                    raise PermissionDenied(
                        "muting another participant's track needs MODERATE",
                        reason="MISSING_PERMISSION",
                        metadata={"permission": "PARTICIPANT_PERMISSION_MODERATE"},
                    )
        if row.unpublish_time is not None:
            raise FailedPrecondition(
                "the track is no longer published", reason="TRACK_NOT_PUBLISHED"
            )
        updated = await self._set_muted_row(principal.tenant_id, row.id, True, actor_of(principal))
        room = self.rooms.get(row.session_id)
        track = room.tracks.get(row.id) if room is not None else None
        if track is not None:
            with contextlib.suppress(pt.TrackNotFoundError):
                await self.backend.set_track_muted(room.room_id, track.backend_id, True)
        return await self.get_track(principal, (updated or row).id)

    async def list_subscriptions(
        self,
        principal: Principal,
        session_id: str,
        track_id: str,
        subscriber: str,
        size: int,
        token: str,
    ) -> tuple[list[MediaSubscription], str]:
        limit = paging.page_size(size)
        filters = {"s": session_id, "t": track_id, "p": subscriber}
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            await self._authorize(session, principal, session_id, "media:read", False)
            query = mrepo.subscriptions(principal.tenant_id, session_id, track_id, subscriber)
            rows = await repo.page(
                session,
                query,
                MediaSubscription.subscribe_time,
                MediaSubscription.id,
                limit,
                after,
            )
        return rows, paging.next_token(rows, limit, "subscribe_time", filters)

    async def list_speaking_intervals(
        self, principal: Principal, session_id: str, participant_id: str, size: int, token: str
    ) -> tuple[list[SpeakingIntervalRow], str]:
        limit = paging.page_size(size)
        filters = {"s": session_id, "p": participant_id}
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            await self._authorize(session, principal, session_id, "media:read", False)
            query = mrepo.speaking_intervals(principal.tenant_id, session_id, participant_id)
            rows = await repo.page(
                session,
                query,
                SpeakingIntervalRow.start_time,
                SpeakingIntervalRow.id,
                limit,
                after,
            )
        return rows, paging.next_token(rows, limit, "start_time", filters)

    async def talk_time(
        self, principal: Principal, session_id: str, include_breakouts: bool
    ) -> tuple[list[TalkTimeEntry], timedelta]:
        async with self.db.reader() as session:
            row = await self._authorize(session, principal, session_id, "media:read", False)
            breakouts = include_breakouts and row.parent_session_id is None
            intervals = await mrepo.talk_rows(session, principal.tenant_id, row.id, breakouts)
            main_id = row.parent_session_id or row.id
            people = await repo.participants_list(session, principal.tenant_id, main_id)
        rooms = {row.id}
        if breakouts:
            rooms |= {r.room_id for r in self.rooms.values() if r.main_session_id == row.id}
        now = utcnow()
        # Intervals in progress count "so far".
        for pid, start in self.talk.ongoing(principal.tenant_id, rooms):
            intervals.append((pid, start, now))
        totals: dict[str, timedelta] = {}
        counts: dict[str, int] = {}
        for pid, start, end in intervals:
            totals[pid] = totals.get(pid, timedelta()) + max(timedelta(), end - start)
            counts[pid] = counts.get(pid, 0) + 1
        total = sum(totals.values(), timedelta())
        entries = []
        for p in people:
            if p.first_join_time is None and p.id not in totals:
                continue
            if not breakouts and p.id not in totals and (p.room_session_id or main_id) != row.id:
                continue
            spoken = totals.get(p.id, timedelta())
            share = spoken / total if total else 0.0
            entries.append(TalkTimeEntry(p, spoken, counts.get(p.id, 0), share))
        entries.sort(key=lambda e: (-e.duration, e.participant.id))
        return entries, total

    async def list_quality_samples(
        self,
        principal: Principal,
        session_id: str,
        participant_id: str,
        direction: int,
        time_from: datetime | None,
        time_to: datetime | None,
        size: int,
        token: str,
    ) -> tuple[list[QualitySampleRow], str]:
        if direction not in (0, UPSTREAM, DOWNSTREAM):
            raise InvalidArgument(FieldViolation("direction", "not a media direction"))
        limit = paging.page_size(size)
        filters = {
            "s": session_id,
            "p": participant_id,
            "d": direction,
            "f": time_from.isoformat() if time_from else "",
            "t": time_to.isoformat() if time_to else "",
        }
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            await self._authorize(session, principal, session_id, "media:read", False)
            query = mrepo.quality_samples(
                principal.tenant_id, session_id, participant_id, direction, time_from, time_to
            )
            rows = await repo.page(
                session, query, QualitySampleRow.sample_time, QualitySampleRow.id, limit, after
            )
        return rows, paging.next_token(rows, limit, "sample_time", filters)

    async def media_stats(self, principal: Principal, session_id: str) -> MediaStatsView:
        async with self.db.reader() as session:
            row = await self._authorize(session, principal, session_id, "media:read", False)
            published = await mrepo.published_tracks(session, principal.tenant_id, row.id)
            subscribed = await mrepo.count_active_subscriptions(
                session, principal.tenant_id, row.id
            )
            samples = await mrepo.all_quality_samples(session, principal.tenant_id, row.id)
            people = {
                p.id: p
                for p in await repo.participants_list(
                    session, principal.tenant_id, row.parent_session_id or row.id
                )
            }
        per: dict[str, ParticipantStats] = {}

        def entry(pid: str, identity: str) -> ParticipantStats:
            if pid not in per:
                p = people.get(pid)
                per[pid] = ParticipantStats(
                    pid,
                    identity or (p.identity if p else ""),
                    [],
                    [],
                    0,
                    0,
                    p.reconnect_count if p else 0,
                )
            return per[pid]

        for t in published:
            entry(t.participant_id, t.identity).published += 1
        for pid, count in subscribed.items():
            entry(pid, "").subscribed = count
        for sample in samples:
            e = entry(sample.participant_id, sample.identity)
            (e.upstream if sample.direction == UPSTREAM else e.downstream).append(sample)
        return MediaStatsView(
            row.id,
            utcnow(),
            len(published),
            sum(subscribed.values()),
            sorted(per.values(), key=lambda e: e.participant_id),
        )

    async def tracks_by_participant(
        self, tenant_id: str, room_id: str
    ) -> dict[str, list[TrackView]]:
        """The published tracks of a room per publisher, for snapshots."""
        async with self.db.reader() as session:
            rows = await mrepo.published_tracks(session, tenant_id, room_id)
            counts = await mrepo.subscriber_counts(session, tenant_id, [r.id for r in rows])
        out: dict[str, list[TrackView]] = {}
        for r in rows:
            out.setdefault(r.participant_id, []).append(TrackView(r, counts.get(r.id, 0)))
        return out


def _ack(action_id: str):
    from .presence import Ack

    return Ack(action_id)


def _require_permission(connection, permission: int) -> None:
    if permission not in connection.permissions:
        name = s.ev.ParticipantPermission.Name(permission)
        raise PermissionDenied(
            f"this needs the {name} permission",
            reason="MISSING_PERMISSION",
            metadata={"permission": name},
        )


def _actor_json(actor) -> dict:
    return {"kind": actor.kind, "id": actor.id, "identity": actor.identity}


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("media task failed", exc_info=task.exception())
