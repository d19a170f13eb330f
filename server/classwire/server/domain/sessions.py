"""Live sessions, the part the platform core needs: create, read and list sessions, and issue
and revoke participant join tokens.

The lifecycle after creation (open, live, end, cancel), the participant connection and the
classroom interactions belong to the live-classroom capability and build on these rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import session_events_pb2 as ev

from ..events.outbox import UnitOfWorkFactory
from ..store import repositories as repo
from ..store.engine import Database
from ..store.models import JoinToken, LiveSession, SessionInstructor
from ..store.types import utcnow
from . import paging, tokens
from .auth import ParticipantClaims, Principal
from .errors import FailedPrecondition, NotFound, Unauthenticated, Violations
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

DEFAULT_JOIN_WINDOW = timedelta(minutes=10)
DEFAULT_EMPTY_ROOM_TIMEOUT = timedelta(minutes=5)
MAX_JOIN_WINDOW = timedelta(days=7)
EMPTY_ROOM_TIMEOUT_RANGE = (timedelta(seconds=10), timedelta(hours=24))
RECONNECT_GRACE_RANGE = (timedelta(seconds=1), timedelta(minutes=5))
MAX_OVERRUN_LIMIT = timedelta(hours=24)

SCHEDULED = common_pb2.SESSION_STATE_SCHEDULED
OPEN = common_pb2.SESSION_STATE_OPEN
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
            "10 s and 24 h",
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
            if not self.guardian_of_identities:
                problems.add("guardian_of_identities", "is required for guardians")
            for i, identity in enumerate(self.guardian_of_identities):
                _identity(problems, f"guardian_of_identities[{i}]", identity)
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
        self, db: Database, uow: UnitOfWorkFactory, platform: PlatformDomain, issuer: str
    ) -> None:
        self.db = db
        self.uow = uow
        self.platform = platform
        self.issuer = issuer

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
            instructors = await repo.session_instructors(session, principal.tenant_id, [row.id])
        return SessionView(row, instructors[row.id], SessionSettings.from_json(row.settings))

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
            if data.role == GUARDIAN:
                # Guardianship lives in the roster, which has no wards yet in this release, so no
                # guardian can be matched to a learner: refused as the contract says, not guessed.
                raise FailedPrecondition(
                    "no guardianship links the guardian to these learners",
                    reason="GUARDIANSHIP_NOT_FOUND",
                )
            tenant = await repo.get_tenant(uow.session, principal.tenant_id)
            tenant_settings = (
                TenantSettings.from_json(tenant.settings) if tenant else TenantSettings()
            )
            ttl = data.ttl or tenant_settings.default_join_token_ttl
            now = utcnow()
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
            claims = ParticipantClaims(
                session_id=row.id,
                participant_id=participant.id,
                identity=data.identity,
                role=data.role,
                display_name=data.display_name.strip(),
                token_id=str(uuid.uuid4()),
                permissions=data.permission_overrides.to_json(),
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
                    permission_overrides=data.permission_overrides.to_json(),
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
                token.revoke_time = utcnow()
                uow.emit(
                    ev.JoinTokenRevoked(token_id=token.id, participant_id=token.participant_id),
                    session_id=session_id,
                )
