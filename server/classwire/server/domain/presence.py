"""Presence: the participant connections open on this replica and the pushes they receive.

A connection is the stream being open. Everything a participant sees comes from the durable
event log: one reader per tenant (a `TenantReader`) reads the events of its sessions with
connections here (breakout rooms included) in log order and offers each to the connections of
that session (its `RoomFeed`), which filter it to what their participant may see. Moderation
therefore needs no side channel: a connection reacts to the events about its own participant
(admitted, denied, removed, moved, session ended) whichever replica wrote them.

Push sequences are derived from the log, not stored: a push caused by the event with tenant
sequence `s` has sequence `4 * s + k` (k: 0 the event itself, 1 a room change it caused, 2 the
hand queue or poll results after a hand or poll event). They increase strictly across all of a
participant's connections, and a resumed connection replays its missed pushes by reading the
log after `after_sequence // 4` again, also after a restart.

Single-replica assumptions (see the area README): the feed readers, the connection registry and
the action-id replay cache live in this process; after a crash, `SessionsDomain.recover_
connections` treats every participant still marked connected as reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import session_events_pb2 as ev

from ..events.catalogue import unwrap
from ..events.wakeups import Wakeups
from ..store import events as event_store
from ..store import repositories as repo
from ..store.engine import Database
from ..store.types import utcnow
from . import sessions as s
from .auth import Principal
from .errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    Unimplemented,
)
from .media import MEDIA_ACTIONS
from .platform import actor_of

log = structlog.get_logger(__name__)

ROOM_ENTERED_ADMITTED = 1
ROOM_ENTERED_MOVED = 2
ROOM_ENTERED_BREAKOUTS_CLOSED = 3
ACTION_CACHE = 256
FEED_BATCH = 500

# Events never pushed to participants: token bookkeeping and backend-facing records.
HIDDEN = frozenset(
    {
        "SessionCreated",
        "JoinTokenIssued",
        "JoinTokenRevoked",
        "AttendanceIntervalRecorded",
        "AttendanceFinalized",
    }
)
# Events of the main session every room of it receives.
SESSION_WIDE = frozenset(
    {
        "SessionUpdated",
        "SessionStateChanged",
        "SessionEnded",
        "SessionCancelled",
        "BreakoutsOpened",
        "BreakoutParticipantMoved",
        "BreakoutBroadcast",
        "BreakoutsClosing",
        "BreakoutsClosed",
    }
)
MODERATORS_ONLY = frozenset({"ParticipantWaiting", "ParticipantDenied"})


# What the handler sends to the domain ------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One client message: `kind` names it (`join`, `leave`, `ping`, `raise_hand`, ...) and
    `args` carries its converted fields."""

    action_id: str
    kind: str
    args: dict = field(default_factory=dict)


# What the domain sends back ------------------------------------------------------------------


@dataclass
class Snapshot:
    session: s.SessionView
    local: s.ParticipantView
    participants: list[s.ParticipantView]
    session_sequence: int
    # participant id -> its published tracks (media.TrackView), when the media plane runs.
    tracks: dict = field(default_factory=dict)


@dataclass
class Joined:
    participant_id: str
    resume_token: str
    resumed: bool
    grace: timedelta
    snapshot: Snapshot
    last_sequence: int


@dataclass
class Push:
    sequence: int
    event: event_pb2.Event


@dataclass
class HandQueue:
    """The room's hand queue after the hand event whose push sequence is `sequence - 2`."""

    sequence: int
    entries: list  # classroom.HandEntry, in raise order


@dataclass
class PollResults:
    """Live results of a poll, as far as the audience it was built for may see them."""

    sequence: int
    poll_id: str
    view: Any  # classroom.PollView


@dataclass
class RoomEntered:
    sequence: int
    reason: int
    snapshot: Snapshot


@dataclass
class Ack:
    action_id: str
    created_id: str = ""


@dataclass
class ActionFailed:
    action_id: str
    error: DomainError


@dataclass
class Pong:
    action_id: str
    client_time: Any
    server_time: datetime


@dataclass
class Disconnect:
    reason: int
    message: str = ""


class _Shutdown:
    pass


def _name(envelope: event_pb2.Event) -> str:
    return envelope.type.rsplit(".", 1)[-1]


