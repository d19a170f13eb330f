"""Live sessions: create, read, list and update sessions; their lifecycle (SCHEDULED -> OPEN ->
LIVE -> ENDED, or CANCELLED) with durable timers for the automatic moves; join tokens; the
participants' stored state (joins, resumes, drops, leaves, moderation) and attendance.

What lives in memory per replica (open connections, fan-out of pushes) is domain/presence.py;
everything here is stored, so it survives restarts and is shared by replicas.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.roster.v1 import resources_pb2 as roster_pb

from ..events.outbox import UnitOfWorkFactory, system_actor
from ..store import events as event_store
from ..store import repositories as repo
from ..store import roster_repositories as roster_repo
from ..store.engine import Database
from ..store.models import (
    AttendanceInterval,
    JoinToken,
    LiveSession,
    SessionInstructor,
    SessionParticipant,
)
from ..store.roster_models import RosterPerson
from ..store.types import utcnow
from . import paging, tokens
from .auth import ParticipantClaims, Principal
from .errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Violations,
)
from .idempotency import IdempotencyKey, run_idempotent
from .ids import new_id
from .platform import PlatformDomain, TenantSettings, actor_of

MAX_TITLE = 200
MAX_REF = 64  # class and course ids: opaque roster ids
MAX_IDENTITY = 128
MAX_DISPLAY_NAME = 100
MAX_INSTRUCTORS = 100
MAX_SESSION_METADATA = 32
MAX_TOKEN_METADATA = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 256
MAX_WARDS = 20

DEFAULT_JOIN_WINDOW = timedelta(minutes=10)
DEFAULT_EMPTY_ROOM_TIMEOUT = timedelta(minutes=5)
MAX_JOIN_WINDOW = timedelta(days=7)
EMPTY_ROOM_TIMEOUT_RANGE = (timedelta(seconds=1), timedelta(hours=24))
RECONNECT_GRACE_RANGE = (timedelta(seconds=1), timedelta(minutes=5))
MAX_OVERRUN_LIMIT = timedelta(hours=24)

SCHEDULED = common_pb2.SESSION_STATE_SCHEDULED
OPEN = common_pb2.SESSION_STATE_OPEN
LIVE = common_pb2.SESSION_STATE_LIVE
ENDED = common_pb2.SESSION_STATE_ENDED
CANCELLED = common_pb2.SESSION_STATE_CANCELLED
SESSION_STATES = frozenset(v for v in common_pb2.SessionState.values() if v)
ROLES = frozenset(v for v in common_pb2.ParticipantRole.values() if v)
GUARDIAN = common_pb2.PARTICIPANT_ROLE_GUARDIAN
PERMISSIONS = frozenset(v for v in ev.ParticipantPermission.values() if v)


@dataclass(frozen=True)
class PermissionOverrides:
    grant: tuple[int, ...] = ()
    revoke: tuple[int, ...] = ()

    def validate(self, problems: Violations, prefix: str) -> None:
        for name, values in (("grant", self.grant), ("revoke", self.revoke)):
            for i, value in enumerate(values):
                if value not in PERMISSIONS:
                    problems.add(f"{prefix}.{name}[{i}]", "not a participant permission")
        for value in sorted(set(self.grant) & set(self.revoke)):
            problems.add(
                f"{prefix}.revoke[{self.revoke.index(value)}]",
                "is also granted in the same overrides",
            )

    def to_json(self) -> dict:
        return {"grant": list(self.grant), "revoke": list(self.revoke)}

    @classmethod
    def from_json(cls, data: dict) -> PermissionOverrides:
        return cls(tuple(data.get("grant", ())), tuple(data.get("revoke", ())))


@dataclass(frozen=True)
class RolePermissions:
    role: int
    overrides: PermissionOverrides


@dataclass(frozen=True)
class SessionSettings:
    """A session's settings. None durations take their default when the session is created, so a
    stored session always reads back with the values that apply to it."""

    waiting_room: bool = False
    learners_join_before_instructor: bool = False
    join_window: timedelta | None = None
    empty_room_timeout: timedelta | None = None
    reconnect_grace: timedelta | None = None
    overrun_limit: timedelta | None = None
    auto_start_recording: bool = False
    auto_start_transcription: bool = False
    # media.v1 RecordingOptions and TranscriptionOptions in their proto JSON form: kept and
    # returned as given; the media capability interprets them.
    recording_options: dict | None = None
    transcription_options: dict | None = None
    role_permissions: tuple[RolePermissions, ...] = ()

    def validate(self, problems: Violations, prefix: str) -> None:
        def within(name: str, value: timedelta | None, low: timedelta, high: timedelta, text: str):
            if value is not None and not low <= value <= high:
                problems.add(f"{prefix}.{name}", f"must be between {text}")

        within("join_window", self.join_window, timedelta(0), MAX_JOIN_WINDOW, "0 and 7 days")
        within(
            "empty_room_timeout",
            self.empty_room_timeout,
            *EMPTY_ROOM_TIMEOUT_RANGE,
            "1 s and 24 h",
        )
        within("reconnect_grace", self.reconnect_grace, *RECONNECT_GRACE_RANGE, "1 s and 5 min")
        within("overrun_limit", self.overrun_limit, timedelta(0), MAX_OVERRUN_LIMIT, "0 and 24 h")
        seen: set[int] = set()
        for i, item in enumerate(self.role_permissions):
            path = f"{prefix}.role_permissions[{i}]"
            if item.role not in ROLES:
                problems.add(f"{path}.role", "must be a participant role")
            elif item.role in seen:
                problems.add(f"{path}.role", "appears more than once")
            seen.add(item.role)
            item.overrides.validate(problems, f"{path}.overrides")

    def with_defaults(self, tenant: TenantSettings) -> SessionSettings:
        return SessionSettings(
            **{
                **self.__dict__,
                "join_window": _or(self.join_window, DEFAULT_JOIN_WINDOW),
                "empty_room_timeout": _or(self.empty_room_timeout, DEFAULT_EMPTY_ROOM_TIMEOUT),
                "reconnect_grace": _or(self.reconnect_grace, tenant.reconnect_grace),
                "overrun_limit": _or(self.overrun_limit, timedelta(0)),
            }
        )

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        for name in ("join_window", "empty_room_timeout", "reconnect_grace", "overrun_limit"):
            value = data[name]
            data[name] = None if value is None else value.total_seconds()
        data["role_permissions"] = [
            {"role": r.role, **r.overrides.to_json()} for r in self.role_permissions
        ]
        return data

    @classmethod
    def from_json(cls, data: dict) -> SessionSettings:
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("join_window", "empty_room_timeout", "reconnect_grace", "overrun_limit"):
            if values.get(name) is not None:
                values[name] = timedelta(seconds=values[name])
        values["role_permissions"] = tuple(
            RolePermissions(r["role"], PermissionOverrides.from_json(r))
            for r in values.get("role_permissions", ())
        )
        return cls(**values)


def _or(value, default):
    return default if value is None else value


@dataclass(frozen=True)
class SessionInput:
    """What a caller may set on a session (the output-only fields are not here)."""

    title: str = ""
    class_id: str = ""
    course_id: str = ""
    instructor_identities: tuple[str, ...] = ()
    scheduled_start_time: datetime | None = None
    scheduled_end_time: datetime | None = None
    capacity: int = 0
    settings: SessionSettings = field(default_factory=SessionSettings)
    metadata: dict[str, str] = field(default_factory=dict)

    def validate(self, prefix: str = "session") -> None:
        problems = Violations()
        if not self.title.strip():
            problems.add(f"{prefix}.title", "is required")
        elif len(self.title) > MAX_TITLE:
            problems.add(f"{prefix}.title", f"must be at most {MAX_TITLE} characters")
        for name in ("class_id", "course_id"):
            if len(getattr(self, name)) > MAX_REF:
                problems.add(f"{prefix}.{name}", f"must be at most {MAX_REF} characters")
        if len(self.instructor_identities) > MAX_INSTRUCTORS:
            problems.add(f"{prefix}.instructor_identities", f"at most {MAX_INSTRUCTORS} identities")
        for i, identity in enumerate(self.instructor_identities):
            _identity(problems, f"{prefix}.instructor_identities[{i}]", identity)
            if identity in self.instructor_identities[:i]:
                problems.add(f"{prefix}.instructor_identities[{i}]", "appears more than once")
        start, end = self.scheduled_start_time, self.scheduled_end_time
        if start is None:
            problems.add(f"{prefix}.scheduled_start_time", "is required")
        if end is None:
            problems.add(f"{prefix}.scheduled_end_time", "is required")
        if start is not None and end is not None and end <= start:
            problems.add(f"{prefix}.scheduled_end_time", "must be after scheduled_start_time")
        if self.capacity < 0:
            problems.add(f"{prefix}.capacity", "must not be negative")
        self.settings.validate(problems, f"{prefix}.settings")
        _metadata(problems, f"{prefix}.metadata", self.metadata, MAX_SESSION_METADATA)
        problems.raise_if_any()


def _identity(problems: Violations, path: str, value: str) -> None:
    if not value:
        problems.add(path, "is required")
    elif len(value) > MAX_IDENTITY:
        problems.add(path, f"must be at most {MAX_IDENTITY} characters")


def _metadata(problems: Violations, path: str, values: dict[str, str], max_pairs: int) -> None:
    if len(values) > max_pairs:
        problems.add(path, f"at most {max_pairs} pairs")
    for key, value in values.items():
        if not key or len(key) > MAX_METADATA_KEY:
            problems.add(f"{path}[{key!r}]", f"keys must be 1 to {MAX_METADATA_KEY} characters")
        if len(value) > MAX_METADATA_VALUE:
            problems.add(
                f"{path}[{key!r}]", f"values must be at most {MAX_METADATA_VALUE} characters"
            )


@dataclass
class SessionView:
    session: LiveSession
    instructor_identities: list[str]
    settings: SessionSettings
    connected_count: int = 0
    waiting_count: int = 0


@dataclass(frozen=True)
class SessionFilter:
    states: tuple[int, ...] = ()
    start_from: datetime | None = None
    start_to: datetime | None = None
    class_id: str = ""
    course_id: str = ""
    instructor_identity: str = ""
    parent_session_id: str = ""

    def validate(self) -> None:
        problems = Violations()
        for i, state in enumerate(self.states):
            if state not in SESSION_STATES:
                problems.add(f"states[{i}]", "not a session state")
        if self.start_from and self.start_to and self.start_to <= self.start_from:
            problems.add("scheduled_start_time_to", "must be after scheduled_start_time_from")
        problems.raise_if_any()

    def fingerprint(self) -> dict:
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.__dict__.items()
        }


@dataclass(frozen=True)
class JoinTokenInput:
    session_id: str
    identity: str
    display_name: str
    role: int
    ttl: timedelta | None = None
    permission_overrides: PermissionOverrides = field(default_factory=PermissionOverrides)
    guardian_of_identities: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        problems = Violations()
        _identity(problems, "identity", self.identity)
        if not self.display_name.strip():
            problems.add("display_name", "is required")
        elif len(self.display_name) > MAX_DISPLAY_NAME:
            problems.add("display_name", f"must be at most {MAX_DISPLAY_NAME} characters")
        if self.role not in ROLES:
            problems.add("role", "is required: a participant role")
        if self.ttl is not None and not timedelta(0) < self.ttl <= tokens.MAX_TTL:
            problems.add("ttl", "must be positive and at most 24 hours")
        self.permission_overrides.validate(problems, "permission_overrides")
        if self.role == GUARDIAN:
            wards = self.guardian_of_identities
            if not wards:
                problems.add("guardian_of_identities", "is required for guardians")
            elif len(wards) > MAX_WARDS:
                problems.add("guardian_of_identities", f"at most {MAX_WARDS} identities")
            for i, identity in enumerate(wards):
                path = f"guardian_of_identities[{i}]"
                _identity(problems, path, identity)
                if identity and identity == self.identity:
                    problems.add(path, "a guardian cannot observe itself")
                elif identity in wards[:i]:
                    problems.add(path, "appears more than once")
        elif self.guardian_of_identities:
            problems.add("guardian_of_identities", "is only for PARTICIPANT_ROLE_GUARDIAN")
        _metadata(problems, "metadata", self.metadata, MAX_TOKEN_METADATA)
        problems.raise_if_any()


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_id: str
    expire_time: datetime
    participant_id: str


def _session_not_found(session_id: str) -> NotFound:
    return NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")


def refuse_closed(row: LiveSession) -> None:
    """Ended and cancelled sessions admit no one: FAILED_PRECONDITION with the proto's reasons."""
    if row.state == ENDED:
        raise FailedPrecondition("the session has ended", reason="SESSION_ENDED")
    if row.state == CANCELLED:
        raise FailedPrecondition("the session was cancelled", reason="SESSION_CANCELLED")


