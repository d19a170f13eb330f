"""Classroom interactions, all server-side: hand raise, chat, reactions, polls and breakouts.

The participant connection (domain/presence) calls these for the actions participants send on
their stream; the unary SessionService RPCs call them for backend callers and participants.
Every change is written with its event in one unit of work; participants receive it from the
event log. Field paths in InvalidArgument are those of the unary request (`text`, `poll.options`,
`plan.split.room_count`); the connection prefixes them with the action's name.

Breakout rounds live in `breakout_rounds` (rooms are child sessions) and who is assigned where in
`breakout_assignments`: the assignment is what a participant's room should be. Moving connected
participants (their room, attendance, ParticipantLeft/Joined) is the connection's job, on the
BreakoutParticipantMoved / BreakoutsClosed events of the main session; `assigned_room` tells it
where a participant joining mid-round belongs.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.session.v1 import resources_pb2 as pb

from ..events.outbox import UnitOfWork, UnitOfWorkFactory
from ..store import classroom_repositories as crepo
from ..store import repositories as repo
from ..store.classroom_models import (
    BreakoutAssignment,
    BreakoutRound,
    ChatMessageRow,
    PollAnswerRow,
    PollRow,
)
from ..store.engine import Database
from ..store.models import LiveSession, SessionParticipant
from ..store.types import utcnow
from . import paging
from .auth import Principal
from .errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Violations,
)
from .idempotency import IdempotencyKey, run_idempotent
from .ids import new_id
from .platform import actor_of
from .sessions import ROLE_DEFAULTS

MAX_CHAT_TEXT = 4000
MAX_SENDER_NAME = 100
DEFAULT_SERVICE_SENDER = "classwire"
MAX_QUESTION = 500
MAX_OPTION_TEXT = 200
MAX_OPTION_ID = 32
OPTION_COUNT = (2, 20)
MAX_POLL_DURATION = timedelta(hours=24)
MAX_ROOMS = 50
MAX_ROOM_NAME = 100
MAX_BROADCAST = 1000
MAX_BREAKOUT_DURATION = timedelta(hours=24)
DEFAULT_COUNTDOWN = timedelta(seconds=60)
MAX_COUNTDOWN = timedelta(minutes=10)
# A timed round starts closing by itself with this countdown (BreakoutPlan.duration).
AUTO_CLOSE_COUNTDOWN = timedelta(seconds=60)
MAX_EMOJI_LENGTH = 32

# Durable timer kinds of this area.
POLL_TIMER = "classroom.poll_timer"
BREAKOUTS_DURATION_TIMER = "classroom.breakouts_duration"
BREAKOUTS_CLOSE_TIMER = "classroom.breakouts_close"

P = ev.ParticipantPermission
INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_INSTRUCTOR
CO_INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_CO_INSTRUCTOR
LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER
ROLES = frozenset(v for v in common_pb2.ParticipantRole.values() if v)
TEACHERS = frozenset({INSTRUCTOR, CO_INSTRUCTOR})

SCHEDULED = common_pb2.SESSION_STATE_SCHEDULED
OPEN = common_pb2.SESSION_STATE_OPEN
LIVE = common_pb2.SESSION_STATE_LIVE
ENDED = common_pb2.SESSION_STATE_ENDED
CANCELLED = common_pb2.SESSION_STATE_CANCELLED

# session.v1 ParticipantState numbers, as the participants table stores them.
WAITING = pb.PARTICIPANT_STATE_WAITING
CONNECTED = pb.PARTICIPANT_STATE_CONNECTED
RECONNECTING = pb.PARTICIPANT_STATE_RECONNECTING
LEFT = pb.PARTICIPANT_STATE_LEFT

POLL_OPEN = pb.POLL_STATE_OPEN
POLL_CLOSED = pb.POLL_STATE_CLOSED
PUBLIC_LIVE = pb.POLL_RESULTS_VISIBILITY_PUBLIC_LIVE
PUBLIC_AFTER_CLOSE = pb.POLL_RESULTS_VISIBILITY_PUBLIC_AFTER_CLOSE
VISIBILITIES = frozenset(v for v in pb.PollResultsVisibility.values())
POLL_STATES = frozenset(v for v in pb.PollState.values() if v)

BREAKOUTS_OPEN = pb.BREAKOUTS_STATE_OPEN
BREAKOUTS_CLOSING = pb.BREAKOUTS_STATE_CLOSING
BREAKOUTS_CLOSED = pb.BREAKOUTS_STATE_CLOSED
SPLIT_EVEN = pb.BREAKOUT_SPLIT_STRATEGY_EVEN
SPLIT_RANDOM = pb.BREAKOUT_SPLIT_STRATEGY_RANDOM
SPLIT_STRATEGIES = frozenset(v for v in pb.BreakoutSplitStrategy.values())

AUDIENCES = frozenset(v for v in ev.ChatAudience.values() if v)


def effective_permissions(
    role: int, session_settings: dict | None, overrides: dict | None
) -> frozenset[int]:
    """The role's defaults (the lifecycle's ROLE_DEFAULTS), then the session's changes for the
    role, then the participant's own (the token's until its first join copies them)."""
    granted = set(ROLE_DEFAULTS.get(role, frozenset()))
    for item in (session_settings or {}).get("role_permissions", ()):
        if item.get("role") == role:
            granted |= set(item.get("grant", ()))
            granted -= set(item.get("revoke", ()))
    granted |= set((overrides or {}).get("grant", ()))
    granted -= set((overrides or {}).get("revoke", ()))
    return frozenset(granted)


def may_read_chat(
    audience: int,
    sender_participant_id: str,
    recipient_participant_id: str,
    reader_participant_id: str,
    reader_role: int,
) -> bool:
    """Whether a participant may read a message (for pushes; ListChatMessages filters in SQL)."""
    if audience == ev.CHAT_AUDIENCE_EVERYONE or sender_participant_id == reader_participant_id:
        return True
    if audience == ev.CHAT_AUDIENCE_INSTRUCTORS:
        return reader_role in TEACHERS
    return recipient_participant_id == reader_participant_id


def is_single_emoji(text: str) -> bool:
    """One emoji grapheme: a base pictograph (or a keycap, or a flag's two regional indicators)
    with modifiers, variation selectors, tag characters, and ZWJ-joined pictographs."""
    if not text or len(text) > MAX_EMOJI_LENGTH:
        return False
    chars = [ord(c) for c in text]

    def regional(c: int) -> bool:
        return 0x1F1E6 <= c <= 0x1F1FF

    if all(regional(c) for c in chars):
        return len(chars) == 2
    if text[0] in "0123456789#*" and chars[1:] in ([0xFE0F, 0x20E3], [0x20E3]):
        return True

    def pictograph(c: int) -> bool:
        return unicodedata.category(chr(c)) == "So" and c >= 0x00A9

    if not pictograph(chars[0]):
        return False
    expect_base = False
    for c in chars[1:]:
        if expect_base:
            if not pictograph(c):
                return False
            expect_base = False
        elif c == 0x200D:
            expect_base = True
        elif not (
            c in (0xFE0F, 0xFE0E, 0x20E3)
            or 0x1F3FB <= c <= 0x1F3FF  # skin tones
            or 0xE0020 <= c <= 0xE007F  # tag sequences (subdivision flags)
        ):
            return False
    return not expect_base


# Inputs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatDraft:
    """A chat message to post. `sender_display_name` is used for backend services only."""

    text: str
    audience: int
    recipient_participant_id: str = ""
    reply_to_message_id: str = ""
    sender_display_name: str = ""


@dataclass(frozen=True)
class PollDraft:
    question: str
    options: tuple[tuple[str, str], ...]  # (id or "", text) in display order
    correct_option_ids: tuple[str, ...] = ()
    anonymous: bool = False
    max_selections: int = 0
    results_visibility: int = 0
    duration: timedelta | None = None

    def validate(self, prefix: str = "poll") -> tuple[tuple[str, str], ...]:
        """Reports every problem at once; returns the options with their final ids."""
        problems = Violations()
        if not self.question.strip():
            problems.add(f"{prefix}.question", "is required")
        elif len(self.question) > MAX_QUESTION:
            problems.add(f"{prefix}.question", f"must be at most {MAX_QUESTION} characters")
        low, high = OPTION_COUNT
        if not low <= len(self.options) <= high:
            problems.add(f"{prefix}.options", f"a poll needs {low} to {high} options")
        with_ids = [oid for oid, _ in self.options if oid]
        if with_ids and len(with_ids) != len(self.options):
            problems.add(f"{prefix}.options", "either every option has an id or none has")
        seen: set[str] = set()
        for i, (oid, text) in enumerate(self.options):
            if oid and len(oid) > MAX_OPTION_ID:
                problems.add(
                    f"{prefix}.options[{i}].id", f"must be at most {MAX_OPTION_ID} characters"
                )
            if oid and oid in seen:
                problems.add(f"{prefix}.options[{i}].id", "appears more than once")
            seen.add(oid)
            if not text.strip():
                problems.add(f"{prefix}.options[{i}].text", "is required")
            elif len(text) > MAX_OPTION_TEXT:
                problems.add(
                    f"{prefix}.options[{i}].text", f"must be at most {MAX_OPTION_TEXT} characters"
                )
        options = tuple(
            (oid if with_ids else str(i + 1), text) for i, (oid, text) in enumerate(self.options)
        )
        known = {oid for oid, _ in options}
        for i, oid in enumerate(self.correct_option_ids):
            if oid not in known:
                problems.add(f"{prefix}.correct_option_ids[{i}]", "is not an option of the poll")
            elif oid in self.correct_option_ids[:i]:
                problems.add(f"{prefix}.correct_option_ids[{i}]", "appears more than once")
        if self.max_selections < 0 or self.max_selections > max(len(self.options), 1):
            problems.add(f"{prefix}.max_selections", "must be between 0 and the number of options")
        elif len(set(self.correct_option_ids)) > max(self.max_selections, 1):
            problems.add(
                f"{prefix}.correct_option_ids", "has more options than one answer may select"
            )
        if self.results_visibility not in VISIBILITIES:
            problems.add(f"{prefix}.results_visibility", "not a results visibility")
        if self.duration is not None and not timedelta(0) < self.duration <= MAX_POLL_DURATION:
            problems.add(f"{prefix}.duration", "must be positive and at most 24 hours")
        problems.raise_if_any()
        return options


@dataclass(frozen=True)
class PollAnswerInput:
    poll_id: str
    option_ids: tuple[str, ...]


@dataclass(frozen=True)
class ManualRoom:
    name: str
    participant_ids: tuple[str, ...]


@dataclass(frozen=True)
class BreakoutPlanInput:
    manual: tuple[ManualRoom, ...] | None = None
    room_count: int = 0
    room_names: tuple[str, ...] = ()
    strategy: int = 0
    roles: tuple[int, ...] = ()
    split: bool = False
    duration: timedelta | None = None

    def validate(self, prefix: str = "plan") -> None:
        problems = Violations()
        if self.manual is None and not self.split:
            problems.add(f"{prefix}", "set manual or split")
        if self.manual is not None:
            path = f"{prefix}.manual.rooms"
            if not 1 <= len(self.manual) <= MAX_ROOMS:
                problems.add(path, f"1 to {MAX_ROOMS} rooms")
            placed: set[str] = set()
            for i, room in enumerate(self.manual):
                _room_name(problems, f"{path}[{i}].name", room.name)
                for j, pid in enumerate(room.participant_ids):
                    if not pid:
                        problems.add(f"{path}[{i}].participant_ids[{j}]", "is required")
                    elif pid in placed:
                        problems.add(
                            f"{path}[{i}].participant_ids[{j}]", "is assigned to another room"
                        )
                    placed.add(pid)
        if self.split:
            path = f"{prefix}.split"
            if not 1 <= self.room_count <= MAX_ROOMS:
                problems.add(f"{path}.room_count", f"must be 1 to {MAX_ROOMS}")
            if self.room_names and len(self.room_names) != self.room_count:
                problems.add(f"{path}.room_names", "give no names or exactly room_count names")
            for i, name in enumerate(self.room_names):
                _room_name(problems, f"{path}.room_names[{i}]", name)
            if self.strategy not in SPLIT_STRATEGIES:
                problems.add(f"{path}.strategy", "not a split strategy")
            for i, role in enumerate(self.roles):
                if role not in ROLES:
                    problems.add(f"{path}.roles[{i}]", "not a participant role")
        if self.duration is not None and not timedelta(0) < self.duration <= MAX_BREAKOUT_DURATION:
            problems.add(f"{prefix}.duration", "must be positive and at most 24 hours")
        problems.raise_if_any()


def _room_name(problems: Violations, path: str, name: str) -> None:
    if not name.strip():
        problems.add(path, "is required")
    elif len(name) > MAX_ROOM_NAME:
        problems.add(path, f"must be at most {MAX_ROOM_NAME} characters")


# Views ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HandEntry:
    participant_id: str
    identity: str
    display_name: str
    position: int
    raise_time: datetime


@dataclass
class PollView:
    poll: PollRow
    answers: list[PollAnswerRow]
    eligible_count: int
    show_results: bool
    show_correct: bool
    show_answers: bool

    @property
    def id(self) -> str:
        """The poll's id: what the connection acknowledges a created poll with."""
        return self.poll.id


@dataclass
class BreakoutsView:
    round: BreakoutRound
    rooms: list[tuple[LiveSession, list[str]]] = field(default_factory=list)


# Errors -----------------------------------------------------------------------------------------


def _session_not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")


def _participant_not_found(participant_id: str) -> NotFound:
    return NotFound(f"participant {participant_id!r} not found", reason="PARTICIPANT_NOT_FOUND")


def _poll_not_found(poll_id: str) -> NotFound:
    return NotFound(f"poll {poll_id!r} not found", reason="POLL_NOT_FOUND")


def _message_not_found(message_id: str) -> NotFound:
    return NotFound(f"chat message {message_id!r} not found", reason="CHAT_MESSAGE_NOT_FOUND")


def _missing(permission: int) -> PermissionDenied:
    name = P.Name(permission)
    return PermissionDenied(
        f"this action needs the {name} permission",
        reason="MISSING_PERMISSION",
        metadata={"permission": name},
    )


def _require_active(room: LiveSession) -> None:
    """Interactions need an open or live room."""
    if room.state == ENDED:
        raise FailedPrecondition("the session has ended", reason="SESSION_ENDED")
    if room.state == CANCELLED:
        raise FailedPrecondition("the session was cancelled", reason="SESSION_CANCELLED")
    if room.state not in (OPEN, LIVE):
        raise FailedPrecondition("the session is not open yet", reason="SESSION_NOT_OPEN")


# The caller -------------------------------------------------------------------------------------


@dataclass
class Caller:
    """Who acts in which room: a backend service (participant None) or a participant."""

    principal: Principal
    room: LiveSession
    main: LiveSession
    participant: SessionParticipant | None
    permissions: frozenset[int]

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    @property
    def is_service(self) -> bool:
        return self.participant is None

    @property
    def participant_id(self) -> str:
        return self.participant.id if self.participant else ""

    def may(self, permission: int) -> bool:
        return self.participant is None or permission in self.permissions

    def require(self, permission: int) -> None:
        if not self.may(permission):
            raise _missing(permission)

    def require_participant(self, permission: int) -> None:
        """For actions only participants take (raise a hand, react, answer a poll)."""
        if self.participant is None:
            raise PermissionDenied(
                "only a participant can do this: call with a participant token",
                reason="MISSING_PERMISSION",
                metadata={"permission": P.Name(permission)},
            )
        self.require(permission)

    @property
    def moderates(self) -> bool:
        return self.may(P.PARTICIPANT_PERMISSION_MODERATE)


class Classroom:
    def __init__(self, db: Database, uow: UnitOfWorkFactory, sessions, timers=None) -> None:
        self.db = db
        self.uow = uow
        self.sessions = sessions
        self.timers = None
        if timers is not None:
            self.use_timers(timers)

    def use_timers(self, timers) -> None:
        """Registers this area's durable timer kinds (before the runner starts)."""
        if self.timers is timers:
            return
        self.timers = timers
        timers.register(POLL_TIMER, self._poll_timer_fired)
        timers.register(BREAKOUTS_DURATION_TIMER, self._breakouts_duration_fired)
        timers.register(BREAKOUTS_CLOSE_TIMER, self._breakouts_close_fired)

    def _uow(self, principal: Principal):
        return self.uow(principal.tenant_id, actor_of(principal))

    async def _caller(self, s, principal: Principal, room_id: str, *, write: bool) -> Caller:
        tenant_id = principal.tenant_id
        claims = principal.participant
        if claims is None:
            principal.require("session:write" if write else "session:read")
        room = await repo.get_live_session(s, tenant_id, room_id) if room_id else None
        if claims is None:
            if room is None:
                raise _session_not_found(room_id)
            main = room
            if room.parent_session_id:
                main = await repo.get_live_session(s, tenant_id, room.parent_session_id)
            return Caller(principal, room, main, None, frozenset())
        if room is None or claims.session_id not in (room.id, room.parent_session_id):
            raise Unauthenticated(
                "the participant token is for another session", reason="TOKEN_SESSION_MISMATCH"
            )
        main = room
        if room.id != claims.session_id:
            main = await repo.get_live_session(s, tenant_id, claims.session_id)
        participant = await repo.get_participant(s, tenant_id, claims.participant_id)
        if participant is None or participant.session_id != main.id or participant.removed:
            raise Unauthenticated("the participant was removed", reason="TOKEN_REVOKED")
        overrides = participant.permission_overrides
        if overrides is None:
            overrides = claims.permissions
        permissions = effective_permissions(participant.role, main.settings, overrides)
        return Caller(principal, room, main, participant, permissions)

    # Hand raise ---------------------------------------------------------------------------------

    async def raise_hand(self, principal: Principal, session_id: str) -> list[HandEntry]:
        """Raises the calling participant's hand (idempotent); returns the queue."""
        async with self._uow(principal) as uow:
            caller = await self._caller(uow.session, principal, session_id, write=True)
            caller.require_participant(P.PARTICIPANT_PERMISSION_RAISE_HAND)
            _require_active(caller.room)
            added = await crepo.raise_hand(
                uow.session, caller.tenant_id, caller.room.id, caller.participant_id, utcnow()
            )
            queue = await self._queue(uow.session, caller.tenant_id, caller.room.id)
            if added:
                position = next(
                    e.position for e in queue if e.participant_id == caller.participant_id
                )
                uow.emit(
                    ev.HandRaised(
                        participant_id=caller.participant_id,
                        identity=caller.participant.identity,
                        queue_position=position,
                    ),
                    session_id=caller.room.id,
                )
            return queue

    async def lower_hand(
        self, principal: Principal, session_id: str, participant_id: str | None
    ) -> list[HandEntry]:
        """Lowers one participant's hand, or every hand when participant_id is None.
        Idempotent; returns the queue after lowering."""
        async with self._uow(principal) as uow:
            caller = await self._caller(uow.session, principal, session_id, write=True)
            own = participant_id is not None and participant_id == caller.participant_id
            if not own:
                caller.require(P.PARTICIPANT_PERMISSION_MODERATE)
            tenant_id, room = caller.tenant_id, caller.room
            if participant_id is not None and not own:
                target = await repo.get_participant(uow.session, tenant_id, participant_id)
                if target is None or target.session_id != caller.main.id:
                    raise _participant_not_found(participant_id)
            queue = await self._queue(uow.session, tenant_id, room.id)
            lowered = [
                e for e in queue if participant_id is None or e.participant_id == participant_id
            ]
            await self._lower(uow, room.id, lowered)
            return await self._queue(uow.session, tenant_id, room.id)

    async def _lower(self, uow: UnitOfWork, room_id: str, entries: list[HandEntry]) -> None:
        await crepo.remove_hands(
            uow.session, uow.tenant_id, room_id, [e.participant_id for e in entries]
        )
        now = utcnow()
        for entry in entries:  # queue order, as HandLowered promises
            event = ev.HandLowered(participant_id=entry.participant_id, identity=entry.identity)
            event.raised_duration.FromTimedelta(max(now - entry.raise_time, timedelta(0)))
            uow.emit(event, session_id=room_id, occur_time=now)

    async def get_hand_queue(self, principal: Principal, session_id: str) -> list[HandEntry]:
        async with self.db.reader() as s:
            caller = await self._caller(s, principal, session_id, write=False)
            return await self._queue(s, caller.tenant_id, caller.room.id)

    async def hand_queue(self, tenant_id: str, room_id: str) -> list[HandEntry]:
        """The queue of a room, for the connection's HandQueueUpdate pushes."""
        async with self.db.reader() as s:
            return await self._queue(s, tenant_id, room_id)

    @staticmethod
    async def _queue(s, tenant_id: str, room_id: str) -> list[HandEntry]:
        rows = await crepo.hand_queue(s, tenant_id, room_id)
        return [
            HandEntry(p.id, p.identity, p.display_name, i + 1, hand.raise_time)
            for i, (hand, p) in enumerate(rows)
        ]

    # Chat ---------------------------------------------------------------------------------------

    async def send_chat(
        self,
        principal: Principal,
        session_id: str,
        message: ChatDraft,
        idempotency: IdempotencyKey | None = None,
    ) -> ChatMessageRow:
        problems = Violations()
        if not message.text.strip():
            problems.add("text", "is required")
        elif len(message.text) > MAX_CHAT_TEXT:
            problems.add("text", f"must be at most {MAX_CHAT_TEXT} characters")
        if message.audience not in AUDIENCES:
            problems.add("audience", "is required: a chat audience")
        elif message.audience == ev.CHAT_AUDIENCE_PARTICIPANT:
            if not message.recipient_participant_id:
                problems.add(
                    "recipient_participant_id", "is required for CHAT_AUDIENCE_PARTICIPANT"
                )
        elif message.recipient_participant_id:
            problems.add("recipient_participant_id", "is only for CHAT_AUDIENCE_PARTICIPANT")
        if principal.participant is None and len(message.sender_display_name) > MAX_SENDER_NAME:
            problems.add("sender_display_name", f"must be at most {MAX_SENDER_NAME} characters")
        problems.raise_if_any()

        async def body(uow: UnitOfWork) -> ChatMessageRow:
            caller = await self._caller(uow.session, principal, session_id, write=True)
            caller.require(P.PARTICIPANT_PERMISSION_CHAT)
            if message.audience == ev.CHAT_AUDIENCE_PARTICIPANT:
                caller.require(P.PARTICIPANT_PERMISSION_MODERATE)
            _require_active(caller.room)
            tenant_id = caller.tenant_id
            if message.recipient_participant_id:
                recipient = await repo.get_participant(
                    uow.session, tenant_id, message.recipient_participant_id
                )
                if recipient is None or recipient.session_id != caller.main.id:
                    raise _participant_not_found(message.recipient_participant_id)
            if message.reply_to_message_id:
                original = await crepo.get_chat_message(
                    uow.session, tenant_id, message.reply_to_message_id
                )
                if (
                    original is None
                    or original.session_id != caller.room.id
                    or not self._may_read(caller, original)
                ):
                    raise _message_not_found(message.reply_to_message_id)
            actor = actor_of(principal)
            if caller.participant is not None:
                name = caller.participant.display_name
            else:
                name = message.sender_display_name.strip() or DEFAULT_SERVICE_SENDER
            row = ChatMessageRow(
                id=new_id("msg"),
                tenant_id=tenant_id,
                session_id=caller.room.id,
                sender_kind=actor.kind,
                sender_id=actor.id,
                sender_identity=actor.identity,
                sender_participant_id=caller.participant_id,
                sender_display_name=name,
                audience=message.audience,
                recipient_participant_id=message.recipient_participant_id,
                text=message.text,
                reply_to_message_id=message.reply_to_message_id,
                send_time=utcnow(),
                delete_time=None,
                deleted_by=None,
            )
            uow.session.add(row)
            uow.emit(
                ev.ChatMessagePosted(
                    message_id=row.id,
                    sender_participant_id=row.sender_participant_id,
                    sender_identity=row.sender_identity,
                    sender_display_name=row.sender_display_name,
                    audience=row.audience,
                    recipient_participant_id=row.recipient_participant_id,
                    text=row.text,
                    reply_to_message_id=row.reply_to_message_id,
                ),
                session_id=row.session_id,
                occur_time=row.send_time,
            )
            return row

        return await run_idempotent(lambda: self._uow(principal), idempotency, body)

    @staticmethod
    def _may_read(caller: Caller, row: ChatMessageRow) -> bool:
        if caller.participant is None:
            return True
        return may_read_chat(
            row.audience,
            row.sender_participant_id,
            row.recipient_participant_id,
            caller.participant_id,
            caller.participant.role,
        )

    async def delete_chat_message(self, principal: Principal, message_id: str) -> ChatMessageRow:
        """Removes a message's text for everyone. Idempotent."""
        if not message_id:
            raise InvalidArgument(FieldViolation("message_id", "is required"))
        async with self._uow(principal) as uow:
            row = await crepo.get_chat_message(
                uow.session, principal.tenant_id, message_id, lock=True
            )
            if row is None:
                if principal.participant is None:
                    principal.require("session:write")
                raise _message_not_found(message_id)
            try:
                caller = await self._caller(uow.session, principal, row.session_id, write=True)
            except Unauthenticated as exc:
                if exc.reason == "TOKEN_SESSION_MISMATCH":
                    raise _message_not_found(message_id) from None
                raise
            caller.require(P.PARTICIPANT_PERMISSION_MODERATE)
            if row.delete_time is None:
                actor = actor_of(principal)
                row.text = ""
                row.delete_time = utcnow()
                row.deleted_by = {"kind": actor.kind, "id": actor.id, "identity": actor.identity}
                uow.emit(
                    ev.ChatMessageDeleted(message_id=row.id),
                    session_id=row.session_id,
                    occur_time=row.delete_time,
                )
            return row

    async def list_chat_messages(
        self,
        principal: Principal,
        session_id: str,
        *,
        include_deleted: bool = False,
        send_time_from: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[ChatMessageRow], str]:
        limit = paging.page_size(page_size)
        async with self.db.reader() as s:
            caller = await self._caller(s, principal, session_id, write=False)
            reader = caller.participant
            fingerprint = {
                "room": caller.room.id,
                "deleted": include_deleted,
                "from": send_time_from.isoformat() if send_time_from else None,
                "reader": caller.participant_id,
            }
            after = paging.decode(page_token, fingerprint)
            query = crepo.chat_messages(
                caller.tenant_id,
                caller.room.id,
                include_deleted=include_deleted,
                send_time_from=send_time_from,
                reader_participant_id=reader.id if reader else None,
                reader_is_instructor=bool(reader and reader.role in TEACHERS),
            )
            rows = await repo.page(
                s, query, ChatMessageRow.send_time, ChatMessageRow.id, limit, after
            )
        return rows, paging.next_token(rows, limit, "send_time", fingerprint)

    # Reactions ----------------------------------------------------------------------------------

    async def react(self, principal: Principal, session_id: str, reaction) -> None:
        """`reaction` is the emoji, or an object with an `emoji` attribute."""
        emoji = reaction if isinstance(reaction, str) else getattr(reaction, "emoji", "")
        if not is_single_emoji(emoji):
            raise InvalidArgument(FieldViolation("emoji", "must be one emoji"))
        async with self._uow(principal) as uow:
            caller = await self._caller(uow.session, principal, session_id, write=True)
            caller.require_participant(P.PARTICIPANT_PERMISSION_REACT)
            _require_active(caller.room)
            uow.emit(
                ev.ReactionSent(
                    participant_id=caller.participant_id,
                    identity=caller.participant.identity,
                    emoji=emoji,
                ),
                session_id=caller.room.id,
            )

    # Polls --------------------------------------------------------------------------------------

    async def create_poll(
        self,
        principal: Principal,
        session_id: str,
        draft: PollDraft,
        idempotency: IdempotencyKey | None = None,
    ) -> PollView:
        options = draft.validate()

        async def body(uow: UnitOfWork) -> PollView:
            caller = await self._caller(uow.session, principal, session_id, write=True)
            caller.require(P.PARTICIPANT_PERMISSION_MODERATE)
            _require_active(caller.room)
            now = utcnow()
            actor = actor_of(principal)
            close_time = now + draft.duration if draft.duration else None
            row = PollRow(
                id=new_id("pol"),
                tenant_id=caller.tenant_id,
                session_id=caller.room.id,
                question=draft.question,
                options=[{"id": oid, "text": text} for oid, text in options],
                correct_option_ids=list(draft.correct_option_ids),
                anonymous=draft.anonymous,
                max_selections=max(draft.max_selections, 1),
                results_visibility=draft.results_visibility or PUBLIC_LIVE,
                duration_seconds=draft.duration.total_seconds() if draft.duration else None,
                state=POLL_OPEN,
                close_reason=0,
                created_by={"kind": actor.kind, "id": actor.id, "identity": actor.identity},
                create_time=now,
                close_time=close_time,
            )
            uow.session.add(row)
            event = ev.PollCreated(
                poll_id=row.id,
                question=row.question,
                options=[ev.PollCreated.Option(option_id=o, text=t) for o, t in options],
                correct_option_ids=row.correct_option_ids,
                anonymous=row.anonymous,
                max_selections=row.max_selections,
            )
            if close_time is not None:
                event.close_time.FromDatetime(close_time)
                await self._schedule(uow, POLL_TIMER, row.id, close_time)
            uow.emit(event, session_id=row.session_id, occur_time=now)
            await uow.session.flush()
            return await self._poll_view(uow.session, caller, row)

        return await run_idempotent(lambda: self._uow(principal), idempotency, body)

    async def _schedule(self, uow: UnitOfWork, kind: str, key: str, due: datetime) -> None:
        if self.timers is None:
            raise RuntimeError("the classroom's timers are not set up (Classroom.use_timers)")
        await self.timers.schedule(uow, kind, key, due)

    async def _cancel(self, uow: UnitOfWork, kind: str, key: str) -> None:
        if self.timers is not None:
            await self.timers.cancel(uow, kind, key)

    async def _poll_caller(
        self, s, principal: Principal, poll_id: str, *, write: bool, lock: bool = False
    ) -> tuple[Caller, PollRow]:
        if not poll_id:
            raise InvalidArgument(FieldViolation("poll_id", "is required"))
        if principal.participant is None:
            principal.require("session:write" if write else "session:read")
        row = await crepo.get_poll(s, principal.tenant_id, poll_id, lock=lock)
        if row is None:
            raise _poll_not_found(poll_id)
        try:
            caller = await self._caller(s, principal, row.session_id, write=write)
        except Unauthenticated as exc:
            if exc.reason == "TOKEN_SESSION_MISMATCH":
                raise _poll_not_found(poll_id) from None
            raise
        return caller, row

    async def get_poll(self, principal: Principal, poll_id: str) -> PollView:
        async with self.db.reader() as s:
            caller, row = await self._poll_caller(s, principal, poll_id, write=False)
            return await self._poll_view(s, caller, row)

    async def poll_results_views(
        self, tenant_id: str, poll_id: str
    ) -> tuple[PollView, PollView | None] | None:
        """A poll's results for the connection's PollResultsUpdate pushes, read once for every
        viewer: as moderators see them, and as everyone else does (None while hidden from them).
        None when the poll is gone."""
        async with self.db.reader() as s:
            row = await crepo.get_poll(s, tenant_id, poll_id)
            if row is None:
                return None
            room = await repo.get_live_session(s, tenant_id, row.session_id)
            main = room
            if room.parent_session_id:
                main = await repo.get_live_session(s, tenant_id, room.parent_session_id)
            answers = (await crepo.poll_answers(s, tenant_id, [row.id]))[row.id]
            present = await crepo.present_participants(
                s, tenant_id, main.id, room.id, (CONNECTED, RECONNECTING)
            )
        eligible = self._eligible(main, present, answers)
        closed = row.state == POLL_CLOSED
        visibility = row.results_visibility
        moderators = PollView(row, answers, eligible, True, True, not row.anonymous)
        if visibility == PUBLIC_LIVE or (visibility == PUBLIC_AFTER_CLOSE and closed):
            return moderators, PollView(row, answers, eligible, True, closed, False)
        return moderators, None

    async def list_polls(
        self,
        principal: Principal,
        session_id: str,
        *,
        states: tuple[int, ...] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[PollView], str]:
        problems = Violations()
        for i, state in enumerate(states):
            if state not in POLL_STATES:
                problems.add(f"states[{i}]", "not a poll state")
        problems.raise_if_any()
        limit = paging.page_size(page_size)
        fingerprint = {"states": sorted(states), "room": session_id}
        after = paging.decode(page_token, fingerprint)
        async with self.db.reader() as s:
            caller = await self._caller(s, principal, session_id, write=False)
            rows = await repo.page(
                s,
                crepo.polls(caller.tenant_id, caller.room.id, states),
                PollRow.create_time,
                PollRow.id,
                limit,
                after,
                newest_first=True,
            )
            answers = await crepo.poll_answers(s, caller.tenant_id, [r.id for r in rows])
            present = await self._present_ids(s, caller)
            views = [self._view(caller, r, answers[r.id], present) for r in rows]
        return views, paging.next_token(rows, limit, "create_time", fingerprint)

    async def answer_poll(
        self, principal: Principal, session_id: str | None, answer: PollAnswerInput
    ) -> PollView:
        """Answers as the calling participant, replacing its earlier answer. `session_id`, when
        given (the connection's room), must be the poll's room."""
        if not answer.poll_id:
            raise InvalidArgument(FieldViolation("poll_id", "is required"))
        async with self._uow(principal) as uow:
            caller, row = await self._poll_caller(
                uow.session, principal, answer.poll_id, write=True, lock=True
            )
            if session_id and row.session_id != session_id:
                raise _poll_not_found(answer.poll_id)
            caller.require_participant(P.PARTICIPANT_PERMISSION_ANSWER_POLLS)
            now = utcnow()
            if row.state != POLL_OPEN or (row.close_time is not None and row.close_time <= now):
                # Past its timer the poll refuses answers even before the timer has fired.
                raise FailedPrecondition("the poll is closed", reason="POLL_CLOSED")
            known = {o["id"] for o in row.options}
            problems, unknown = Violations(), False
            if not answer.option_ids:
                problems.add("option_ids", "select at least one option")
            for i, oid in enumerate(answer.option_ids):
                if oid not in known:
                    problems.add(f"option_ids[{i}]", "is not an option of the poll")
                    unknown = True
                elif oid in answer.option_ids[:i]:
                    problems.add(f"option_ids[{i}]", "appears more than once")
            too_many = len(set(answer.option_ids)) > row.max_selections
            if too_many:
                problems.add("option_ids", f"select at most {row.max_selections} options")
            if problems.items:
                reason = "POLL_OPTION_UNKNOWN" if unknown else None
                reason = reason or ("TOO_MANY_SELECTIONS" if too_many else None)
                raise InvalidArgument(problems.items, **({"reason": reason} if reason else {}))
            previous = await crepo.get_poll_answer(
                uow.session, caller.tenant_id, row.id, caller.participant_id
            )
            selected = list(answer.option_ids)
            correct = bool(row.correct_option_ids) and set(selected) == set(row.correct_option_ids)
            if previous is None:
                uow.session.add(
                    PollAnswerRow(
                        poll_id=row.id,
                        participant_id=caller.participant_id,
                        tenant_id=caller.tenant_id,
                        identity=caller.participant.identity,
                        option_ids=selected,
                        correct=correct,
                        answer_time=now,
                    )
                )
            else:
                previous.option_ids = selected
                previous.correct = correct
                previous.answer_time = now
            await uow.session.flush()
            answers = (await crepo.poll_answers(uow.session, caller.tenant_id, [row.id]))[row.id]
            uow.emit(
                ev.PollAnswered(
                    poll_id=row.id,
                    participant_id="" if row.anonymous else caller.participant_id,
                    identity="" if row.anonymous else caller.participant.identity,
                    option_ids=selected,
                    replaced_previous=previous is not None,
                    answer_count=len(answers),
                ),
                session_id=row.session_id,
                occur_time=now,
            )
            present = await self._present_ids(uow.session, caller)
            return self._view(caller, row, answers, present)

    async def close_poll(self, principal: Principal, poll_id: str) -> PollView:
        """Closes a poll; its results become final. Idempotent."""
        async with self._uow(principal) as uow:
            caller, row = await self._poll_caller(
                uow.session, principal, poll_id, write=True, lock=True
            )
            caller.require(P.PARTICIPANT_PERMISSION_MODERATE)
            if row.state == POLL_OPEN:
                await self._close_poll(uow, row, ev.PollClosed.REASON_REQUESTED, caller.main)
                await self._cancel(uow, POLL_TIMER, row.id)
            return await self._poll_view(uow.session, caller, row)

    async def _close_poll(
        self, uow: UnitOfWork, row: PollRow, reason: int, main: LiveSession
    ) -> None:
        now = utcnow()
        row.state = POLL_CLOSED
        row.close_reason = reason
        row.close_time = now
        answers = (await crepo.poll_answers(uow.session, uow.tenant_id, [row.id]))[row.id]
        present = await crepo.present_participants(
            uow.session, uow.tenant_id, main.id, row.session_id, (CONNECTED, RECONNECTING)
        )
        eligible = self._eligible(main, present, answers)
        counts = option_counts(row, answers)
        correct = set(row.correct_option_ids)
        uow.emit(
            ev.PollClosed(
                poll_id=row.id,
                reason=reason,
                answer_count=len(answers),
                eligible_count=eligible,
                options=[
                    ev.PollClosed.OptionResult(option_id=oid, count=n, correct=oid in correct)
                    for oid, n in counts
                ],
                correct_count=sum(1 for a in answers if a.correct),
            ),
            session_id=row.session_id,
            occur_time=now,
        )

    async def _poll_timer_fired(self, timer, uow: UnitOfWork) -> None:
        row = await crepo.get_poll(uow.session, uow.tenant_id, timer.key, lock=True)
        if row is None or row.state != POLL_OPEN:
            return
        room = await repo.get_live_session(uow.session, uow.tenant_id, row.session_id)
        main = room
        if room.parent_session_id:
            main = await repo.get_live_session(uow.session, uow.tenant_id, room.parent_session_id)
        await self._close_poll(uow, row, ev.PollClosed.REASON_TIMER_EXPIRED, main)

    async def _present_ids(self, s, caller: Caller) -> list[SessionParticipant]:
        return await crepo.present_participants(
            s, caller.tenant_id, caller.main.id, caller.room.id, (CONNECTED, RECONNECTING)
        )

    async def _poll_view(self, s, caller: Caller, row: PollRow) -> PollView:
        answers = (await crepo.poll_answers(s, caller.tenant_id, [row.id]))[row.id]
        return self._view(caller, row, answers, await self._present_ids(s, caller))

    @staticmethod
    def _eligible(
        main: LiveSession, present: list[SessionParticipant], answers: list[PollAnswerRow]
    ) -> int:
        """Participants in the room who may answer, plus any who answered and have gone."""
        ids = {
            p.id
            for p in present
            if P.PARTICIPANT_PERMISSION_ANSWER_POLLS
            in effective_permissions(p.role, main.settings, p.permission_overrides)
        }
        return len(ids | {a.participant_id for a in answers})

    def _view(
        self,
        caller: Caller,
        row: PollRow,
        answers: list[PollAnswerRow],
        present: list[SessionParticipant],
    ) -> PollView:
        closed = row.state == POLL_CLOSED
        privileged = caller.moderates
        visibility = row.results_visibility
        return PollView(
            poll=row,
            answers=answers,
            eligible_count=self._eligible(caller.main, present, answers),
            show_results=privileged
            or visibility == PUBLIC_LIVE
            or (visibility == PUBLIC_AFTER_CLOSE and closed),
            show_correct=privileged or closed,
            show_answers=privileged and not row.anonymous,
        )

    # Breakouts ----------------------------------------------------------------------------------

    async def create_breakouts(
        self,
        principal: Principal,
        session_id: str,
        plan: BreakoutPlanInput,
        idempotency: IdempotencyKey | None = None,
    ) -> BreakoutsView:
        plan.validate()

        async def body(uow: UnitOfWork) -> BreakoutsView:
            s, tenant_id = uow.session, principal.tenant_id
            caller = await self._caller(s, principal, session_id, write=True)
            caller.require(P.PARTICIPANT_PERMISSION_MODERATE)
            if caller.room.parent_session_id:
                raise FailedPrecondition(
                    "a breakout room cannot have breakout rooms", reason="SESSION_IS_BREAKOUT"
                )
            # Locking the main session serializes rounds of one session on PostgreSQL.
            main = await repo.lock_live_session(s, tenant_id, caller.room.id)
            if main.state != LIVE:
                raise FailedPrecondition("the session is not live", reason="SESSION_NOT_LIVE")
            current = await crepo.latest_round(s, tenant_id, main.id)
            if current is not None and current.state != BREAKOUTS_CLOSED:
                raise FailedPrecondition(
                    "breakout rooms are already open", reason="BREAKOUTS_ALREADY_OPEN"
                )
            rooms = await self._plan_rooms(s, tenant_id, main, plan)
            now = utcnow()
            close_time = now + plan.duration if plan.duration else None
            room_rows = []
            for name, _ in rooms:
                room = LiveSession(
                    id=new_id("ses"),
                    tenant_id=tenant_id,
                    parent_session_id=main.id,
                    breakout_name=name,
                    title=f"{main.title} · {name}"[:200],
                    class_id=main.class_id,
                    course_id=main.course_id,
                    state=LIVE,
                    scheduled_start_time=main.scheduled_start_time,
                    scheduled_end_time=main.scheduled_end_time,
                    capacity=0,
                    settings=dict(main.settings or {}),
                    labels={},
                    room_locked=False,
                    create_time=now,
                    update_time=now,
                    open_time=now,
                    live_time=now,
                    end_time=None,
                    end_reason=0,
                    end_message="",
                )
                s.add(room)
                room_rows.append(room)
                created = ev.SessionCreated(
                    title=room.title,
                    class_id=room.class_id,
                    course_id=room.course_id,
                    capacity=0,
                    parent_session_id=main.id,
                    state=LIVE,
                )
                created.scheduled_start_time.FromDatetime(room.scheduled_start_time)
                created.scheduled_end_time.FromDatetime(room.scheduled_end_time)
                uow.emit(created, session_id=room.id, occur_time=now)
            await s.flush()  # the rooms exist before rows refer to them
            round_row = BreakoutRound(
                id=new_id("brk"),
                tenant_id=tenant_id,
                session_id=main.id,
                room_session_ids=[r.id for r in room_rows],
                state=BREAKOUTS_OPEN,
                open_time=now,
                close_time=close_time,
            )
            s.add(round_row)
            await s.flush()
            position = 0
            moves = []
            for room, (_, members) in zip(room_rows, rooms, strict=True):
                for participant in members:
                    s.add(
                        BreakoutAssignment(
                            round_id=round_row.id,
                            participant_id=participant.id,
                            tenant_id=tenant_id,
                            room_session_id=room.id,
                            position=position,
                        )
                    )
                    position += 1
                    moves.append((participant, room.id))
            opened = ev.BreakoutsOpened(
                rooms=[
                    ev.BreakoutsOpened.Room(
                        session_id=room.id,
                        name=room.breakout_name,
                        participant_ids=[p.id for p in members],
                    )
                    for room, (_, members) in zip(room_rows, rooms, strict=True)
                ]
            )
            if close_time is not None:
                opened.close_time.FromDatetime(close_time)
                await self._schedule(uow, BREAKOUTS_DURATION_TIMER, round_row.id, close_time)
            uow.emit(opened, session_id=main.id, occur_time=now)
            for participant, room_id in moves:
                uow.emit(
                    ev.BreakoutParticipantMoved(
                        participant_id=participant.id,
                        identity=participant.identity,
                        from_session_id=main.id,
                        to_session_id=room_id,
                    ),
                    session_id=main.id,
                    occur_time=now,
                )
            await s.flush()
            return await self._breakouts_view(s, round_row)

        return await run_idempotent(lambda: self._uow(principal), idempotency, body)

    async def _plan_rooms(
        self, s, tenant_id: str, main: LiveSession, plan: BreakoutPlanInput
    ) -> list[tuple[str, list[SessionParticipant]]]:
        if plan.manual is not None:
            wanted = [pid for room in plan.manual for pid in room.participant_ids]
            found = await crepo.participants_by_id(s, tenant_id, main.id, wanted)
            missing = [pid for pid in wanted if pid not in found]
            if missing:
                raise _participant_not_found(missing[0])
            return [
                (room.name.strip(), [found[pid] for pid in room.participant_ids])
                for room in plan.manual
            ]
        names = [n.strip() for n in plan.room_names] or [
            f"Room {i + 1}" for i in range(plan.room_count)
        ]
        candidates = await crepo.splittable_participants(
            s, tenant_id, main.id, plan.roles or (LEARNER,), (WAITING, LEFT)
        )
        if plan.strategy == SPLIT_RANDOM:
            secrets.SystemRandom().shuffle(candidates)
        # Contiguous chunks whose sizes differ by at most one, the first rooms taking the extra.
        size, extra = divmod(len(candidates), plan.room_count)
        rooms, start = [], 0
        for i, name in enumerate(names):
            end = start + size + (1 if i < extra else 0)
            rooms.append((name, candidates[start:end]))
            start = end
        return rooms

    async def _breakouts_view(self, s, round_row: BreakoutRound) -> BreakoutsView:
        rooms = {
            r.id: r for r in await repo.child_sessions(s, round_row.tenant_id, round_row.session_id)
        }
        members: dict[str, list[str]] = {rid: [] for rid in round_row.room_session_ids}
        for a in await crepo.assignments(s, round_row.tenant_id, round_row.id):
            members.setdefault(a.room_session_id, []).append(a.participant_id)
        return BreakoutsView(
            round_row, [(rooms[rid], members[rid]) for rid in round_row.room_session_ids]
        )

    async def _round_caller(
        self, s, principal: Principal, session_id: str, *, write: bool, lock: bool = False
    ) -> tuple[Caller, BreakoutRound | None]:
        caller = await self._caller(s, principal, session_id, write=write)
        if write:
            caller.require(P.PARTICIPANT_PERMISSION_MODERATE)
        if caller.room.parent_session_id:
            # Breakouts are managed on the main session; a room has none of its own.
            raise FailedPrecondition(
                "breakouts are managed on the main session", reason="SESSION_IS_BREAKOUT"
            )
        return caller, await crepo.latest_round(s, caller.tenant_id, caller.room.id, lock=lock)

    async def get_breakouts(self, principal: Principal, session_id: str) -> BreakoutsView:
        async with self.db.reader() as s:
            _, round_row = await self._round_caller(s, principal, session_id, write=False)
            if round_row is None:
                raise NotFound("the session never had breakout rooms", reason="BREAKOUTS_NOT_FOUND")
            return await self._breakouts_view(s, round_row)

    async def assigned_room(self, tenant_id: str, session_id: str, participant_id: str) -> str:
        """The room a participant belongs in now: a breakout room while rounds are open (or
        closing), else the main session. For the connection when a participant (re)joins."""
        async with self.db.reader() as s:
            round_row = await crepo.latest_round(s, tenant_id, session_id)
            if round_row is None or round_row.state == BREAKOUTS_CLOSED:
                return session_id
            found = await crepo.get_assignment(s, tenant_id, round_row.id, participant_id)
            return found.room_session_id if found else session_id

    def _open_round(self, round_row: BreakoutRound | None, *, closing_ok: bool) -> BreakoutRound:
        allowed = (BREAKOUTS_OPEN, BREAKOUTS_CLOSING) if closing_ok else (BREAKOUTS_OPEN,)
        if round_row is None or round_row.state not in allowed:
            raise FailedPrecondition("no breakout rooms are open", reason="BREAKOUTS_NOT_OPEN")
        return round_row

    async def move_participant(
        self, principal: Principal, session_id: str, participant_id: str, to_session_id: str
    ) -> BreakoutsView:
        problems = Violations()
        if not participant_id:
            problems.add("participant_id", "is required")
        if not to_session_id:
            problems.add("to_session_id", "is required")
        problems.raise_if_any()
        async with self._uow(principal) as uow:
            s = uow.session
            caller, round_row = await self._round_caller(
                s, principal, session_id, write=True, lock=True
            )
            round_row = self._open_round(round_row, closing_ok=False)
            main = caller.room
            target = await repo.get_participant(s, caller.tenant_id, participant_id)
            if target is None or target.session_id != main.id:
                raise _participant_not_found(participant_id)
            if to_session_id != main.id and to_session_id not in round_row.room_session_ids:
                raise NotFound(
                    f"breakout room {to_session_id!r} not found", reason="BREAKOUT_ROOM_NOT_FOUND"
                )
            assignment = await crepo.get_assignment(s, caller.tenant_id, round_row.id, target.id)
            current = assignment.room_session_id if assignment else main.id
            if current != to_session_id:
                # A moved participant is listed last in its new room.
                existing = await crepo.assignments(s, caller.tenant_id, round_row.id)
                position = max((a.position for a in existing), default=-1) + 1
                if to_session_id == main.id:
                    await s.delete(assignment)
                elif assignment is not None:
                    assignment.room_session_id = to_session_id
                    assignment.position = position
                else:
                    s.add(
                        BreakoutAssignment(
                            round_id=round_row.id,
                            participant_id=target.id,
                            tenant_id=caller.tenant_id,
                            room_session_id=to_session_id,
                            position=position,
                        )
                    )
                uow.emit(
                    ev.BreakoutParticipantMoved(
                        participant_id=target.id,
                        identity=target.identity,
                        from_session_id=current,
                        to_session_id=to_session_id,
                    ),
                    session_id=main.id,
                )
                await s.flush()
            return await self._breakouts_view(s, round_row)

    async def broadcast(self, principal: Principal, session_id: str, text: str) -> list[str]:
        """Sends a message to every open breakout room. The event is written once, to the main
        session's log: the connection delivers the main session's breakout events in every room."""
        if not text.strip():
            raise InvalidArgument(FieldViolation("text", "is required"))
        if len(text) > MAX_BROADCAST:
            raise InvalidArgument(
                FieldViolation("text", f"must be at most {MAX_BROADCAST} characters")
            )
        async with self._uow(principal) as uow:
            caller, round_row = await self._round_caller(
                uow.session, principal, session_id, write=True
            )
            round_row = self._open_round(round_row, closing_ok=True)
            rooms = list(round_row.room_session_ids)
            uow.emit(ev.BreakoutBroadcast(text=text, session_ids=rooms), session_id=caller.room.id)
            return rooms

    async def close_breakouts(
        self, principal: Principal, session_id: str, countdown: timedelta | None = None
    ) -> BreakoutsView:
        """Starts the closing countdown (idempotent while closing); zero closes at once."""
        countdown = DEFAULT_COUNTDOWN if countdown is None else countdown
        if not timedelta(0) <= countdown <= MAX_COUNTDOWN:
            raise InvalidArgument(FieldViolation("countdown", "must be between 0 and 10 minutes"))
        async with self._uow(principal) as uow:
            caller, round_row = await self._round_caller(
                uow.session, principal, session_id, write=True, lock=True
            )
            round_row = self._open_round(round_row, closing_ok=True)
            if round_row.state == BREAKOUTS_OPEN:
                # A timer never cancels itself: the runner marks the firing row afterwards.
                await self._cancel(uow, BREAKOUTS_DURATION_TIMER, round_row.id)
                await self._start_closing(uow, round_row, countdown)
            return await self._breakouts_view(uow.session, round_row)

    async def _start_closing(
        self, uow: UnitOfWork, round_row: BreakoutRound, countdown: timedelta
    ) -> None:
        now = utcnow()
        round_row.state = BREAKOUTS_CLOSING
        round_row.close_time = now + countdown
        closing = ev.BreakoutsClosing()
        closing.countdown.FromTimedelta(countdown)
        closing.close_time.FromDatetime(round_row.close_time)
        uow.emit(closing, session_id=round_row.session_id, occur_time=now)
        if countdown <= timedelta(0):
            await self._finish_closing(uow, round_row, ev.SESSION_END_REASON_BREAKOUTS_CLOSED)
        else:
            await self._schedule(uow, BREAKOUTS_CLOSE_TIMER, round_row.id, round_row.close_time)

    async def _finish_closing(
        self, uow: UnitOfWork, round_row: BreakoutRound, end_reason: int
    ) -> None:
        """Ends the rooms: their polls close, hands go down, each room's session ends. The main
        session's BreakoutsClosed, written first, is what brings participants back."""
        s, tenant_id = uow.session, uow.tenant_id
        now = utcnow()
        round_row.state = BREAKOUTS_CLOSED
        round_row.close_time = now
        main = await repo.get_live_session(s, tenant_id, round_row.session_id)
        closed = ev.BreakoutsClosed(session_ids=round_row.room_session_ids)
        uow.emit(closed, session_id=main.id, occur_time=now)
        for room_id in round_row.room_session_ids:
            room = await repo.get_live_session(s, tenant_id, room_id)
            if room is None or room.state in (ENDED, CANCELLED):
                continue
            await self._end_room_interactions(uow, room, main, ev.PollClosed.REASON_SESSION_ENDED)
            ended = ev.SessionEnded(reason=end_reason)
            if room.live_time is not None:
                ended.live_time.FromDatetime(room.live_time)
                ended.live_duration.FromTimedelta(max(now - room.live_time, timedelta(0)))
            room.state = ENDED
            room.end_reason = end_reason
            room.end_time = now
            room.update_time = now
            uow.emit(ended, session_id=room.id, occur_time=now)

    async def _end_room_interactions(
        self, uow: UnitOfWork, room: LiveSession, main: LiveSession, poll_reason: int
    ) -> None:
        s, tenant_id = uow.session, uow.tenant_id
        for poll in (await s.scalars(crepo.polls(tenant_id, room.id, (POLL_OPEN,)))).all():
            await self._close_poll(uow, poll, poll_reason, main)
            await self._cancel(uow, POLL_TIMER, poll.id)
        await self._lower(uow, room.id, await self._queue(s, tenant_id, room.id))

    async def _breakouts_duration_fired(self, timer, uow: UnitOfWork) -> None:
        round_row = await crepo.get_round(uow.session, uow.tenant_id, timer.key, lock=True)
        if round_row is not None and round_row.state == BREAKOUTS_OPEN:
            await self._start_closing(uow, round_row, AUTO_CLOSE_COUNTDOWN)

    async def _breakouts_close_fired(self, timer, uow: UnitOfWork) -> None:
        round_row = await crepo.get_round(uow.session, uow.tenant_id, timer.key, lock=True)
        if round_row is not None and round_row.state == BREAKOUTS_CLOSING:
            await self._finish_closing(uow, round_row, ev.SESSION_END_REASON_BREAKOUTS_CLOSED)

    # The session's end --------------------------------------------------------------------------

    async def on_session_ended(self, uow: UnitOfWork, session: LiveSession) -> None:
        """For the lifecycle's EndSession / timeouts, in their unit of work: closes the session's
        open polls (REASON_SESSION_ENDED), lowers its hands, and ends open breakout rooms
        (SESSION_END_REASON_PARENT_ENDED)."""
        await self._end_room_interactions(uow, session, session, ev.PollClosed.REASON_SESSION_ENDED)
        round_row = await crepo.latest_round(uow.session, uow.tenant_id, session.id, lock=True)
        if round_row is not None and round_row.state != BREAKOUTS_CLOSED:
            await self._cancel(uow, BREAKOUTS_DURATION_TIMER, round_row.id)
            await self._cancel(uow, BREAKOUTS_CLOSE_TIMER, round_row.id)
            await self._finish_closing(uow, round_row, ev.SESSION_END_REASON_PARENT_ENDED)


def option_counts(row: PollRow, answers: list[PollAnswerRow]) -> list[tuple[str, int]]:
    """Per-option counts in display order (for results payloads)."""
    counts = {o["id"]: 0 for o in row.options}
    for a in answers:
        for oid in a.option_ids:
            if oid in counts:
                counts[oid] += 1
    return list(counts.items())