HAND_EVENTS = frozenset({"HandRaised", "HandLowered"})
POLL_RESULT_EVENTS = frozenset({"PollAnswered", "PollClosed"})
# Results visibility that shows live results to everyone (proto default: unset = PUBLIC_LIVE).
PUBLIC_LIVE_VISIBILITIES = frozenset({0, 1})


@dataclass
class Batch:
    """What a batch of events needs beyond the events themselves, read once per feed (never
    per connection): the learners' variant of events moderators see in full, the hand queues
    and poll results pushed after hand and poll events. Shared by every connection offered
    the batch, so each variant is built (and converted) once per audience."""

    learner_view: dict[int, event_pb2.Event] = field(default_factory=dict)
    hands: dict[int, HandQueue] = field(default_factory=dict)
    # event sequence -> (moderators' results, everyone else's or None when hidden from them)
    polls: dict[int, tuple[PollResults, PollResults | None]] = field(default_factory=dict)
    # Built on first use: only guardians read them, and most rooms have none.
    outsider_view: dict[int, event_pb2.Event] = field(default_factory=dict)

    def outsider(self, envelope: event_pb2.Event) -> event_pb2.Event:
        """A learner's poll answer as an outsider to the class (a guardian of someone else)
        sees it: that somebody answered, not who nor what."""
        shown = self.outsider_view.get(envelope.sequence)
        if shown is None:
            shown = _copy(envelope)
            answer = shown.session.poll_answered
            for name in ("participant_id", "identity", "option_ids"):
                answer.ClearField(name)
            if self is not EMPTY_BATCH:
                self.outsider_view[envelope.sequence] = shown
        return shown


EMPTY_BATCH = Batch()