class SessionsDomain:
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        platform: PlatformDomain,
        issuer: str,
        timers=None,
    ) -> None:
        self.db = db
        self.uow = uow
        self.platform = platform
        self.issuer = issuer
        # events.timers.Timers; None only for callers that never change a session's lifecycle.
        self.timers = timers
        # domain.classroom.Classroom (set by the composition root): ending a session closes its
        # polls, lowers its hands and ends its breakout rooms.
        self.classroom = None

    # Access ------------------------------------------------------------------------------------

    async def _authorize_read(self, session, principal: Principal, session_id: str) -> None:
        """`session:read`, or a live (unrevoked) participant token for this session or one of
        its breakout rooms. A token of another session is UNAUTHENTICATED, as the contract says,
        whether or not that other session exists."""
        claims = principal.participant
        if claims is None:
            principal.require("session:read")
            return
        if session_id != claims.session_id:
            row = await repo.get_live_session(session, principal.tenant_id, session_id)
            if row is None or row.parent_session_id != claims.session_id:
                raise Unauthenticated(
                    "the participant token is for another session", reason="TOKEN_SESSION_MISMATCH"
                )
        await self._check_not_revoked(session, principal.tenant_id, claims)

    @staticmethod
    async def _check_not_revoked(session, tenant_id: str, claims: ParticipantClaims) -> None:
        # Checked here until the Authenticator learns about revocation: every RPC that accepts
        # a participant token goes through _authorize_read.
        token = await repo.get_join_token(session, tenant_id, claims.token_id)
        if token is None or token.session_id != claims.session_id:
            raise Unauthenticated("participant token rejected", reason="TOKEN_INVALID")
        if token.revoke_time is not None:
            raise Unauthenticated("participant token was revoked", reason="TOKEN_REVOKED")

    # Sessions ----------------------------------------------------------------------------------

    async def create_session(
        self, principal: Principal, data: SessionInput, idempotency: IdempotencyKey | None
    ) -> SessionView:
        principal.require("session:write")
        data.validate()
        assert data.scheduled_start_time is not None and data.scheduled_end_time is not None

        async def body(uow) -> SessionView:
            tenant = await repo.get_tenant(uow.session, principal.tenant_id)
            tenant_settings = (
                TenantSettings.from_json(tenant.settings) if tenant else TenantSettings()
            )
            settings = data.settings.with_defaults(tenant_settings)
            now = utcnow()
            # The join window may already be open (a session created for right now); then the
            # session starts OPEN, as the contract says, instead of waiting for a timer.
            is_open = now >= data.scheduled_start_time - settings.join_window
            row = LiveSession(
                id=new_id("ses"),
                tenant_id=principal.tenant_id,
                parent_session_id=None,
                breakout_name="",
                title=data.title.strip(),
                class_id=data.class_id,
                course_id=data.course_id,
                state=OPEN if is_open else SCHEDULED,
                scheduled_start_time=data.scheduled_start_time,
                scheduled_end_time=data.scheduled_end_time,
                capacity=data.capacity,
                settings=settings.to_json(),
                labels=dict(data.metadata),
                room_locked=False,
                create_time=now,
                update_time=now,
                open_time=now if is_open else None,
                live_time=None,
                end_time=None,
                end_reason=0,
                end_message="",
            )
            uow.session.add(row)
            await uow.session.flush()  # the instructor rows reference it
            for position, identity in enumerate(data.instructor_identities):
                uow.session.add(
                    SessionInstructor(
                        session_id=row.id,
                        identity=identity,
                        tenant_id=principal.tenant_id,
                        position=position,
                    )
                )
            if not is_open:
                await self._schedule_open(uow, row, settings)
            event = ev.SessionCreated(
                title=row.title,
                class_id=row.class_id,
                course_id=row.course_id,
                capacity=row.capacity,
                state=row.state,
            )
            event.scheduled_start_time.FromDatetime(row.scheduled_start_time)
            event.scheduled_end_time.FromDatetime(row.scheduled_end_time)
            uow.emit(event, session_id=row.id, occur_time=now)
            return SessionView(row, list(data.instructor_identities), settings)

        return await run_idempotent(
            lambda: self.uow(principal.tenant_id, actor_of(principal)), idempotency, body
        )

    async def get_session(self, principal: Principal, session_id: str) -> SessionView:
        async with self.db.reader() as session:
            await self._authorize_read(session, principal, session_id)
            row = await repo.get_live_session(session, principal.tenant_id, session_id)
            if row is None:
                raise _session_not_found(session_id)
            return await self._view(session, row)

    async def list_sessions(
        self, principal: Principal, filters: SessionFilter, size: int, token: str
    ) -> tuple[list[SessionView], str]:
        principal.require("session:read")
        filters.validate()
        limit = paging.page_size(size)
        fingerprint = filters.fingerprint()
        after = paging.decode(token, fingerprint)
        query = repo.live_sessions(
            principal.tenant_id,
            states=filters.states,
            start_from=filters.start_from,
            start_to=filters.start_to,
            class_id=filters.class_id,
            course_id=filters.course_id,
            instructor_identity=filters.instructor_identity,
            parent_session_id=filters.parent_session_id,
        )
        async with self.db.reader() as session:
            rows = await repo.page(
                session, query, LiveSession.scheduled_start_time, LiveSession.id, limit, after
            )
            instructors = await repo.session_instructors(
                session, principal.tenant_id, [r.id for r in rows]
            )
        views = [
            SessionView(r, instructors[r.id], SessionSettings.from_json(r.settings)) for r in rows
        ]
        return views, paging.next_token(rows, limit, "scheduled_start_time", fingerprint)

    # Join tokens -------------------------------------------------------------------------------

    async def create_join_token(
        self, principal: Principal, data: JoinTokenInput, idempotency: IdempotencyKey | None
    ) -> IssuedToken:
        principal.require("session:write")
        data.validate()
        key = await self.platform.primary_signing_key(principal.tenant_id)

        async def body(uow) -> IssuedToken:
            row = await repo.get_live_session(uow.session, principal.tenant_id, data.session_id)
            if row is None:
                raise _session_not_found(data.session_id)
            refuse_closed(row)
            overrides = data.permission_overrides.to_json()
            if data.role == GUARDIAN:
                await self._check_guardianship(uow.session, row, data)
                overrides[GUARDIAN_OF] = list(data.guardian_of_identities)
            tenant = await repo.get_tenant(uow.session, principal.tenant_id)
            tenant_settings = (
                TenantSettings.from_json(tenant.settings) if tenant else TenantSettings()
            )
            ttl = data.ttl or tenant_settings.default_join_token_ttl
            now = utcnow()
            existing = await uow.session.scalar(
                repo.participants(principal.tenant_id, row.id).where(
                    SessionParticipant.identity == data.identity
                )
            )
            if existing is not None and existing.rejoin_blocked:
                raise PermissionDenied(
                    "this identity was removed from the session and may not rejoin",
                    reason="IDENTITY_BLOCKED",
                )
            participant = await repo.ensure_participant(
                uow.session,
                participant_id=new_id("par"),
                tenant_id=principal.tenant_id,
                session_id=row.id,
                identity=data.identity,
                display_name=data.display_name.strip(),
                role=data.role,
                create_time=now,
            )
            if data.role == GUARDIAN and participant.state not in PRESENT:
                # Shown by GetParticipant before the first join; a connected guardian keeps the
                # wards of the token it joined with until it joins again.
                participant.permission_overrides = _with_wards(
                    participant.permission_overrides, data.guardian_of_identities
                )
            claims = ParticipantClaims(
                session_id=row.id,
                participant_id=participant.id,
                identity=data.identity,
                role=data.role,
                display_name=data.display_name.strip(),
                token_id=str(uuid.uuid4()),
                # The wards travel in the signed token, so a connection needs no roster lookup.
                permissions=overrides,
            )
            minted = tokens.mint(
                issuer=self.issuer,
                key_id=key.id,
                secret=key.secret,
                tenant_id=principal.tenant_id,
                claims=claims,
                now=now,
                ttl=ttl,
            )
            uow.session.add(
                JoinToken(
                    id=minted.token_id,
                    tenant_id=principal.tenant_id,
                    session_id=row.id,
                    participant_id=participant.id,
                    signing_key_id=key.id,
                    role=data.role,
                    display_name=claims.display_name,
                    permission_overrides=overrides,
                    labels=dict(data.metadata),
                    create_time=now,
                    expire_time=minted.expire_time,
                    revoke_time=None,
                )
            )
            event = ev.JoinTokenIssued(
                token_id=minted.token_id,
                participant_id=participant.id,
                identity=data.identity,
                role=data.role,
            )
            event.expire_time.FromDatetime(minted.expire_time)
            uow.emit(event, session_id=row.id, occur_time=now)
            return IssuedToken(minted.token, minted.token_id, minted.expire_time, participant.id)

        return await run_idempotent(
            lambda: self.uow(principal.tenant_id, actor_of(principal)), idempotency, body
        )

    async def _check_guardianship(self, session, row: LiveSession, data: JoinTokenInput) -> None:
        """The guardian's identity names an active roster person linked as guardian to each
        learner identity, and each learner belongs to this session: enrolled (active, as a
        learner) in the session's class when it names one, or already a participant of it.
        Otherwise FAILED_PRECONDITION GUARDIANSHIP_NOT_FOUND naming the identity that failed.

        An identity is the embedding product's user id; in the roster that is the person's
        `external_id` (the system of record's id) or, for products that use the roster's own
        ids, the person's `id`. The id wins when both could match, as it is server-chosen."""
        tenant_id = row.tenant_id
        now = utcnow()

        def refused(identity: str, why: str, learner: str = "") -> FailedPrecondition:
            metadata = {"guardian_identity": data.identity}
            if learner:
                metadata["learner_identity"] = learner
            return FailedPrecondition(
                f"{identity!r} {why}", reason="GUARDIANSHIP_NOT_FOUND", metadata=metadata
            )

        guardian = await _roster_person(session, tenant_id, data.identity)
        if guardian is None:
            raise refused(data.identity, "is not an active person of the roster")
        main_id = _main_id(row)
        class_id = row.class_id
        if not class_id and row.parent_session_id:
            parent = await repo.get_live_session(session, tenant_id, row.parent_session_id)
            class_id = parent.class_id if parent else ""
        for identity in data.guardian_of_identities:
            learner = await _roster_person(session, tenant_id, identity)
            link = (
                None
                if learner is None
                else await roster_repo.guardian_link(session, tenant_id, learner.id, guardian.id)
            )
            if link is None:
                raise refused(identity, "is not a ward of the guardian in the roster", identity)
            if class_id:
                enrollment = await roster_repo.active_enrollment_of(
                    session,
                    tenant_id,
                    learner.id,
                    class_id,
                    roster_pb.ENROLLMENT_ROLE_LEARNER,
                    roster_pb.ENROLLMENT_STATE_ACTIVE,
                )
                # An end time already passed counts as ended before its timer fires.
                if enrollment is not None and (
                    enrollment.end_time is None or enrollment.end_time > now
                ):
                    continue
            ward = await session.scalar(
                repo.participants(tenant_id, main_id).where(SessionParticipant.identity == identity)
            )
            if ward is None or ward.removed or ward.role in (GUARDIAN, OBSERVER):
                raise refused(identity, "is not a learner of this session", identity)

    async def revoke_join_token(self, principal: Principal, session_id: str, token_id: str) -> None:
        principal.require("session:write")
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            row = await repo.get_live_session(uow.session, principal.tenant_id, session_id)
            if row is None:
                raise _session_not_found(session_id)
            token = await repo.get_join_token(uow.session, principal.tenant_id, token_id)
            if token is None or token.session_id != session_id:
                raise NotFound(f"join token {token_id!r} not found", reason="JOIN_TOKEN_NOT_FOUND")
            if token.revoke_time is None:
                now = utcnow()
                token.revoke_time = now
                uow.emit(
                    ev.JoinTokenRevoked(token_id=token.id, participant_id=token.participant_id),
                    session_id=session_id,
                )
                participant = await repo.get_participant(
                    uow.session, principal.tenant_id, token.participant_id, lock=True
                )
                if (
                    participant is not None
                    and participant.state in PRESENT
                    and participant.connection_token_id == token.id
                ):
                    await self._leave(uow, row, participant, LR_REMOVED, now)

    # Lifecycle ---------------------------------------------------------------------------------

    def register_timers(self, timers) -> None:
        """Registers the handlers of the lifecycle's durable timers (at start-up)."""
        self.timers = timers
        timers.register(TIMER_OPEN, self._fire_open)
        timers.register(TIMER_EMPTY, self._fire_empty)
        timers.register(TIMER_OVERRUN, self._fire_overrun)
        timers.register(TIMER_RECONNECT, self._fire_reconnect)

    async def _schedule_open(self, uow, row: LiveSession, settings: SessionSettings) -> None:
        due = row.scheduled_start_time - (settings.join_window or DEFAULT_JOIN_WINDOW)
        # Keyed by due time: a moved start schedules a new timer; a stale one finds nothing to do.
        await self.timers.schedule(
            uow, TIMER_OPEN, f"{row.id}@{due.isoformat()}", due, {"s": row.id}
        )

    async def _load_for_change(self, uow, tenant_id: str, session_id: str) -> LiveSession:
        row = await repo.lock_live_session(uow.session, tenant_id, session_id)
        if row is None:
            raise _session_not_found(session_id)
        return row

    async def _authorize_change(
        self, session, principal: Principal, session_id: str, permission: int = 0
    ) -> SessionParticipant | None:
        """`session:write`, or a participant token of this session (or its parent) whose
        participant holds `permission` (none needed when 0). Returns the acting participant."""
        claims = principal.participant
        if claims is None:
            principal.require("session:write")
            return None
        await self._authorize_read(session, principal, session_id)
        actor = await repo.get_participant(session, principal.tenant_id, claims.participant_id)
        if actor is None or actor.state not in PRESENT:
            raise FailedPrecondition(
                "the participant is not in the session", reason="PARTICIPANT_NOT_CONNECTED"
            )
        if permission:
            row = await repo.get_live_session(session, principal.tenant_id, actor.session_id)
            settings = SessionSettings.from_json(row.settings) if row else SessionSettings()
            if permission not in effective_permissions(actor, settings):
                name = ev.ParticipantPermission.Name(permission)
                raise PermissionDenied(
                    f"this action needs the {name} permission",
                    reason="MISSING_PERMISSION",
                    metadata={"permission": name},
                )
        return actor

    async def _view(self, session, row: LiveSession) -> SessionView:
        instructors = await repo.session_instructors(session, row.tenant_id, [row.id])
        connected = await repo.count_participants(session, row.tenant_id, _main_id(row), IN_ROOM)
        waiting = await repo.count_participants(session, row.tenant_id, _main_id(row), (WAITING,))
        return SessionView(
            row,
            instructors[row.id],
            SessionSettings.from_json(row.settings),
            connected_count=connected,
            waiting_count=waiting,
        )

    async def update_session(
        self, principal: Principal, session_id: str, data: SessionInput, paths: list[str]
    ) -> SessionView:
        principal.require("session:write")
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            row = await self._load_for_change(uow, principal.tenant_id, session_id)
            refuse_closed(row)
            if "scheduled_start_time" in paths and row.state == LIVE:
                raise FailedPrecondition(
                    "the start of a live session cannot move", reason="SESSION_ALREADY_LIVE"
                )
            instructors = (await repo.session_instructors(uow.session, row.tenant_id, [row.id]))[
                row.id
            ]
            settings = SessionSettings.from_json(row.settings)
            current = SessionInput(
                title=row.title,
                class_id=row.class_id,
                course_id=row.course_id,
                instructor_identities=tuple(instructors),
                scheduled_start_time=row.scheduled_start_time,
                scheduled_end_time=row.scheduled_end_time,
                capacity=row.capacity,
                settings=settings,
                metadata=dict(row.labels),
            )
            changes: dict = {}
            new_settings = settings
            for path in paths:
                if path == "settings":
                    new_settings = data.settings
                elif path.startswith("settings."):
                    name = path.removeprefix("settings.")
                    new_settings = replace(new_settings, **{name: getattr(data.settings, name)})
                else:
                    changes[path] = getattr(data, path)
            tenant = await repo.get_tenant(uow.session, principal.tenant_id)
            new_settings = new_settings.with_defaults(
                TenantSettings.from_json(tenant.settings) if tenant else TenantSettings()
            )
            merged = replace(current, settings=new_settings, **changes)
            merged.validate()
            now = utcnow()
            row.title = merged.title.strip()
            row.class_id, row.course_id = merged.class_id, merged.course_id
            row.scheduled_start_time = merged.scheduled_start_time
            row.scheduled_end_time = merged.scheduled_end_time
            row.capacity = merged.capacity
            row.settings = new_settings.to_json()
            row.labels = dict(merged.metadata)
            row.update_time = now
            if "instructor_identities" in paths:
                await uow.session.execute(
                    SessionInstructor.__table__.delete().where(
                        SessionInstructor.session_id == row.id
                    )
                )
                for position, identity in enumerate(merged.instructor_identities):
                    uow.session.add(
                        SessionInstructor(
                            session_id=row.id,
                            identity=identity,
                            tenant_id=row.tenant_id,
                            position=position,
                        )
                    )
            if row.state == SCHEDULED and (
                "scheduled_start_time" in paths or any(p.startswith("settings") for p in paths)
            ):
                await self._schedule_open(uow, row, new_settings)
            if row.state == LIVE and (
                "scheduled_end_time" in paths or any(p.startswith("settings") for p in paths)
            ):
                await self._schedule_overrun(uow, row, new_settings)
            event = ev.SessionUpdated(title=row.title, capacity=row.capacity)
            event.update_mask.paths.extend(paths)
            event.scheduled_start_time.FromDatetime(row.scheduled_start_time)
            event.scheduled_end_time.FromDatetime(row.scheduled_end_time)
            uow.emit(event, session_id=row.id, occur_time=now)
            await uow.session.flush()
            return await self._view(uow.session, row)

    def _change_state(self, uow, row: LiveSession, state: int, now: datetime) -> None:
        previous = row.state
        row.state = state
        row.update_time = now
        if state == OPEN:
            row.open_time = now
        elif state == LIVE:
            row.live_time = now
        uow.emit(
            ev.SessionStateChanged(previous_state=previous, state=state),
            session_id=row.id,
            occur_time=now,
        )

    async def _schedule_overrun(self, uow, row: LiveSession, settings: SessionSettings) -> None:
        limit = settings.overrun_limit or timedelta(0)
        if limit > timedelta(0):
            due = row.scheduled_end_time + limit
            await self.timers.schedule(
                uow, TIMER_OVERRUN, f"{row.id}@{due.isoformat()}", due, {"s": row.id}
            )

    async def _go_live(self, uow, row: LiveSession, now: datetime) -> None:
        if row.state == SCHEDULED:
            self._change_state(uow, row, OPEN, now)
        if row.state == OPEN:
            self._change_state(uow, row, LIVE, now)
            settings = SessionSettings.from_json(row.settings)
            await self._schedule_overrun(uow, row, settings)
            await uow.session.flush()
            await self._maybe_empty(uow, row, now)

    async def start_session(self, principal: Principal, session_id: str) -> SessionView:
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            await self._authorize_change(uow.session, principal, session_id, MODERATE)
            row = await self._load_for_change(uow, principal.tenant_id, session_id)
            refuse_closed(row)
            await self._go_live(uow, row, utcnow())
            await uow.session.flush()
            return await self._view(uow.session, row)

    async def end_session(self, principal: Principal, session_id: str, message: str) -> SessionView:
        if len(message) > MAX_MESSAGE:
            raise InvalidArgument(
                FieldViolation("message", f"must be at most {MAX_MESSAGE} characters")
            )
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            await self._authorize_change(uow.session, principal, session_id, END_SESSION)
            row = await self._load_for_change(uow, principal.tenant_id, session_id)
            if row.state == CANCELLED:
                raise FailedPrecondition("the session was cancelled", reason="SESSION_CANCELLED")
            if row.state == SCHEDULED:
                raise FailedPrecondition(
                    "the session has not opened yet: cancel it instead", reason="SESSION_NOT_OPEN"
                )
            if row.state != ENDED:
                await self._end(uow, row, ev.SESSION_END_REASON_REQUESTED, message, utcnow())
            await uow.session.flush()
            return await self._view(uow.session, row)

    async def cancel_session(
        self, principal: Principal, session_id: str, reason: str
    ) -> SessionView:
        principal.require("session:write")
        if len(reason) > MAX_MESSAGE:
            raise InvalidArgument(
                FieldViolation("reason", f"must be at most {MAX_MESSAGE} characters")
            )
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            row = await self._load_for_change(uow, principal.tenant_id, session_id)
            if row.state == LIVE:
                raise FailedPrecondition(
                    "a live session cannot be cancelled: end it instead",
                    reason="SESSION_ALREADY_LIVE",
                )
            if row.state == ENDED:
                raise FailedPrecondition("the session has ended", reason="SESSION_ENDED")
            if row.state != CANCELLED:
                now = utcnow()
                # Announced first, so open connections close with the reason at once.
                uow.emit(ev.SessionCancelled(reason=reason), session_id=row.id, occur_time=now)
                for p in await repo.participants_list(
                    uow.session, row.tenant_id, row.id, states=PRESENT
                ):
                    await self._leave(uow, row, p, LR_SESSION_ENDED, now, check_empty=False)
                row.state = CANCELLED
                row.end_time = row.update_time = now
                row.end_message = reason
            await uow.session.flush()
            return await self._view(uow.session, row)

    async def _end(self, uow, row: LiveSession, reason: int, message: str, now: datetime) -> None:
        """Ends a session: SessionEnded first (connections close on it with its message), then
        everyone leaves with SESSION_ENDED, breakout rooms end, and attendance is final."""
        event = ev.SessionEnded(reason=reason, message=message)
        if row.live_time is not None:
            event.live_time.FromDatetime(row.live_time)
            event.live_duration.FromTimedelta(now - row.live_time)
        uow.emit(event, session_id=row.id, occur_time=now)
        row.state = ENDED
        row.end_time = row.update_time = now
        row.end_reason = reason
        row.end_message = message
        row.empty_since = None
        if row.parent_session_id is None:
            if self.classroom is not None:
                # Before everyone leaves, so closed polls count who was in the room.
                await self.classroom.on_session_ended(uow, row)
            for p in await repo.participants_list(
                uow.session, row.tenant_id, row.id, states=PRESENT
            ):
                await self._leave(uow, row, p, LR_SESSION_ENDED, now, check_empty=False)
            for child in await repo.child_sessions(uow.session, row.tenant_id, row.id):
                if child.state not in (ENDED, CANCELLED):
                    await self._end(uow, child, ev.SESSION_END_REASON_PARENT_ENDED, "", now)
            await uow.session.flush()
            intervals = await repo.attendance_intervals(uow.session, row.tenant_id, row.id)
            marks = _attendance(row, intervals)
            uow.emit(
                ev.AttendanceFinalized(
                    participant_count=len(marks),
                    late_count=sum(1 for m in marks.values() if m.late_by > timedelta(0)),
                    early_leave_count=sum(
                        1 for m in marks.values() if m.left_early_by > timedelta(0)
                    ),
                ),
                session_id=row.id,
                occur_time=now,
            )

    # Timer handlers ----------------------------------------------------------------------------

    async def _fire_open(self, timer, uow) -> None:
        row = await repo.lock_live_session(uow.session, timer.tenant_id, timer.payload["s"])
        if row is None or row.state != SCHEDULED:
            return
        settings = SessionSettings.from_json(row.settings)
        now = utcnow()
        if now >= row.scheduled_start_time - (settings.join_window or DEFAULT_JOIN_WINDOW):
            self._change_state(uow, row, OPEN, now)
        else:
            await self._schedule_open(uow, row, settings)

    async def _fire_empty(self, timer, uow) -> None:
        row = await repo.lock_live_session(uow.session, timer.tenant_id, timer.payload["s"])
        if row is None or row.state != LIVE or row.empty_since is None:
            return
        if row.empty_since.isoformat() != timer.payload["since"]:
            return  # someone came back since this timer was set
        if await repo.count_participants(uow.session, row.tenant_id, row.id, IN_ROOM):
            return
        await self._end(uow, row, ev.SESSION_END_REASON_EMPTY_ROOM_TIMEOUT, "", utcnow())

    async def _fire_overrun(self, timer, uow) -> None:
        row = await repo.lock_live_session(uow.session, timer.tenant_id, timer.payload["s"])
        if row is None or row.state != LIVE:
            return
        limit = SessionSettings.from_json(row.settings).overrun_limit or timedelta(0)
        if limit > timedelta(0) and utcnow() >= row.scheduled_end_time + limit:
            await self._end(uow, row, ev.SESSION_END_REASON_OVERRUN_LIMIT, "", utcnow())

    async def _fire_reconnect(self, timer, uow) -> None:
        p = await repo.get_participant(uow.session, timer.tenant_id, timer.payload["p"], lock=True)
        if p is None or p.state != RECONNECTING or p.resume_epoch != timer.payload["e"]:
            return
        row = await repo.lock_live_session(uow.session, timer.tenant_id, p.session_id)
        await self._leave(uow, row, p, LR_CONNECTION_LOST, utcnow())

    # Participants: presence changes (called by domain/presence) --------------------------------

    async def _maybe_empty(self, uow, row: LiveSession, now: datetime) -> None:
        """Starts the empty-room countdown when a live room has nobody in it."""
        if row.state != LIVE or row.empty_since is not None or row.parent_session_id:
            return
        await uow.session.flush()
        if await repo.count_participants(uow.session, row.tenant_id, row.id, IN_ROOM):
            return
        row.empty_since = now
        timeout = SessionSettings.from_json(row.settings).empty_room_timeout
        due = now + (timeout or DEFAULT_EMPTY_ROOM_TIMEOUT)
        await self.timers.schedule(
            uow,
            TIMER_EMPTY,
            f"{row.id}@{now.isoformat()}",
            due,
            {"s": row.id, "since": now.isoformat()},
        )

    async def _enter(self, uow, row: LiveSession, p: SessionParticipant, now: datetime) -> None:
        """Puts a participant in the main room: attendance opens, the empty-room clock stops."""
        rejoined = p.first_join_time is not None
        p.state = CONNECTED
        p.room_session_id = row.id
        p.first_join_time = p.first_join_time or now
        p.join_time = now
        p.leave_time = None
        p.leave_reason = 0
        row.empty_since = None
        uow.session.add(
            AttendanceInterval(
                id=new_id("att"),
                tenant_id=row.tenant_id,
                session_id=row.id,
                participant_id=p.id,
                room_session_id=row.id,
                role=p.role,
                join_time=now,
                leave_time=None,
                leave_reason=0,
            )
        )
        uow.emit(
            ev.ParticipantJoined(
                participant_id=p.id,
                identity=p.identity,
                display_name=p.display_name,
                role=p.role,
                rejoined=rejoined,
            ),
            session_id=row.id,
            occur_time=now,
        )

    async def _close_interval(self, uow, p: SessionParticipant, reason: int, now: datetime):
        interval = await repo.open_interval(uow.session, p.tenant_id, p.id)
        if interval is None:
            return None
        interval.leave_time = now
        interval.leave_reason = reason
        event = ev.AttendanceIntervalRecorded(
            participant_id=p.id, identity=p.identity, role=interval.role, leave_reason=reason
        )
        event.join_time.FromDatetime(interval.join_time)
        event.leave_time.FromDatetime(now)
        uow.emit(event, session_id=interval.room_session_id, occur_time=now)
        return interval

    async def _leave(
        self,
        uow,
        row: LiveSession,
        p: SessionParticipant,
        reason: int,
        now: datetime,
        *,
        check_empty: bool = True,
    ) -> None:
        room = p.room_session_id or row.id
        uow.emit(
            ev.ParticipantLeft(participant_id=p.id, identity=p.identity, reason=reason),
            session_id=room,
            occur_time=now,
        )
        await self._close_interval(uow, p, reason, now)
        p.state = LEFT
        p.leave_time = now
        p.leave_reason = reason
        p.disconnect_time = None
        p.resume_deadline = None
        p.connection_token_id = None
        if check_empty:
            await self._maybe_empty(uow, row, now)

    async def participant_for_join(self, principal: Principal) -> SessionParticipant | None:
        claims = principal.participant
        async with self.db.reader() as session:
            return await repo.get_participant(session, principal.tenant_id, claims.participant_id)

    async def join(self, principal: Principal, resume_token: str, replayed: int = 0) -> JoinResult:
        """Joins or resumes the token's participant, in one unit of work that also settles
        duplicates, capacity, the lock, the waiting room and the session going live."""
        claims = principal.participant
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            row = await self._load_for_change(uow, principal.tenant_id, claims.session_id)
            if row.state == SCHEDULED:
                raise FailedPrecondition(
                    "the session's join window has not opened yet", reason="SESSION_NOT_OPEN"
                )
            refuse_closed(row)
            p = await repo.get_participant(
                uow.session, principal.tenant_id, claims.participant_id, lock=True
            )
            if p is None:
                raise Unauthenticated("participant token rejected", reason="TOKEN_INVALID")
            if p.rejoin_blocked:
                raise PermissionDenied(
                    "this identity was removed and may not rejoin", reason="IDENTITY_BLOCKED"
                )
            settings = SessionSettings.from_json(row.settings)
            grace = settings.reconnect_grace or timedelta(seconds=20)
            now = utcnow()
            resumed = False
            disconnected_for = timedelta(0)
            if resume_token and _resume_epoch(p, resume_token) == p.resume_epoch:
                if p.state == CONNECTED or (
                    p.state == RECONNECTING
                    and p.resume_deadline is not None
                    and now <= p.resume_deadline
                ):
                    resumed = True
            if resumed:
                if p.state == RECONNECTING:
                    disconnected_for = now - (p.disconnect_time or now)
                    p.reconnect_count += 1
                p.state = CONNECTED
                event = ev.ParticipantResumed(
                    participant_id=p.id, identity=p.identity, replayed_push_count=replayed
                )
                event.disconnected_duration.FromTimedelta(disconnected_for)
                uow.emit(event, session_id=p.room_session_id or row.id, occur_time=now)
                waiting = False
            else:
                if p.state in PRESENT:
                    # A second connection of the same identity replaces the first.
                    await self._leave(uow, row, p, LR_DUPLICATE_IDENTITY, now, check_empty=False)
                if row.room_locked and p.first_join_time is None:
                    raise FailedPrecondition("the room is locked", reason="ROOM_LOCKED")
                if claims.role != p.role:
                    previous, p.role = p.role, claims.role
                    uow.emit(
                        ev.ParticipantRoleChanged(
                            participant_id=p.id,
                            identity=p.identity,
                            previous_role=previous,
                            role=p.role,
                            permissions=effective_permissions(p, settings),
                        ),
                        session_id=row.id,
                        occur_time=now,
                    )
                p.display_name = claims.display_name or p.display_name
                if claims.permissions.get("grant") or claims.permissions.get("revoke"):
                    p.permission_overrides = dict(claims.permissions)
                if p.role == GUARDIAN:
                    p.permission_overrides = _with_wards(
                        p.permission_overrides, claims.permissions.get(GUARDIAN_OF, ())
                    )
                host = p.role in HOSTS
                await uow.session.flush()
                if not host and row.capacity:
                    count = await repo.count_participants(
                        uow.session, row.tenant_id, row.id, IN_ROOM
                    )
                    if count >= row.capacity:
                        raise ResourceExhausted("the session is full", reason="SESSION_FULL")
                held = (
                    not host
                    and not settings.learners_join_before_instructor
                    and not (
                        await repo.instructor_has_joined(uow.session, row.tenant_id, row.id, HOSTS)
                    )
                )
                waiting = not host and (settings.waiting_room or held)
                if waiting:
                    p.state = WAITING
                    p.room_session_id = row.id
                    p.held_for_instructor = held and not settings.waiting_room
                    uow.emit(
                        ev.ParticipantWaiting(
                            participant_id=p.id,
                            identity=p.identity,
                            display_name=p.display_name,
                            role=p.role,
                        ),
                        session_id=row.id,
                        occur_time=now,
                    )
                else:
                    await self._enter(uow, row, p, now)
                    if host:
                        await self._go_live(uow, row, now)
                        await self._admit_held(uow, row, now)
            p.resume_epoch += 1
            p.resume_key = p.resume_key or secrets.token_hex(32)
            p.disconnect_time = None
            p.resume_deadline = None
            p.connection_token_id = claims.token_id
            await uow.session.flush()
            view = await self._view(uow.session, row)
            epoch = p.resume_epoch
        cursor = uow.committed[-1].sequence if uow.committed else 0
        return JoinResult(
            participant=p,
            session=view,
            resumed=resumed,
            resume_token=_resume_token(p, epoch),
            grace=grace,
            waiting=waiting,
            cursor=cursor,
            epoch=epoch,
        )

    async def _admit_held(self, uow, row: LiveSession, now: datetime) -> None:
        """The first instructor is in: learners held only for that enter, as far as they fit."""
        held = [
            p
            for p in await repo.participants_list(
                uow.session, row.tenant_id, row.id, states=(WAITING,)
            )
            if p.held_for_instructor
        ]
        for p in held:
            if row.capacity:
                await uow.session.flush()
                count = await repo.count_participants(uow.session, row.tenant_id, row.id, IN_ROOM)
                if count >= row.capacity:
                    break
            await self._admit_one(uow, row, p, now)

    async def _admit_one(self, uow, row: LiveSession, p: SessionParticipant, now: datetime) -> None:
        p.held_for_instructor = False
        uow.emit(
            ev.ParticipantAdmitted(participant_id=p.id, identity=p.identity),
            session_id=row.id,
            occur_time=now,
        )
        await self._enter(uow, row, p, now)

    async def drop(self, tenant_id: str, participant_id: str, epoch: int) -> None:
        """The connection of `epoch` dropped without a leave: the participant is reconnecting
        for the grace window (a waiting one simply leaves). A newer connection wins."""
        async with self.uow(tenant_id, system_actor("presence")) as uow:
            p = await repo.get_participant(uow.session, tenant_id, participant_id, lock=True)
            if p is None or p.resume_epoch != epoch or p.state not in (CONNECTED, WAITING):
                return
            row = await repo.lock_live_session(uow.session, tenant_id, p.session_id)
            now = utcnow()
            if p.state == WAITING:
                await self._leave(uow, row, p, LR_CONNECTION_LOST, now)
                return
            await self._mark_reconnecting(uow, row, p, now)

    async def _mark_reconnecting(self, uow, row, p: SessionParticipant, now: datetime) -> None:
        grace = SessionSettings.from_json(row.settings).reconnect_grace or timedelta(seconds=20)
        p.state = RECONNECTING
        p.disconnect_time = now
        p.resume_deadline = now + grace
        event = ev.ParticipantReconnecting(participant_id=p.id, identity=p.identity)
        event.resume_deadline_time.FromDatetime(p.resume_deadline)
        uow.emit(event, session_id=p.room_session_id or row.id, occur_time=now)
        await self.timers.schedule(
            uow,
            TIMER_RECONNECT,
            f"{p.id}#{p.resume_epoch}",
            p.resume_deadline,
            {"p": p.id, "e": p.resume_epoch},
        )

    async def leave(self, principal: Principal, epoch: int) -> None:
        claims = principal.participant
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            p = await repo.get_participant(
                uow.session, principal.tenant_id, claims.participant_id, lock=True
            )
            if p is None or p.resume_epoch != epoch or p.state not in PRESENT:
                return
            row = await repo.lock_live_session(uow.session, principal.tenant_id, p.session_id)
            await self._leave(uow, row, p, LR_LEFT, utcnow())

    async def recover_connections(self) -> int:
        """After a restart, participants the database still shows connected have no connection
        (on a single replica): they become reconnecting, so they can resume within the grace
        window, or leave with CONNECTION_LOST when it ends."""
        async with self.db.reader() as session:
            rows = await repo.participants_in_states(session, (CONNECTED, WAITING))
        for p in rows:
            await self.drop(p.tenant_id, p.id, p.resume_epoch)
        return len(rows)

    async def record_move(
        self, tenant_id: str, participant_id: str, to_session_id: str, reason: int
    ) -> None:
        """Attendance of a move between rooms (breakouts): the interval in the old room closes
        with `reason` and one opens in the new room. Idempotent per move."""
        async with self.uow(tenant_id, system_actor("presence")) as uow:
            p = await repo.get_participant(uow.session, tenant_id, participant_id, lock=True)
            if p is None or p.state not in IN_ROOM:
                return
            interval = await repo.open_interval(uow.session, tenant_id, participant_id)
            if interval is not None and interval.room_session_id == to_session_id:
                return
            now = utcnow()
            from_room = p.room_session_id or p.session_id
            uow.emit(
                ev.ParticipantLeft(
                    participant_id=p.id,
                    identity=p.identity,
                    reason=reason,
                    moved_to_session_id=to_session_id,
                ),
                session_id=from_room,
                occur_time=now,
            )
            uow.emit(
                ev.ParticipantJoined(
                    participant_id=p.id,
                    identity=p.identity,
                    display_name=p.display_name,
                    role=p.role,
                    rejoined=True,
                ),
                session_id=to_session_id,
                occur_time=now,
            )
            await self._close_interval(uow, p, reason, now)
            p.room_session_id = to_session_id
            uow.session.add(
                AttendanceInterval(
                    id=new_id("att"),
                    tenant_id=tenant_id,
                    session_id=p.session_id,
                    participant_id=p.id,
                    room_session_id=to_session_id,
                    role=p.role,
                    join_time=now,
                    leave_time=None,
                    leave_reason=0,
                )
            )

    async def snapshot_rows(
        self, tenant_id: str, room_session_id: str, main_session_id: str
    ) -> tuple[SessionView, list[SessionParticipant], int]:
        """A room as stored now: the session, its participants and its last session sequence."""
        async with self.db.reader() as session:
            row = await repo.get_live_session(session, tenant_id, room_session_id)
            if row is None:
                raise _session_not_found(room_session_id)
            view = await self._view(session, row)
            people = await repo.participants_list(
                session, tenant_id, main_session_id, states=PRESENT
            )
            people = [p for p in people if (p.room_session_id or main_session_id) == row.id]
            sequence = await event_store.last_sequence(session, tenant_id, row.id)
        return view, people, sequence

    # Moderation --------------------------------------------------------------------------------

    async def admit(
        self, principal: Principal, session_id: str, participant_id: str | None
    ) -> list[ParticipantView]:
        """Admits one waiting participant, or everyone waiting when participant_id is None."""
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            await self._authorize_change(uow.session, principal, session_id, MODERATE)
            row = await self._load_for_change(uow, principal.tenant_id, session_id)
            if row.state == ENDED:
                raise FailedPrecondition("the session has ended", reason="SESSION_ENDED")
            refuse_closed(row)
            if participant_id is not None:
                p = await self._participant_in(uow.session, row, participant_id, lock=True)
                if p.state in IN_ROOM:
                    return [self._pview(p, row)]
                if p.state != WAITING:
                    raise FailedPrecondition(
                        "the participant is not waiting", reason="PARTICIPANT_NOT_WAITING"
                    )
                targets = [p]
            else:
                targets = await repo.participants_list(
                    uow.session, row.tenant_id, row.id, states=(WAITING,)
                )
            now = utcnow()
            admitted = []
            for p in targets:
                if row.capacity:
                    await uow.session.flush()
                    count = await repo.count_participants(
                        uow.session, row.tenant_id, row.id, IN_ROOM
                    )
                    if count >= row.capacity:
                        if participant_id is not None:
                            raise ResourceExhausted("the session is full", reason="SESSION_FULL")
                        break
                await self._admit_one(uow, row, p, now)
                admitted.append(p)
            return [self._pview(p, row) for p in admitted]

    async def deny(
        self, principal: Principal, session_id: str, participant_id: str, message: str
    ) -> ParticipantView:
        _check_message(message)
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            await self._authorize_change(uow.session, principal, session_id, MODERATE)
            row = await self._load_for_change(uow, principal.tenant_id, session_id)
            p = await self._participant_in(uow.session, row, participant_id, lock=True)
            if p.state != WAITING:
                raise FailedPrecondition(
                    "the participant is not waiting", reason="PARTICIPANT_NOT_WAITING"
                )
            now = utcnow()
            uow.emit(
                ev.ParticipantDenied(participant_id=p.id, identity=p.identity, message=message),
                session_id=row.id,
                occur_time=now,
            )
            await self._leave(uow, row, p, LR_DENIED, now)
            return self._pview(p, row)

    async def remove(
        self,
        principal: Principal,
        session_id: str,
        participant_id: str,
        message: str,
        block_rejoin: bool,
    ) -> ParticipantView:
        _check_message(message)
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            actor = await self._authorize_change(uow.session, principal, session_id, MODERATE)
            row = await self._load_for_change(uow, principal.tenant_id, session_id)
            p = await self._participant_in(uow.session, row, participant_id, lock=True)
            if actor is not None and p.role == INSTRUCTOR:
                raise PermissionDenied(
                    "a participant cannot remove an instructor",
                    reason="MISSING_PERMISSION",
                    metadata={"permission": "PARTICIPANT_PERMISSION_MODERATE"},
                )
            now = utcnow()
            uow.emit(
                ev.ParticipantRemoved(
                    participant_id=p.id,
                    identity=p.identity,
                    message=message,
                    rejoin_blocked=block_rejoin,
                ),
                session_id=p.room_session_id or row.id,
                occur_time=now,
            )
            p.removed = True
            p.rejoin_blocked = p.rejoin_blocked or block_rejoin
            # The old tokens can never rejoin; only a new token (unless blocked) can.
            for token in await repo.live_join_tokens(uow.session, row.tenant_id, p.id):
                token.revoke_time = now
                uow.emit(
                    ev.JoinTokenRevoked(token_id=token.id, participant_id=p.id),
                    session_id=row.id,
                    occur_time=now,
                )
            if p.state in PRESENT:
                await self._leave(uow, row, p, LR_REMOVED, now)
            else:
                p.leave_reason = LR_REMOVED
            return self._pview(p, row)

    async def mute(
        self,
        principal: Principal,
        session_id: str,
        participant_id: str | None,
        sources: tuple[int, ...],
    ) -> list:
        """Mutes a participant's (or every learner's) tracks. Tracks arrive with the media
        plane; until then there are none to mute, but the moderation is recorded."""
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            await self._authorize_change(uow.session, principal, session_id, MODERATE)
            row = await repo.get_live_session(uow.session, principal.tenant_id, session_id)
            if row is None:
                raise _session_not_found(session_id)
            if row.state != LIVE:
                raise FailedPrecondition("the session is not live", reason="SESSION_NOT_LIVE")
            main = await repo.get_live_session(uow.session, row.tenant_id, _main_id(row))
            if participant_id is not None:
                targets = [await self._participant_in(uow.session, main, participant_id)]
            else:
                targets = [
                    p
                    for p in await repo.participants_list(
                        uow.session, row.tenant_id, main.id, states=IN_ROOM, roles=(LEARNER,)
                    )
                    if (p.room_session_id or main.id) == row.id
                ]
            sources = sources or (common_pb2.TRACK_SOURCE_MICROPHONE,)
            for p in targets:
                uow.emit(
                    ev.ParticipantMuted(
                        participant_id=p.id, identity=p.identity, sources=list(sources)
                    ),
                    session_id=row.id,
                )
            return []

    async def set_room_lock(
        self, principal: Principal, session_id: str, locked: bool, message: str
    ) -> SessionView:
        _check_message(message)
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            await self._authorize_change(uow.session, principal, session_id, MODERATE)
            row = await self._load_for_change(uow, principal.tenant_id, session_id)
            refuse_closed(row)
            if row.room_locked != locked:
                row.room_locked = locked
                row.update_time = utcnow()
                event = (
                    ev.RoomLocked(message=message) if locked else ev.RoomUnlocked(message=message)
                )
                uow.emit(event, session_id=row.id)
            await uow.session.flush()
            return await self._view(uow.session, row)

    async def update_participant(
        self,
        principal: Principal,
        session_id: str,
        participant_id: str,
        paths: list[str],
        role: int | None,
        overrides: PermissionOverrides | None,
        display_name: str | None,
        metadata: dict | None,
    ) -> ParticipantView:
        problems = Violations()
        if "role" in paths and role not in ROLES:
            problems.add("participant.role", "must be a participant role")
        if role == GUARDIAN:
            problems.add("participant.role", "guardians are only admitted by their own token")
        if "permission_overrides" in paths and overrides is not None:
            overrides.validate(problems, "participant.permission_overrides")
        if "display_name" in paths:
            name = (display_name or "").strip()
            if not name or len(name) > MAX_DISPLAY_NAME:
                problems.add("participant.display_name", "must be 1 to 100 characters")
        if "metadata" in paths:
            _metadata(problems, "participant.metadata", metadata or {}, MAX_TOKEN_METADATA)
        problems.raise_if_any()
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            actor = await self._authorize_change(uow.session, principal, session_id, MODERATE)
            row = await self._load_for_change(uow, principal.tenant_id, session_id)
            refuse_closed(row)
            p = await self._participant_in(uow.session, row, participant_id, lock=True)
            settings = SessionSettings.from_json(row.settings)
            if actor is not None:
                if p.role == INSTRUCTOR and p.id != actor.id:
                    raise PermissionDenied(
                        "a participant cannot change an instructor",
                        reason="MISSING_PERMISSION",
                        metadata={"permission": "PARTICIPANT_PERMISSION_MODERATE"},
                    )
                own = set(effective_permissions(actor, settings))
                granted = set(overrides.grant) if overrides else set()
                if "role" in paths:
                    granted |= set(_role_permissions(role, settings))
                if granted - own:
                    name = ev.ParticipantPermission.Name(min(granted - own))
                    raise PermissionDenied(
                        "a moderator may not grant a permission it lacks",
                        reason="MISSING_PERMISSION",
                        metadata={"permission": name},
                    )
            now = utcnow()
            if "display_name" in paths:
                p.display_name = display_name.strip()
            if "metadata" in paths:
                p.labels = dict(metadata or {})
            if "role" in paths and role != p.role:
                previous, p.role = p.role, role
                uow.emit(
                    ev.ParticipantRoleChanged(
                        participant_id=p.id,
                        identity=p.identity,
                        previous_role=previous,
                        role=role,
                        permissions=effective_permissions(p, settings),
                    ),
                    session_id=p.room_session_id or row.id,
                    occur_time=now,
                )
            if "permission_overrides" in paths:
                p.permission_overrides = _with_wards(
                    (overrides or PermissionOverrides()).to_json(), guardian_of(p)
                )
                uow.emit(
                    ev.ParticipantPermissionsChanged(
                        participant_id=p.id,
                        identity=p.identity,
                        permissions=effective_permissions(p, settings),
                    ),
                    session_id=p.room_session_id or row.id,
                    occur_time=now,
                )
            return self._pview(p, row)

    # Reads -------------------------------------------------------------------------------------

    async def _participant_in(
        self, session, row: LiveSession, participant_id: str, *, lock: bool = False
    ) -> SessionParticipant:
        p = await repo.get_participant(session, row.tenant_id, participant_id, lock=lock)
        if p is None or p.session_id != _main_id(row):
            raise NotFound(
                f"participant {participant_id!r} not found", reason="PARTICIPANT_NOT_FOUND"
            )
        return p

    @staticmethod
    def _pview(p: SessionParticipant, row: LiveSession) -> ParticipantView:
        return ParticipantView(
            p, tuple(effective_permissions(p, SessionSettings.from_json(row.settings)))
        )

    async def get_participant(
        self, principal: Principal, session_id: str, participant_id: str
    ) -> ParticipantView:
        async with self.db.reader() as session:
            await self._authorize_read(session, principal, session_id)
            row = await repo.get_live_session(session, principal.tenant_id, session_id)
            if row is None:
                raise _session_not_found(session_id)
            p = await self._participant_in(session, row, participant_id)
            return self._pview(p, row)

    async def list_participants(
        self,
        principal: Principal,
        session_id: str,
        states: tuple[int, ...],
        roles: tuple[int, ...],
        room_session_id: str,
        size: int,
        token: str,
    ) -> tuple[list[ParticipantView], str]:
        problems = Violations()
        for i, state in enumerate(states):
            if state not in (INVITED, WAITING, CONNECTED, RECONNECTING, LEFT):
                problems.add(f"states[{i}]", "not a participant state")
        for i, role in enumerate(roles):
            if role not in ROLES:
                problems.add(f"roles[{i}]", "not a participant role")
        problems.raise_if_any()
        limit = paging.page_size(size)
        fingerprint = {
            "s": session_id,
            "st": sorted(states),
            "r": sorted(roles),
            "room": room_session_id,
        }
        after = paging.decode(token, fingerprint)
        async with self.db.reader() as session:
            await self._authorize_read(session, principal, session_id)
            row = await repo.get_live_session(session, principal.tenant_id, session_id)
            if row is None:
                raise _session_not_found(session_id)
            if principal.participant is not None:
                me = await repo.get_participant(
                    session, principal.tenant_id, principal.participant.participant_id
                )
                settings = SessionSettings.from_json(row.settings)
                if me is None or MODERATE not in effective_permissions(me, settings):
                    allowed = (CONNECTED, RECONNECTING, LEFT)
                    states = tuple(s for s in states if s in allowed) if states else allowed
                    if not states:
                        return [], ""
            query = repo.participants(
                principal.tenant_id,
                _main_id(row),
                states=states,
                roles=roles,
                room_session_id=room_session_id,
            )
            # First-join order with invited participants (no join yet) last.
            key = repo.first_join_key(NEVER)
            rows = await repo.page(session, query, key, SessionParticipant.id, limit, after)
        next_token = ""
        if len(rows) == limit:
            last = rows[-1]
            next_token = paging.encode(last.first_join_time or NEVER, last.id, fingerprint)
        return [self._pview(p, row) for p in rows], next_token

    async def get_attendance(self, principal: Principal, session_id: str) -> AttendanceView:
        principal.require("session:read")
        async with self.db.reader() as session:
            row = await repo.get_live_session(session, principal.tenant_id, session_id)
            if row is None:
                raise _session_not_found(session_id)
            intervals = await repo.attendance_intervals(session, row.tenant_id, row.id)
            people = {p.id: p for p in await repo.participants_list(session, row.tenant_id, row.id)}
        marks = _attendance(row, intervals)
        entries = []
        for participant_id, mark in marks.items():
            p = people.get(participant_id)
            if p is None:
                continue
            entries.append(replace(mark, participant=p))
        entries.sort(key=lambda m: (m.intervals[0].join_time, m.participant.id))
        return AttendanceView(row.id, row.state in (ENDED, CANCELLED), entries)


# Participant states (session.v1 ParticipantState numbers, frozen by the v1 contract).
INVITED, WAITING, CONNECTED, RECONNECTING, LEFT = 1, 2, 3, 4, 5
IN_ROOM = (CONNECTED, RECONNECTING)
PRESENT = (WAITING, CONNECTED, RECONNECTING)
INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_INSTRUCTOR
CO_INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_CO_INSTRUCTOR
LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER
OBSERVER = common_pb2.PARTICIPANT_ROLE_OBSERVER
HOSTS = (INSTRUCTOR, CO_INSTRUCTOR)
LR_LEFT = common_pb2.LEAVE_REASON_LEFT
LR_CONNECTION_LOST = common_pb2.LEAVE_REASON_CONNECTION_LOST
LR_DUPLICATE_IDENTITY = common_pb2.LEAVE_REASON_DUPLICATE_IDENTITY
LR_REMOVED = common_pb2.LEAVE_REASON_REMOVED
LR_SESSION_ENDED = common_pb2.LEAVE_REASON_SESSION_ENDED
LR_MOVED = common_pb2.LEAVE_REASON_MOVED
LR_DENIED = common_pb2.LEAVE_REASON_DENIED
MODERATE = ev.PARTICIPANT_PERMISSION_MODERATE
END_SESSION = ev.PARTICIPANT_PERMISSION_END_SESSION
MAX_MESSAGE = 500
NEVER = datetime(9999, 1, 1, tzinfo=UTC)