class Connection:
    """One open participant stream and the filter of what its participant sees."""

    def __init__(self, presence: Presence, principal: Principal, result: s.JoinResult) -> None:
        self.presence = presence
        self.principal = principal
        p = result.participant
        self.tenant_id = principal.tenant_id
        self.participant_id = p.id
        self.main_session_id = p.session_id
        self.room = p.room_session_id or p.session_id
        self.role = p.role
        self.permissions = set(s.effective_permissions(p, result.session.settings))
        # For a guardian: the identities of its learners, whose own activity it may see.
        self.wards = frozenset(s.guardian_of(p))
        self.waiting = result.waiting
        self.epoch = result.epoch
        self.cursor = result.cursor  # the tenant sequence of the last event considered
        # Events up to this one include this connection's own join: never a takeover.
        self.joined_at = result.cursor
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed = False  # the server ended it: no drop to record
        self.pending_message = ""
        self.tasks: set[asyncio.Task] = set()

    @property
    def moderator(self) -> bool:
        return s.MODERATE in self.permissions

    # -- filtering ---------------------------------------------------------------------------

    def visible(
        self, envelope: event_pb2.Event, batch: Batch = EMPTY_BATCH
    ) -> event_pb2.Event | None:
        name = _name(envelope)
        if self.waiting or name in HIDDEN:
            return None
        if envelope.session_id != self.room and not (
            envelope.session_id == self.main_session_id and name in SESSION_WIDE
        ):
            return None
        if name in MODERATORS_ONLY and not self.moderator:
            return None
        payload = unwrap(envelope)
        if name == "ChatMessagePosted":
            me = self.participant_id
            if payload.audience == ev.CHAT_AUDIENCE_INSTRUCTORS:
                if self.role not in s.HOSTS and payload.sender_participant_id != me:
                    return None
            elif payload.audience == ev.CHAT_AUDIENCE_PARTICIPANT:
                if me not in (payload.recipient_participant_id, payload.sender_participant_id):
                    return None
        elif name in ("PollCreated", "PollAnswered") and not self.moderator:
            if (
                name == "PollAnswered"
                and self.role == s.GUARDIAN
                and payload.identity
                and payload.identity not in self.wards
            ):
                # Another learner's answer is private to that learner and the class.
                return batch.outsider(envelope)
            # Correct options, and the choices of polls whose results are not public live,
            # are for moderators only.
            envelope = batch.learner_view.get(envelope.sequence, envelope)
        elif name == "QualitySampleRecorded":
            if getattr(payload, "participant_id", "") != self.participant_id:
                return None
        return envelope

    # -- the feed ----------------------------------------------------------------------------

    def offer(self, envelope: event_pb2.Event, batch: Batch = EMPTY_BATCH) -> None:
        """Called by the feed for every event of the session family, in log order."""
        if self.closed or envelope.sequence <= self.cursor:
            return
        self.cursor = envelope.sequence
        for item in self.react(envelope, batch):
            self.queue.put_nowait(item)

    def react(self, envelope: event_pb2.Event, batch: Batch = EMPTY_BATCH) -> list:
        """The pushes one event makes, and the changes it makes to this connection."""
        out: list = []
        name = _name(envelope)
        payload = unwrap(envelope)
        mine = getattr(payload, "participant_id", None) == self.participant_id
        shown = self.visible(envelope, batch)
        if shown is not None:
            out.append(Push(envelope.sequence * 4, shown))
            if name in HAND_EVENTS and envelope.sequence in batch.hands:
                out.append(batch.hands[envelope.sequence])
            elif name in POLL_RESULT_EVENTS and envelope.sequence in batch.polls:
                moderators, everyone = batch.polls[envelope.sequence]
                results = moderators if self.moderator else everyone
                if results is not None:
                    out.append(results)
        if name in ("SessionEnded", "SessionCancelled"):
            if envelope.session_id == self.main_session_id:
                message = payload.message if name == "SessionEnded" else payload.reason
                out.append(self._end(s.LR_SESSION_ENDED, message))
        elif not mine or envelope.sequence <= self.joined_at:
            pass
        elif name in ("ParticipantRemoved", "ParticipantDenied"):
            self.pending_message = payload.message
        elif name == "ParticipantLeft":
            if payload.reason != s.LR_MOVED:  # a move between rooms keeps the connection
                out.append(self._end(payload.reason, self.pending_message))
        elif name in ("ParticipantResumed", "ParticipantJoined"):
            actor = envelope.actor
            if actor.kind != common_pb2.Actor.KIND_PARTICIPANT or actor.id != self.participant_id:
                # Written by a room move, or by whoever admitted this participant (the first
                # instructor in, a moderator), not by another connection of this participant.
                return out
            # Another connection took this participant over.
            out.append(self._end(s.LR_DUPLICATE_IDENTITY, ""))
        elif name == "ParticipantAdmitted" and self.waiting:
            self.waiting = False
            out.append(self._room_entered(envelope, ROOM_ENTERED_ADMITTED, self.room))
        elif name in ("ParticipantRoleChanged", "ParticipantPermissionsChanged"):
            if name == "ParticipantRoleChanged":
                self.role = payload.role
            self.permissions = set(payload.permissions)
        elif name == "BreakoutParticipantMoved":
            out.append(self._room_entered(envelope, ROOM_ENTERED_MOVED, payload.to_session_id))
        if name == "BreakoutsClosed" and self.room in payload.session_ids:
            out.append(
                self._room_entered(envelope, ROOM_ENTERED_BREAKOUTS_CLOSED, self.main_session_id)
            )
        return out

    def _end(self, reason: int, message: str) -> Disconnect:
        self.closed = True
        return Disconnect(reason, message)

    def _room_entered(self, envelope: event_pb2.Event, reason: int, room: str):
        previous, self.room = self.room, room
        if previous != room:
            moved = s.LR_MOVED
            self.presence.spawn(
                self.presence.sessions.record_move(self.tenant_id, self.participant_id, room, moved)
            )
        media = getattr(self.presence, "media", None)
        # Only a live connection has media (a replay probe has no queue).
        if media is not None and getattr(self, "queue", None) is not None:
            if reason == ROOM_ENTERED_ADMITTED:
                media.peer_moved(self, None, room)
            elif previous != room:
                media.peer_moved(self, previous, room)
        # The snapshot is read when the push is sent, so it reflects the room as entered.
        return _PendingRoomEntered(envelope.sequence * 4 + 1, reason, room)


@dataclass
class _PendingRoomEntered:
    sequence: int
    reason: int
    room: str