TIMER_OPEN = "session.open"
TIMER_EMPTY = "session.empty_room"
TIMER_OVERRUN = "session.overrun"
TIMER_RECONNECT = "session.reconnect_grace"

_LEARNER_DEFAULTS = frozenset(
    {
        ev.PARTICIPANT_PERMISSION_PUBLISH_AUDIO,
        ev.PARTICIPANT_PERMISSION_PUBLISH_VIDEO,
        ev.PARTICIPANT_PERMISSION_CHAT,
        ev.PARTICIPANT_PERMISSION_REACT,
        ev.PARTICIPANT_PERMISSION_RAISE_HAND,
        ev.PARTICIPANT_PERMISSION_ANSWER_POLLS,
    }
)
ROLE_DEFAULTS: dict[int, frozenset[int]] = {
    INSTRUCTOR: PERMISSIONS,
    CO_INSTRUCTOR: PERMISSIONS - {END_SESSION},
    LEARNER: _LEARNER_DEFAULTS,
    # Observers watch: they may react, nothing that reaches the room's content. Guardians are
    # outsiders to the class and observe only: not even a reaction shows them to the room.
    OBSERVER: frozenset({ev.PARTICIPANT_PERMISSION_REACT}),
    GUARDIAN: frozenset(),
}

# The wards of a guardian participant, kept next to its own overrides (grant/revoke, which every
# reader of that JSON picks by key) until participants have a column of their own for them.
GUARDIAN_OF = "guardian_of"


def guardian_of(p: SessionParticipant) -> tuple[str, ...]:
    """The identities of the learners a guardian participant observes (empty for others)."""
    if p.role != GUARDIAN:
        return ()
    return tuple((p.permission_overrides or {}).get(GUARDIAN_OF, ()))


def _with_wards(overrides: dict | None, wards) -> dict | None:
    data = {k: v for k, v in (overrides or {}).items() if k != GUARDIAN_OF}
    if wards:
        data[GUARDIAN_OF] = list(wards)
    return data or None


async def _roster_person(session, tenant_id: str, identity: str) -> RosterPerson | None:
    """The active roster person an identity names (see _check_guardianship)."""
    person = await roster_repo.get(session, RosterPerson, tenant_id, identity)
    if person is None:
        person = await roster_repo.by_external_id(session, RosterPerson, tenant_id, identity)
    if person is None or person.delete_time is not None:
        return None
    return person if person.state == roster_pb.RECORD_STATE_ACTIVE else None


def _role_permissions(role: int, settings: SessionSettings) -> set[int]:
    perms = set(ROLE_DEFAULTS.get(role, frozenset()))
    for item in settings.role_permissions:
        if item.role == role:
            perms |= set(item.overrides.grant)
            perms -= set(item.overrides.revoke)
    return perms