def _copy(envelope: event_pb2.Event) -> event_pb2.Event:
    copied = event_pb2.Event()
    copied.CopyFrom(envelope)
    return copied


class RoomFeed:
    """The connections of one main session (its breakout rooms too) on this replica."""

    def __init__(self, reader: TenantReader, session_id: str) -> None:
        self.reader = reader
        self.session_id = session_id
        self.connections: set[Connection] = set()

    @property
    def cursor(self) -> int:
        return self.reader.cursor


class TenantReader:
    """Reads the events of every session of one tenant that has connections on this replica,
    in log order, and offers each to the connections of its session: one read of the log per
    wake-up, each event decoded once, whatever the number of sessions and connections."""

    def __init__(self, presence: Presence, tenant_id: str, cursor: int) -> None:
        self.presence = presence
        self.tenant_id = tenant_id
        self.cursor = cursor
        self.feeds: dict[str, RoomFeed] = {}
        # Held for a read and its delivery: a connection attaching meanwhile would miss the
        # events read before its session was part of the query.
        self.lock = asyncio.Lock()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        db, wakeups = self.presence.db, self.presence.wakeups
        while self.feeds:
            try:
                async with self.lock:
                    async with db.reader() as session:
                        head = await event_store.last_sequence(
                            session, self.tenant_id, event_store.TENANT_STREAM
                        )
                        rows = await repo.families_events_after(
                            session, self.tenant_id, list(self.feeds), self.cursor, FEED_BATCH
                        )
                    envelopes = [
                        (_public(event_pb2.Event.FromString(row.payload)), main)
                        for row, main in rows
                    ]
                    batch = await self.presence.prepare(self.tenant_id, [e for e, _ in envelopes])
                    for envelope, main in envelopes:
                        self.cursor = envelope.sequence
                        feed = self.feeds.get(main)
                        if feed is not None:
                            for connection in list(feed.connections):
                                connection.offer(envelope, batch)
                    if len(rows) == FEED_BATCH:
                        continue
                    # Everything up to the head read before the events has been seen.
                    self.cursor = max(self.cursor, head)
                await wakeups.wait(self.tenant_id, head, self.presence.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session feed failed; retrying", tenant_id=self.tenant_id)
                await asyncio.sleep(0.5)


class Presence:
    def __init__(
        self,
        db: Database,
        wakeups: Wakeups,
        sessions: s.SessionsDomain,
        classroom: Any,
        *,
        poll_interval: float = 2.0,
    ) -> None:
        self.db = db
        self.wakeups = wakeups
        self.sessions = sessions
        self.classroom = classroom
        self.poll_interval = poll_interval
        self.feeds: dict[tuple[str, str], RoomFeed] = {}
        self.readers: dict[str, TenantReader] = {}
        self.connections: dict[str, Connection] = {}
        self.closing = False
        self._tasks: set[asyncio.Task] = set()
        # domain.media.MediaDomain (set by the composition root); None without a media plane.
        self.media = None
        # domain.transcription.TranscriptionDomain (it registers itself); None without one.
        self.transcription = None
        # domain.recordings.RecordingsDomain (set by the composition root); None without one.
        self.recordings = None
        # participant id -> action id -> the answer sent (replayed for a repeated action id).
        self._answers: dict[str, OrderedDict] = {}

    def spawn(self, coro: Awaitable) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    # -- the connection ----------------------------------------------------------------------

    async def connect(self, principal: Principal, actions: AsyncIterator[Action]) -> AsyncIterator:
        claims = principal.participant
        if claims is None:
            raise PermissionDenied(
                "Connect needs a participant token", reason="PARTICIPANT_TOKEN_REQUIRED"
            )
        self._check_open()
        iterator = actions.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        if first.kind != "join":
            raise InvalidArgument(
                FieldViolation("join", "the first message must be a join"),
                reason="JOIN_REQUIRED",
            )
        resume_token = first.args.get("resume_token", "")
        after = int(first.args.get("after_sequence", 0))
        replay: list = []
        replay_head = 0
        if resume_token:
            replay, replay_head = await self._replay(principal, after)
        result = await self.sessions.join(principal, resume_token, len(replay))
        connection = Connection(self, principal, result)
        connection.manual_subscription = bool(first.args.get("manual_subscription"))
        if not result.resumed and not result.waiting:
            await self._enter_assigned_room(connection)
        if not result.resumed:
            replay = []
        else:
            connection.cursor = max(replay_head, after // 4)
        snapshot = await self.snapshot(connection)
        last = max([after] + [item.sequence for item in replay]) if result.resumed else 0
        yield Joined(
            result.participant.id,
            result.resume_token,
            result.resumed,
            result.grace,
            snapshot,
            max(last, connection.cursor * 4 + 3) if not result.resumed else last,
        )
        for item in replay:
            yield await self._materialize(connection, item)
        self.connections[connection.participant_id] = connection
        await self._attach(connection)
        if self.media is not None and not connection.waiting:
            try:
                await self.media.peer_entered(connection)
            except Exception:
                # The room goes on without media; media actions retry the set-up.
                log.warning("media peer not set up", exc_info=True)
        reader = asyncio.ensure_future(self._read_actions(connection, iterator))
        try:
            while True:
                item = await connection.queue.get()
                if isinstance(item, _Shutdown):
                    raise Unavailable(
                        "the server is shutting down; resume on another replica or after the "
                        "restart",
                        reason="SERVER_SHUTTING_DOWN",
                    )
                if item is None:  # the client closed its side or the stream broke
                    break
                item = await self._materialize(connection, item)
                yield item
                if isinstance(item, Disconnect):
                    connection.closed = True
                    break
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            self._detach(connection)
            if self.connections.get(connection.participant_id) is connection:
                del self.connections[connection.participant_id]
            if self.media is not None:
                # A dropped connection keeps its media peer for the grace window.
                grace = 0.0 if connection.closed else result.grace.total_seconds()
                self.media.peer_left(connection, after=grace)
            if not connection.closed:
                connection.closed = True
                # Shielded from the stream's cancellation: the drop must be recorded.
                self.spawn(
                    self.sessions.drop(
                        connection.tenant_id, connection.participant_id, connection.epoch
                    )
                )

    async def _enter_assigned_room(self, connection: Connection) -> None:
        """A participant joining while breakout rooms are open lands in the room it is assigned
        to (it may have been assigned before it (re)joined), not in the main room."""
        room = await self.classroom.assigned_room(
            connection.tenant_id, connection.main_session_id, connection.participant_id
        )
        if room != connection.room:
            await self.sessions.record_move(
                connection.tenant_id, connection.participant_id, room, s.LR_MOVED
            )
            connection.room = room

    async def _read_actions(self, connection: Connection, iterator) -> None:
        try:
            async for action in iterator:
                if action.kind == "leave":
                    connection.closed = True
                    await self.sessions.leave(connection.principal, connection.epoch)
                    connection.queue.put_nowait(Disconnect(s.LR_LEFT, ""))
                    return
                answer = await self._answer(connection, action)
                if answer is not None:
                    connection.queue.put_nowait(answer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("participant stream ended", exc_info=True)
        connection.queue.put_nowait(None)

    async def _answer(self, connection: Connection, action: Action):
        answers = self._answers.setdefault(connection.participant_id, OrderedDict())
        if action.action_id and action.action_id in answers:
            return answers[action.action_id]
        if action.kind == "ping":
            return Pong(action.action_id, action.args.get("client_time"), utcnow())
        try:
            if action.kind == "join":
                raise FailedPrecondition("already joined", reason="ALREADY_JOINED")
            if action.kind == "invalid":
                raise action.args["error"]
            if connection.waiting:
                raise FailedPrecondition(
                    "wait until a moderator admits you", reason="PARTICIPANT_WAITING"
                )
            if action.kind in MEDIA_ACTIONS:
                if self.media is None:
                    raise Unavailable(
                        "this server has no media backend", reason="MEDIA_BACKEND_UNAVAILABLE"
                    )
                answer = await self.media.perform(connection, action)
                if answer is None:
                    return None  # answered later (PublishTrackResult)
            else:
                created = await self._perform(connection, action)
                answer = Ack(action.action_id, created or "")
        except InvalidArgument as exc:
            # Field paths of the unary request become paths within the action.
            prefix = f"{action.kind}."
            exc.violations = [
                v
                if v.field.startswith(prefix) or action.kind == "invalid"
                else FieldViolation(prefix + v.field, v.description)
                for v in exc.violations
            ]
            answer = ActionFailed(action.action_id, exc)
        except DomainError as exc:
            answer = ActionFailed(action.action_id, exc)
        if action.action_id:
            answers[action.action_id] = answer
            while len(answers) > ACTION_CACHE:
                answers.popitem(last=False)
        return answer

    async def _perform(self, connection: Connection, action: Action) -> str | None:
        principal, session_id, a = connection.principal, connection.room, action.args
        main = connection.main_session_id
        sessions, classroom = self.sessions, self.classroom
        kind = action.kind
        if kind in CLASSROOM_ACTIONS:
            method: Callable = getattr(classroom, CLASSROOM_ACTIONS[kind])
            args = a.get("args", ())
            if kind == "lower_hand" and args == ("",):
                args = (connection.participant_id,)  # no target: the participant's own hand
            result = await method(principal, session_id, *args)
            return _created_id(result)
        if kind == "delete_chat":
            await classroom.delete_chat_message(principal, a["message_id"])
        elif kind == "create_poll":
            return (await classroom.create_poll(principal, session_id, a["poll"])).id
        elif kind == "close_poll":
            await classroom.close_poll(principal, a["poll_id"])
        elif kind == "open_breakouts":
            await classroom.create_breakouts(principal, main, a["plan"])
        elif kind == "move_participant":
            await classroom.move_participant(
                principal, main, a["participant_id"], a["to_session_id"]
            )
        elif kind == "broadcast_to_breakouts":
            await classroom.broadcast(principal, main, a["text"])
        elif kind == "close_breakouts":
            await classroom.close_breakouts(principal, main, a["countdown"])
        elif kind == "admit":
            await sessions.admit(principal, main, a.get("participant_id"))
        elif kind == "deny":
            await sessions.deny(principal, main, a["participant_id"], a.get("message", ""))
        elif kind == "mute_participant":
            await sessions.mute(principal, session_id, a.get("participant_id"), a["sources"])
            if self.media is not None:
                target = a.get("participant_id")
                await self.media.mute_sources(
                    connection.tenant_id,
                    session_id,
                    [target] if target else None,
                    a["sources"],
                    actor_of(principal),
                )
        elif kind == "remove":
            await sessions.remove(
                principal, main, a["participant_id"], a.get("message", ""), a["block_rejoin"]
            )
        elif kind == "set_room_lock":
            await sessions.set_room_lock(principal, session_id, a["locked"], a.get("message", ""))
        elif kind == "update_participant":
            await sessions.update_participant(principal, main, **a)
        elif kind == "start_session":
            await sessions.start_session(principal, main)
        elif kind == "end_session":
            await sessions.end_session(principal, main, a.get("message", ""))
        elif kind in ("start_transcription", "stop_transcription"):
            # The transcription domain checks MANAGE_MEDIA; the room is the one the
            # participant is in (a breakout room has its own captions).
            if self.transcription is None:
                raise Unavailable(
                    "this server has no transcription", reason="TRANSCRIPTION_UNAVAILABLE"
                )
            if kind == "start_transcription":
                await self.transcription.start_transcription(principal, session_id, a["options"])
            else:
                await self.transcription.stop_transcription(principal, session_id)
        elif kind in ("start_recording", "stop_recording", "recording_consent"):
            # The room is the one the participant is in; the recordings domain checks
            # MANAGE_MEDIA for start and stop, and that a consent answers this room's recording.
            if self.recordings is None:
                raise Unavailable(
                    "this server has no media backend", reason="MEDIA_BACKEND_UNAVAILABLE"
                )
            return await self.recordings.perform(connection, action)
        else:
            raise Unimplemented(
                f"the {kind} action is not available in this release", reason="NOT_YET_AVAILABLE"
            )
        return None

    # -- feeds -------------------------------------------------------------------------------

    async def _attach(self, connection: Connection) -> None:
        tenant_id, key = connection.tenant_id, (connection.tenant_id, connection.main_session_id)
        reader = self.readers.get(tenant_id)
        if reader is None:
            reader = self.readers[tenant_id] = TenantReader(self, tenant_id, connection.cursor)
        async with reader.lock:
            feed = self.feeds.get(key)
            if feed is None:
                feed = self.feeds[key] = RoomFeed(reader, connection.main_session_id)
                reader.feeds[connection.main_session_id] = feed
            # Catch up on what the reader already passed; it waits for the lock meanwhile.
            while connection.cursor < reader.cursor:
                upto = reader.cursor
                async with self.db.reader() as session:
                    rows = await repo.family_events_after(
                        session,
                        tenant_id,
                        connection.main_session_id,
                        connection.cursor,
                        FEED_BATCH,
                    )
                rows = [r for r in rows if r.sequence <= upto]
                envelopes = [_public(event_pb2.Event.FromString(r.payload)) for r in rows]
                batch = await self.prepare(tenant_id, envelopes)
                for envelope in envelopes:
                    connection.offer(envelope, batch)
                if len(rows) < FEED_BATCH:
                    connection.cursor = max(connection.cursor, upto)
            feed.connections.add(connection)
        if reader.task is None or reader.task.done():
            reader.task = asyncio.ensure_future(reader.run())

    def _detach(self, connection: Connection) -> None:
        key = (connection.tenant_id, connection.main_session_id)
        feed = self.feeds.get(key)
        if feed is None:
            return
        feed.connections.discard(connection)
        if feed.connections:
            return
        del self.feeds[key]
        reader = feed.reader
        reader.feeds.pop(connection.main_session_id, None)
        if not reader.feeds:
            if reader.task is not None:
                reader.task.cancel()
            if self.readers.get(connection.tenant_id) is reader:
                del self.readers[connection.tenant_id]

    async def _replay(self, principal: Principal, after: int) -> tuple[list, int]:
        """The pushes after `after` a resumed participant missed, read from the log."""
        p = await self.sessions.participant_for_join(principal)
        if p is None:
            return [], 0
        async with self.db.reader() as session:
            row = await repo.get_live_session(session, principal.tenant_id, p.session_id)
            head = await event_store.last_sequence(
                session, principal.tenant_id, event_store.TENANT_STREAM
            )
        if row is None:
            return [], 0
        probe = Connection.__new__(Connection)
        probe.presence = self
        probe.participant_id, probe.main_session_id = p.id, p.session_id
        probe.tenant_id = principal.tenant_id
        probe.room = p.room_session_id or p.session_id
        probe.role = p.role
        probe.permissions = set(
            s.effective_permissions(p, s.SessionSettings.from_json(row.settings))
        )
        probe.wards = frozenset(s.guardian_of(p))
        probe.waiting = p.state == s.WAITING
        probe.cursor = probe.joined_at = after // 4
        probe.closed = False
        probe.pending_message = ""
        items: list = []
        cursor = after // 4
        while True:
            async with self.db.reader() as session:
                rows = await repo.family_events_after(
                    session, principal.tenant_id, p.session_id, cursor, FEED_BATCH
                )
            envelopes = [
                _public(event_pb2.Event.FromString(r.payload)) for r in rows if r.sequence <= head
            ]
            batch = await self.prepare(principal.tenant_id, envelopes)
            for envelope in envelopes:
                cursor = envelope.sequence
                items.extend(
                    i
                    for i in probe.react(envelope, batch)
                    if isinstance(i, (Push, _PendingRoomEntered, HandQueue, PollResults))
                    and i.sequence > after
                )
            if len(rows) < FEED_BATCH or len(envelopes) < len(rows) or cursor >= head:
                break
        return items, head

    async def prepare(self, tenant_id: str, envelopes: list[event_pb2.Event]) -> Batch:
        """The per-audience variants and the hand queue / poll results pushes of a batch of
        events: one read per room with hand changes and per poll with answers in the batch,
        whatever the number of connections (see Batch)."""
        batch = Batch()
        last_hand: dict[str, int] = {}  # room -> the sequence of its last hand event
        last_poll: dict[str, int] = {}  # poll -> the sequence of its last answer or close
        answered: list[event_pb2.Event] = []
        for envelope in envelopes:
            name = _name(envelope)
            if name in HAND_EVENTS:
                last_hand[envelope.session_id] = envelope.sequence
            elif name in POLL_RESULT_EVENTS:
                last_poll[unwrap(envelope).poll_id] = envelope.sequence
                if name == "PollAnswered" and envelope.session.poll_answered.option_ids:
                    answered.append(envelope)
            elif name == "PollCreated" and envelope.session.poll_created.correct_option_ids:
                learner = _copy(envelope)
                learner.session.poll_created.ClearField("correct_option_ids")
                batch.learner_view[envelope.sequence] = learner
        if not (last_hand or last_poll):
            return batch
        classroom = self.classroom
        for room, sequence in last_hand.items():
            entries = await classroom.hand_queue(tenant_id, room)
            batch.hands[sequence] = HandQueue(sequence * 4 + 2, entries)
        visibility: dict[str, int] = {}
        for poll_id, sequence in last_poll.items():
            views = await classroom.poll_results_views(tenant_id, poll_id)
            if views is None:
                continue
            moderators, everyone = views
            visibility[poll_id] = moderators.poll.results_visibility
            batch.polls[sequence] = (
                PollResults(sequence * 4 + 2, poll_id, moderators),
                PollResults(sequence * 4 + 2, poll_id, everyone) if everyone else None,
            )
        for envelope in answered:
            poll_id = envelope.session.poll_answered.poll_id
            if visibility.get(poll_id, 0) not in PUBLIC_LIVE_VISIBILITIES:
                learner = _copy(envelope)
                learner.session.poll_answered.ClearField("option_ids")
                batch.learner_view[envelope.sequence] = learner
        return batch

    async def _materialize(self, connection: Connection, item):
        if isinstance(item, _PendingRoomEntered):
            return RoomEntered(
                item.sequence, item.reason, await self.snapshot(connection, item.room)
            )
        return item

    async def snapshot(self, connection: Connection, room: str | None = None) -> Snapshot:
        room = room or connection.room
        view, people, sequence = await self.sessions.snapshot_rows(
            connection.tenant_id, room, connection.main_session_id
        )
        settings = view.settings
        local = None
        listed = []
        for p in people:
            pv = s.ParticipantView(p, tuple(s.effective_permissions(p, settings)))
            if p.id == connection.participant_id:
                local = pv
            if connection.waiting:
                continue
            if p.state == s.WAITING and not connection.moderator:
                continue
            listed.append(pv)
        if local is None:
            p = await self.sessions.participant_for_join(connection.principal)
            local = s.ParticipantView(p, tuple(s.effective_permissions(p, settings)))
        tracks = {}
        if self.media is not None and not connection.waiting:
            tracks = await self.media.tracks_by_participant(connection.tenant_id, room)
        return Snapshot(view, local, listed, sequence, tracks)

    # -- shutdown ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closing:
            raise Unavailable("the server is shutting down", reason="SERVER_SHUTTING_DOWN")

    async def stop(self) -> None:
        """Ends every connection with UNAVAILABLE (SERVER_SHUTTING_DOWN); its participant is
        reconnecting, so it can resume with its resume token after the restart."""
        self.closing = True
        for connection in list(self.connections.values()):
            if connection.closed:
                continue
            connection.closed = True
            with contextlib.suppress(Exception):
                await self.sessions.drop(
                    connection.tenant_id, connection.participant_id, connection.epoch
                )
            connection.queue.put_nowait(_Shutdown())
        for reader in list(self.readers.values()):
            if reader.task is not None:
                reader.task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


CLASSROOM_ACTIONS = {
    "raise_hand": "raise_hand",
    "lower_hand": "lower_hand",
    "send_chat": "send_chat",
    "react": "react",
    "answer_poll": "answer_poll",
}


def _created_id(result) -> str:
    if result is None or isinstance(result, bool):
        return ""
    if isinstance(result, str):
        return result
    for name in ("id", "message_id", "poll_id"):
        value = getattr(result, name, None)
        if isinstance(value, str):
            return value
    return ""


def _public(envelope: event_pb2.Event) -> event_pb2.Event:
    if envelope.actor.kind == common_pb2.Actor.KIND_API_KEY:
        envelope.actor.ClearField("id")
    return envelope


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("presence task failed", exc_info=task.exception())