def effective_permissions(p: SessionParticipant, settings: SessionSettings) -> list[int]:
    """The role's defaults, then the session's per-role changes, then the participant's own."""
    perms = _role_permissions(p.role, settings)
    own = PermissionOverrides.from_json(p.permission_overrides or {})
    perms |= set(own.grant)
    perms -= set(own.revoke)
    return sorted(perms)


def _main_id(row: LiveSession) -> str:
    return row.parent_session_id or row.id


def _check_message(message: str) -> None:
    if len(message) > MAX_MESSAGE:
        raise InvalidArgument(
            FieldViolation("message", f"must be at most {MAX_MESSAGE} characters")
        )


def _resume_token(p: SessionParticipant, epoch: int) -> str:
    mac = hmac.new(bytes.fromhex(p.resume_key), f"{p.id}:{epoch}".encode(), hashlib.sha256)
    raw = f"{p.id}:{epoch}:{mac.hexdigest()}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _resume_epoch(p: SessionParticipant, token: str) -> int:
    """The epoch a resume token was issued for; a forged token is RESUME_TOKEN_INVALID."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        participant_id, epoch, mac = raw.split(":")
        epoch_number = int(epoch)
    except Exception:
        participant_id, epoch_number, mac = "", -1, ""
    if participant_id == p.id and p.resume_key:
        expected = hmac.new(
            bytes.fromhex(p.resume_key), f"{p.id}:{epoch_number}".encode(), hashlib.sha256
        ).hexdigest()
        if hmac.compare_digest(expected, mac):
            return epoch_number
    raise InvalidArgument(
        FieldViolation("join.resume_token", "is not a resume token of this participant"),
        reason="RESUME_TOKEN_INVALID",
    )


@dataclass
class ParticipantView:
    participant: SessionParticipant
    permissions: tuple[int, ...]


@dataclass
class JoinResult:
    participant: SessionParticipant
    session: SessionView
    resumed: bool
    resume_token: str
    grace: timedelta
    waiting: bool
    # The tenant sequence of the join's own last event: pushes continue after it.
    cursor: int
    epoch: int


@dataclass
class AttendanceMark:
    participant: SessionParticipant | None
    intervals: list[AttendanceInterval]
    total: timedelta
    late_by: timedelta
    left_early_by: timedelta
    reconnect_count: int = 0


@dataclass
class AttendanceView:
    session_id: str
    finalized: bool
    participants: list[AttendanceMark]


def _attendance(row: LiveSession, intervals: list[AttendanceInterval]) -> dict[str, AttendanceMark]:
    """Per participant: intervals, total time with overlaps merged, late and early-leave marks."""
    now = utcnow()
    by_participant: dict[str, list[AttendanceInterval]] = {}
    for interval in intervals:
        by_participant.setdefault(interval.participant_id, []).append(interval)
    marks = {}
    for participant_id, items in by_participant.items():
        items.sort(key=lambda i: i.join_time)
        total = timedelta(0)
        start = end = None
        for item in items:
            leave = item.leave_time or row.end_time or now
            if start is None or item.join_time > end:
                if start is not None:
                    total += end - start
                start, end = item.join_time, leave
            else:
                end = max(end, leave)
        if start is not None:
            total += end - start
        first = items[0].join_time
        late_by = max(timedelta(0), first - row.scheduled_start_time)
        last_leave = (
            None if any(i.leave_time is None for i in items) else max(i.leave_time for i in items)
        )
        left_early_by = timedelta(0)
        if last_leave is not None and last_leave < row.scheduled_end_time:
            if row.end_time is None or last_leave < row.end_time:
                left_early_by = row.scheduled_end_time - last_leave
        marks[participant_id] = AttendanceMark(None, items, total, late_by, left_early_by)
    return marks
