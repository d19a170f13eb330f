"""The roster: people and their roles, guardianship, organisations, academic sessions, courses,
classes, enrollments, and OneRoster imports (parsed and validated in domain/oneroster.py).

Nested person values (contact channels, notification settings, consents, profiles) travel as
their proto JSON form (dicts with proto field names and enum value names): the convert layer
produces them, this module validates and stores them as they are, and they read back the same.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from classwire.api.events.v1 import roster_events_pb2 as ev
from classwire.api.roster.v1 import resources_pb2 as pb

from ..events.outbox import UnitOfWork, UnitOfWorkFactory
from ..events.timers import DueTimer, Timers
from ..store import repositories as core_repo
from ..store import roster_repositories as repo
from ..store.engine import Database
from ..store.models import Tenant
from ..store.roster_models import (
    RosterAcademicSession,
    RosterClass,
    RosterClassSession,
    RosterCourse,
    RosterEnrollment,
    RosterGuardianLink,
    RosterImport,
    RosterOrg,
    RosterPerson,
    RosterPersonOrg,
)
from ..store.types import utcnow
from . import oneroster, paging
from .auth import Principal
from .errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Violations,
)
from .idempotency import IdempotencyKey, run_idempotent
from .ids import new_id
from .platform import actor_of

READ, WRITE = "roster:read", "roster:write"

ACTIVE, INACTIVE = pb.RECORD_STATE_ACTIVE, pb.RECORD_STATE_INACTIVE
LEARNER, INSTRUCTOR = pb.PERSON_ROLE_LEARNER, pb.PERSON_ROLE_INSTRUCTOR
GUARDIAN, STAFF = pb.PERSON_ROLE_GUARDIAN, pb.PERSON_ROLE_STAFF
PERSON_ROLES = frozenset(v for v in pb.PersonRole.values() if v)
RECORD_STATES = frozenset(v for v in pb.RecordState.values() if v)
E_ACTIVE, E_ENDED = pb.ENROLLMENT_STATE_ACTIVE, pb.ENROLLMENT_STATE_ENDED
E_LEARNER, E_INSTRUCTOR, E_STAFF = (
    pb.ENROLLMENT_ROLE_LEARNER,
    pb.ENROLLMENT_ROLE_INSTRUCTOR,
    pb.ENROLLMENT_ROLE_STAFF,
)
ENROLLMENT_ROLES = frozenset(v for v in pb.EnrollmentRole.values() if v)
ENROLLMENT_STATES = frozenset(v for v in pb.EnrollmentState.values() if v)
ROLE_FOR_ENROLLMENT = {E_LEARNER: LEARNER, E_INSTRUCTOR: INSTRUCTOR, E_STAFF: STAFF}
ORG_TYPES = frozenset(v for v in pb.OrgType.values() if v)
SESSION_TYPES = frozenset(v for v in pb.AcademicSessionType.values() if v)
RELATIONSHIPS = frozenset(v for v in pb.GuardianRelationship.values() if v)
IMPORT_STATES = frozenset(v for v in pb.RosterImportState.values() if v)

MAX_NAME = 200
MAX_CODE = 100
MAX_EXTERNAL_ID = 255
MAX_LIST = 100
MAX_METADATA = 32
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 256
MAX_IMPORT_BYTES = 512 * 1024 * 1024
# A RUNNING import older than this is a crashed one and no longer blocks the tenant.
STALE_IMPORT = timedelta(hours=1)
ENROLLMENT_END_TIMER = "roster.enrollment_end"

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
BCP47 = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")

CONTACT_KINDS = {
    "email": "CONTACT_CHANNEL_KIND_EMAIL",
    "phone_number": "CONTACT_CHANNEL_KIND_SMS",
    "webhook_url": "CONTACT_CHANNEL_KIND_WEBHOOK",
    "chat": "CONTACT_CHANNEL_KIND_CHAT",
}


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


def is_time_zone(name: str) -> bool:
    return name in _zones()


def looks_personal(identifier: str) -> bool:
    """Whether an identifier carries an e-mail address, which the contract forbids."""
    return bool(EMAIL.match(identifier)) or "@" in identifier and "." in identifier


class _Problems(Violations):
    """Violations whose ErrorInfo reason is UNKNOWN_TIME_ZONE or END_BEFORE_START when that is
    the only kind of problem, as the contract lists those reasons."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: set[str] = set()

    def zone(self, path: str, value: str, required: bool = False) -> None:
        if not value:
            if required:
                self.add(path, "is required")
            return
        if not is_time_zone(value):
            self.add(path, "is not an IANA time zone name")
            self.kinds.add("UNKNOWN_TIME_ZONE")
            return

    def order(self, path: str, description: str) -> None:
        self.add(path, description)
        self.kinds.add("END_BEFORE_START")

    def add(self, field_name: str, description: str) -> None:
        super().add(field_name, description)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        special = [v for v in self.items if "IANA" in v.description or "before" in v.description]
        reason = None
        if len(self.kinds) == 1 and len(special) == len(self.items):
            reason = next(iter(self.kinds))
        raise InvalidArgument(self.items, **({"reason": reason} if reason else {}))


def _text(problems: Violations, path: str, value: str, limit: int, required=False) -> None:
    if required and not value.strip():
        problems.add(path, "is required")
    elif len(value) > limit:
        problems.add(path, f"must be at most {limit} characters")


def _external_id(problems: Violations, path: str, value: str) -> None:
    if len(value) > MAX_EXTERNAL_ID:
        problems.add(path, f"must be at most {MAX_EXTERNAL_ID} characters")
    elif value and looks_personal(value):
        problems.add(path, "must carry no personal data (it looks like an e-mail address)")


def _strings(problems: Violations, path: str, values: list[str], limit: int = MAX_CODE) -> None:
    if len(values) > MAX_LIST:
        problems.add(path, f"at most {MAX_LIST} values")
    for i, value in enumerate(values):
        if not value.strip():
            problems.add(f"{path}[{i}]", "must not be empty")
        elif len(value) > limit:
            problems.add(f"{path}[{i}]", f"must be at most {limit} characters")


def _metadata(problems: Violations, path: str, values: dict[str, str]) -> None:
    if len(values) > MAX_METADATA:
        problems.add(path, f"at most {MAX_METADATA} pairs")
    for key, value in values.items():
        if not key or len(key) > MAX_METADATA_KEY:
            problems.add(f"{path}[{key!r}]", f"keys must be 1 to {MAX_METADATA_KEY} characters")
        elif len(value) > MAX_METADATA_VALUE:
            problems.add(f"{path}[{key!r}]", f"values must be at most {MAX_METADATA_VALUE} chars")


def _duration_seconds(value: Any) -> float | None:
    """A Duration in proto JSON form ("3600s") in seconds."""
    if value is None:
        return None
    text = str(value)
    try:
        return float(text[:-1]) if text.endswith("s") else float(text)
    except ValueError:
        return None


def _local_time(problems: Violations, path: str, value: dict | None) -> None:
    value = value or {}
    hours, minutes = int(value.get("hours", 0)), int(value.get("minutes", 0))
    if not (0 <= hours <= 24 and 0 <= minutes <= 59) or (hours == 24 and minutes):
        problems.add(path, "must be a time of day from 00:00 to 24:00")


def _enum(values: Any, enum_type) -> bool:
    return (
        isinstance(values, str)
        and values in enum_type.keys()
        and not values.endswith("_UNSPECIFIED")
    )


# Inputs -----------------------------------------------------------------------------------------


@dataclass
class PersonInput:
    external_id: str = ""
    roles: list[int] = field(default_factory=list)
    state: int = 0
    given_name: str = ""
    family_name: str = ""
    display_name: str = ""
    time_zone: str = ""
    locale: str = ""
    contact_channels: list[dict] = field(default_factory=list)
    notification_settings: dict = field(default_factory=dict)
    consents: list[dict] = field(default_factory=list)
    instructor_profile: dict | None = None
    learner_profile: dict | None = None
    org_ids: list[str] = field(default_factory=list)
    grades: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


PERSON_PATHS = {
    "external_id",
    "roles",
    "state",
    "given_name",
    "family_name",
    "display_name",
    "time_zone",
    "locale",
    "contact_channels",
    "notification_settings",
    "notification_settings.preferences",
    "notification_settings.quiet_hours",
    "consents",
    "instructor_profile",
    "instructor_profile.qualifications",
    "instructor_profile.languages",
    "instructor_profile.weekly_load_limit",
    "instructor_profile.daily_load_limit",
    "instructor_profile.weekly_load_target",
    "learner_profile",
    "learner_profile.levels",
    "learner_profile.languages",
    "learner_profile.preferred_instructor_ids",
    "learner_profile.excluded_instructor_ids",
    "org_ids",
    "grades",
    "metadata",
}


@dataclass
class OrgInput:
    external_id: str = ""
    state: int = 0
    name: str = ""
    type: int = 0
    identifier: str = ""
    parent_id: str = ""
    time_zone: str = ""


ORG_PATHS = {"external_id", "state", "name", "type", "identifier", "parent_id", "time_zone"}


@dataclass
class AcademicSessionInput:
    external_id: str = ""
    state: int = 0
    title: str = ""
    type: int = 0
    start_date: date | None = None
    end_date: date | None = None
    parent_id: str = ""
    org_id: str = ""
    school_year: int = 0


SESSION_PATHS = {
    "external_id",
    "state",
    "title",
    "type",
    "start_date",
    "end_date",
    "parent_id",
    "org_id",
    "school_year",
}


@dataclass
class CourseInput:
    external_id: str = ""
    state: int = 0
    title: str = ""
    course_code: str = ""
    org_id: str = ""
    school_year_session_id: str = ""
    subjects: list[str] = field(default_factory=list)
    grades: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


COURSE_PATHS = {
    "external_id",
    "state",
    "title",
    "course_code",
    "org_id",
    "school_year_session_id",
    "subjects",
    "grades",
    "metadata",
}


@dataclass
class ClassInput:
    external_id: str = ""
    state: int = 0
    course_id: str = ""
    title: str = ""
    class_code: str = ""
    subject: str = ""
    level: str = ""
    time_zone: str = ""
    org_id: str = ""
    academic_session_ids: list[str] = field(default_factory=list)
    capacity: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


CLASS_PATHS = {
    "external_id",
    "state",
    "course_id",
    "title",
    "class_code",
    "subject",
    "level",
    "time_zone",
    "org_id",
    "academic_session_ids",
    "capacity",
    "metadata",
}


@dataclass
class EnrollmentInput:
    external_id: str = ""
    person_id: str = ""
    class_id: str = ""
    role: int = 0
    primary: bool = False
    begin_time: datetime | None = None
    end_time: datetime | None = None


@dataclass
class LinkInput:
    learner_id: str = ""
    guardian_id: str = ""
    relationship: int = 0
    receives_notices: bool = False
    may_consent: bool = False


@dataclass
class ClassView:
    row: RosterClass
    instructor_ids: list[str]
    learner_count: int


@dataclass
class LinkedPersonView:
    link: RosterGuardianLink
    person: RosterPerson


@dataclass(frozen=True)
class ImportOptions:
    mode: int = 0
    dry_run: bool = False


# Person validation --------------------------------------------------------------------------------


def _validate_channels(problems: _Problems, path: str, channels: list[dict]) -> None:
    primary_kinds: set[str] = set()
    for i, channel in enumerate(channels):
        at = f"{path}[{i}]"
        present = [k for k in CONTACT_KINDS if channel.get(k) not in (None, "", {})]
        if not present:
            problems.add(at, "needs an address: email, phone_number, webhook_url or chat")
            continue
        kind = present[0]
        value = channel[kind]
        if kind == "email" and (not EMAIL.match(value) or len(value) > 254):
            problems.add(f"{at}.email", "is not a well-formed e-mail address")
        elif kind == "phone_number" and not E164.match(value):
            problems.add(f"{at}.phone_number", "must be an E.164 number such as +14155550100")
        elif kind == "webhook_url":
            parts = urlsplit(value)
            if parts.scheme != "https" or not parts.hostname or len(value) > 2048:
                problems.add(f"{at}.webhook_url", "must be an absolute https URL")
        elif kind == "chat":
            for name in ("service", "address"):
                if not str(value.get(name, "")).strip():
                    problems.add(f"{at}.chat.{name}", "is required")
        _text(problems, f"{at}.label", channel.get("label", ""), MAX_CODE)
        if channel.get("primary"):
            if kind in primary_kinds:
                problems.add(f"{at}.primary", "another channel of this kind is already primary")
            primary_kinds.add(kind)


def _validate_settings(problems: _Problems, path: str, settings: dict) -> None:
    seen: set[str] = set()
    for i, pref in enumerate(settings.get("preferences", [])):
        at = f"{path}.preferences[{i}]"
        cause = pref.get("cause")
        if not _enum(cause, pb.NotificationCause):
            problems.add(f"{at}.cause", "must be a notification cause")
        elif cause in seen:
            problems.add(f"{at}.cause", "is listed twice")
        seen.add(cause)
        for j, kind in enumerate(pref.get("channel_kinds", [])):
            if not _enum(kind, pb.ContactChannelKind):
                problems.add(f"{at}.channel_kinds[{j}]", "must be a contact channel kind")
    quiet = settings.get("quiet_hours")
    if quiet is not None:
        _local_time(problems, f"{path}.quiet_hours.start", quiet.get("start"))
        _local_time(problems, f"{path}.quiet_hours.end", quiet.get("end"))
        problems.zone(f"{path}.quiet_hours.time_zone", quiet.get("time_zone", ""))


def _validate_consents(problems: _Problems, path: str, consents: list[dict]) -> None:
    seen: set[str] = set()
    for i, consent in enumerate(consents):
        kind = consent.get("kind")
        if not _enum(kind, pb.ConsentKind):
            problems.add(f"{path}[{i}].kind", "must be a consent kind")
        elif kind in seen:
            problems.add(f"{path}[{i}].kind", "is listed twice")
        seen.add(kind)
        if not _enum(consent.get("decision"), pb.ConsentDecision):
            problems.add(f"{path}[{i}].decision", "must be GRANTED or DENIED")


def _validate_languages(problems: Violations, path: str, values: list[str]) -> None:
    for i, tag in enumerate(values):
        if not BCP47.match(tag):
            problems.add(f"{path}[{i}]", "must be a BCP 47 language tag")


def _validate_instructor(problems: _Problems, path: str, profile: dict) -> None:
    seen: set[str] = set()
    for i, q in enumerate(profile.get("qualifications", [])):
        subject = str(q.get("subject", "")).strip()
        if not subject:
            problems.add(f"{path}.qualifications[{i}].subject", "is required")
        elif subject.lower() in seen:
            problems.add(f"{path}.qualifications[{i}].subject", "is listed twice")
        elif len(subject) > MAX_CODE:
            problems.add(f"{path}.qualifications[{i}].subject", "is too long")
        seen.add(subject.lower())
        _strings(problems, f"{path}.qualifications[{i}].levels", list(q.get("levels", [])))
    _validate_languages(problems, f"{path}.languages", list(profile.get("languages", [])))
    for name in ("weekly_load_limit", "daily_load_limit", "weekly_load_target"):
        if name in profile:
            seconds = _duration_seconds(profile[name])
            if seconds is None or seconds <= 0:
                problems.add(f"{path}.{name}", "must be a positive duration")
            elif seconds > 7 * 24 * 3600:
                problems.add(f"{path}.{name}", "must be at most 7 days")


def _validate_learner(problems: _Problems, path: str, profile: dict) -> None:
    seen: set[str] = set()
    for i, item in enumerate(profile.get("levels", [])):
        subject = str(item.get("subject", "")).strip().lower()
        if not subject:
            problems.add(f"{path}.levels[{i}].subject", "is required")
        elif subject in seen:
            problems.add(f"{path}.levels[{i}].subject", "is listed twice")
        seen.add(subject)
    _validate_languages(problems, f"{path}.languages", list(profile.get("languages", [])))
    preferred = set(profile.get("preferred_instructor_ids", []))
    for i, pid in enumerate(profile.get("excluded_instructor_ids", [])):
        if pid in preferred:
            problems.add(f"{path}.excluded_instructor_ids[{i}]", "is also preferred")


def validate_person(data: PersonInput, prefix: str = "person", paths: set[str] | None = None):
    """Checks the fields named by `paths` (all when None) and reports every problem at once."""

    def on(name: str) -> bool:
        return paths is None or name in paths or any(p.startswith(name + ".") for p in paths)

    problems = _Problems()
    if on("roles"):
        if not data.roles:
            problems.add(f"{prefix}.roles", "at least one role is required")
        for i, role in enumerate(data.roles):
            if role not in PERSON_ROLES:
                problems.add(f"{prefix}.roles[{i}]", "must be a person role")
            elif role in data.roles[:i]:
                problems.add(f"{prefix}.roles[{i}]", "is listed twice")
    if on("state") and paths is not None and data.state not in RECORD_STATES:
        problems.add(f"{prefix}.state", "must be ACTIVE or INACTIVE")
    if on("external_id"):
        _external_id(problems, f"{prefix}.external_id", data.external_id)
    for name in ("given_name", "family_name", "display_name"):
        if on(name):
            _text(problems, f"{prefix}.{name}", getattr(data, name), MAX_NAME)
    if on("time_zone"):
        problems.zone(f"{prefix}.time_zone", data.time_zone)
    if on("locale") and data.locale and not BCP47.match(data.locale):
        problems.add(f"{prefix}.locale", "must be a BCP 47 language tag")
    if on("contact_channels"):
        if len(data.contact_channels) > 20:
            problems.add(f"{prefix}.contact_channels", "at most 20 channels")
        _validate_channels(problems, f"{prefix}.contact_channels", data.contact_channels)
    if on("notification_settings"):
        _validate_settings(problems, f"{prefix}.notification_settings", data.notification_settings)
    if on("consents"):
        _validate_consents(problems, f"{prefix}.consents", data.consents)
    if on("instructor_profile") and data.instructor_profile is not None:
        _validate_instructor(problems, f"{prefix}.instructor_profile", data.instructor_profile)
    if on("learner_profile") and data.learner_profile is not None:
        _validate_learner(problems, f"{prefix}.learner_profile", data.learner_profile)
    if on("org_ids"):
        _strings(problems, f"{prefix}.org_ids", data.org_ids, 64)
    if on("grades"):
        _strings(problems, f"{prefix}.grades", data.grades)
    if on("metadata"):
        _metadata(problems, f"{prefix}.metadata", data.metadata)
    return problems


def _profiles_match_roles(problems: Violations, prefix: str, row_like: PersonInput) -> None:
    if row_like.instructor_profile and INSTRUCTOR not in row_like.roles:
        problems.add(f"{prefix}.instructor_profile", "is only for people with the instructor role")
    if row_like.learner_profile and LEARNER not in row_like.roles:
        problems.add(f"{prefix}.learner_profile", "is only for people with the learner role")


def role_bits(roles: list[int]) -> int:
    bits = 0
    for role in roles:
        bits |= 1 << role
    return bits


def role_names(roles: list[int]) -> list[str]:
    return [pb.PersonRole.Name(r) for r in roles]


def qualification_pairs(profile: dict | None) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for q in (profile or {}).get("qualifications", []):
        subject = str(q.get("subject", "")).strip().lower()
        levels = [str(v) for v in q.get("levels", [])] or [""]
        pairs.update((subject, level) for level in levels)
    return pairs


def _person_not_found(person_id: str) -> NotFound:
    return NotFound(f"person {person_id!r} not found", reason="PERSON_NOT_FOUND")


def _not_found(kind: str, reason: str, ident: str) -> NotFound:
    return NotFound(f"{kind} {ident!r} not found", reason=reason)


def _check_etag(current: int, etag: str) -> None:
    if etag and etag != str(current):
        raise Aborted(
            "the resource changed since it was read (etag mismatch)", reason="ETAG_MISMATCH"
        )


def _external_taken(external_id: str) -> AlreadyExists:
    return AlreadyExists(
        "another record of this kind has that external id",
        reason="EXTERNAL_ID_TAKEN",
        metadata={"external_id": external_id},
    )


class RosterDomain:
    def __init__(self, db: Database, uow: UnitOfWorkFactory, timers: Timers | None = None):
        self.db = db
        self.uow = uow
        self.timers = timers
        if timers is not None:
            timers.register(ENROLLMENT_END_TIMER, self._enrollment_end_due)
        # Imports parse on a worker thread; only one import per process parses at a time so
        # a large import cannot starve the event loop's other work of the GIL for long.
        self._parse_lock = asyncio.Lock()

    def _scope(self, principal: Principal):
        return self.uow(principal.tenant_id, actor_of(principal))

    # People ------------------------------------------------------------------------------------

    async def _check_orgs(self, session, tenant_id: str, org_ids: list[str], path: str) -> None:
        found = await repo.get_many(session, RosterOrg, tenant_id, org_ids)
        for i, org_id in enumerate(org_ids):
            if org_id not in found:
                raise NotFound(
                    f"organisation {org_id!r} not found",
                    reason="ORG_NOT_FOUND",
                    metadata={"field": f"{path}[{i}]"},
                )

    async def _check_instructor_refs(self, session, tenant_id: str, profile: dict | None):
        if not profile:
            return
        ids = list(profile.get("preferred_instructor_ids", [])) + list(
            profile.get("excluded_instructor_ids", [])
        )
        found = await repo.get_many(session, RosterPerson, tenant_id, ids)
        problems = Violations()
        for name in ("preferred_instructor_ids", "excluded_instructor_ids"):
            for i, pid in enumerate(profile.get(name, [])):
                row = found.get(pid)
                if row is None or not row.role_bits & (1 << INSTRUCTOR):
                    problems.add(f"person.learner_profile.{name}[{i}]", "is not an instructor")
        problems.raise_if_any()

    def _normalise_channels(
        self, channels: list[dict], old: list[dict], now: datetime, path: str
    ) -> list[dict]:
        by_id = {c.get("id"): c for c in old}
        problems = Violations()
        result = []
        for i, channel in enumerate(channels):
            channel = dict(channel)
            channel.pop("verify_time", None)
            previous = None
            if channel.get("id"):
                previous = by_id.get(channel["id"])
                if previous is None:
                    problems.add(f"{path}[{i}].id", "is not a channel of this person")
                    continue
            else:
                channel["id"] = new_id("ch")
            if channel.get("verified"):
                kept = previous and previous.get("verified") and previous.get("verify_time")
                channel["verify_time"] = kept or now.isoformat().replace("+00:00", "Z")
            result.append(channel)
        problems.raise_if_any()
        return result

    @staticmethod
    def _normalise_consents(consents: list[dict], person_id: str, now: datetime) -> list[dict]:
        result = []
        for consent in consents:
            consent = dict(consent)
            consent.setdefault("decided_by_person_id", person_id)
            if not consent["decided_by_person_id"]:
                consent["decided_by_person_id"] = person_id
            consent.setdefault("decide_time", now.isoformat().replace("+00:00", "Z"))
            result.append(consent)
        return result

    async def _check_consent_deciders(self, session, tenant_id: str, row: RosterPerson) -> None:
        problems = Violations()
        for i, consent in enumerate(row.consents):
            decider = consent.get("decided_by_person_id")
            if decider == row.id:
                continue
            link = await repo.guardian_link(session, tenant_id, row.id, decider)
            if link is None or not link.may_consent:
                problems.add(
                    f"person.consents[{i}].decided_by_person_id",
                    "must be the person or a linked guardian who may consent",
                )
        problems.raise_if_any()

    async def create_person(
        self, principal: Principal, data: PersonInput, idempotency: IdempotencyKey | None
    ) -> RosterPerson:
        principal.require(WRITE)
        problems = validate_person(data)
        _profiles_match_roles(problems, "person", data)
        problems.raise_if_any()

        async def body(uow: UnitOfWork) -> RosterPerson:
            session, tenant = uow.session, principal.tenant_id
            await self._check_orgs(session, tenant, data.org_ids, "person.org_ids")
            await self._check_instructor_refs(session, tenant, data.learner_profile)
            if data.external_id and await repo.by_external_id(
                session, RosterPerson, tenant, data.external_id
            ):
                raise _external_taken(data.external_id)
            now = utcnow()
            person_id = new_id("per")
            row = RosterPerson(
                id=person_id,
                tenant_id=tenant,
                external_id=data.external_id or None,
                state=data.state if data.state in RECORD_STATES else ACTIVE,
                roles=list(data.roles),
                role_bits=role_bits(data.roles),
                given_name=data.given_name.strip(),
                family_name=data.family_name.strip(),
                display_name=data.display_name.strip(),
                time_zone=data.time_zone,
                locale=data.locale,
                contact_channels=self._normalise_channels(
                    data.contact_channels, [], now, "person.contact_channels"
                ),
                notification_settings=data.notification_settings,
                consents=self._normalise_consents(data.consents, person_id, now),
                instructor_profile=data.instructor_profile,
                learner_profile=data.learner_profile,
                org_ids=list(dict.fromkeys(data.org_ids)),
                grades=list(data.grades),
                labels=dict(data.metadata),
                version=1,
                import_id=None,
                create_time=now,
                update_time=now,
                delete_time=None,
            )
            session.add(row)
            await session.flush()
            await self._check_consent_deciders(session, tenant, row)
            await repo.set_person_orgs(session, tenant, row.id, row.org_ids)
            await repo.set_qualifications(
                session, tenant, row.id, qualification_pairs(row.instructor_profile)
            )
            uow.emit(
                ev.PersonCreated(
                    person_id=row.id,
                    external_id=row.external_id or "",
                    roles=role_names(row.roles),
                )
            )
            return row

        return await run_idempotent(lambda: self._scope(principal), idempotency, body)

    async def get_person(self, principal: Principal, person_id: str) -> RosterPerson:
        principal.require(READ)
        async with self.db.reader() as session:
            row = await repo.get(session, RosterPerson, principal.tenant_id, person_id)
        if row is None:
            raise _person_not_found(person_id)
        return row

    async def list_people(
        self,
        principal: Principal,
        *,
        role: int,
        org_id: str,
        external_ids: list[str],
        state: int,
        subject: str,
        level: str,
        size: int,
        token: str,
    ) -> tuple[list[RosterPerson], str]:
        principal.require(READ)
        problems = Violations()
        if role and role not in PERSON_ROLES:
            problems.add("role", "must be a person role")
        if state and state not in RECORD_STATES:
            problems.add("state", "must be a record state")
        if len(external_ids) > 500:
            problems.add("external_ids", "at most 500 ids")
        if level and not subject:
            problems.add("level", "needs subject")
        limit = paging.page_size(size)
        problems.raise_if_any()
        filters = [role, org_id, sorted(external_ids), state, subject.lower(), level]
        after = paging.decode(token, filters)
        query = repo.people(
            principal.tenant_id,
            state=state or ACTIVE,
            role_bit=(1 << role) if role else 0,
            org_id=org_id,
            external_ids=external_ids,
            subject=subject,
            level=level,
        )
        async with self.db.reader() as session:
            rows = await repo.page_by_id(
                session, query, RosterPerson.id, limit, after[1] if after else None
            )
        return rows, _next(rows, limit, filters)

    async def update_person(
        self,
        principal: Principal,
        person_id: str,
        data: PersonInput,
        paths: list[str],
        etag: str,
    ) -> RosterPerson:
        principal.require(WRITE)
        if "*" in paths:
            paths = sorted(p for p in PERSON_PATHS if "." not in p)
        wanted = set(paths)
        problems = validate_person(data, paths=wanted)
        problems.raise_if_any()
        async with self._scope(principal) as uow:
            session, tenant = uow.session, principal.tenant_id
            row = await repo.get(session, RosterPerson, tenant, person_id, lock=True)
            if row is None:
                raise _person_not_found(person_id)
            _check_etag(row.version, etag)
            now = utcnow()
            changed: list[str] = []

            def put(attr: str, value, path: str | list[str] | None = None) -> None:
                if getattr(row, attr) != value:
                    setattr(row, attr, value)
                    changed.extend(path if isinstance(path, list) else [path or attr])

            if "external_id" in wanted:
                if data.external_id and data.external_id != row.external_id:
                    other = await repo.by_external_id(
                        session, RosterPerson, tenant, data.external_id
                    )
                    if other is not None:
                        raise _external_taken(data.external_id)
                put("external_id", data.external_id or None)
            if "roles" in wanted:
                await self._check_role_removal(session, tenant, row, data.roles)
                put("roles", list(data.roles))
                row.role_bits = role_bits(row.roles)
            if "state" in wanted:
                put("state", data.state)
            for name in ("given_name", "family_name", "display_name", "time_zone", "locale"):
                if name in wanted:
                    put(name, getattr(data, name).strip())
            if "contact_channels" in wanted:
                put(
                    "contact_channels",
                    self._normalise_channels(
                        data.contact_channels, row.contact_channels, now, "person.contact_channels"
                    ),
                )
            _merge_nested(row, "notification_settings", data.notification_settings, wanted, put, {})
            if "consents" in wanted:
                put("consents", self._normalise_consents(data.consents, row.id, now))
            _merge_nested(row, "instructor_profile", data.instructor_profile, wanted, put, None)
            _merge_nested(row, "learner_profile", data.learner_profile, wanted, put, None)
            if "org_ids" in wanted:
                await self._check_orgs(session, tenant, data.org_ids, "person.org_ids")
                put("org_ids", list(dict.fromkeys(data.org_ids)))
            if "grades" in wanted:
                put("grades", list(data.grades))
            if "metadata" in wanted:
                put("labels", dict(data.metadata), "metadata")
            after = Violations()
            _profiles_match_roles(
                after,
                "person",
                PersonInput(
                    roles=row.roles,
                    instructor_profile=row.instructor_profile,
                    learner_profile=row.learner_profile,
                ),
            )
            after.raise_if_any()
            if any(p.startswith("learner_profile") for p in changed):
                await self._check_instructor_refs(session, tenant, row.learner_profile)
            if "consents" in changed:
                await self._check_consent_deciders(session, tenant, row)
            if changed:
                row.version += 1
                row.update_time = now
                if "org_ids" in changed:
                    await repo.set_person_orgs(session, tenant, row.id, row.org_ids)
                if any(p.startswith("instructor_profile") for p in changed):
                    await repo.set_qualifications(
                        session, tenant, row.id, qualification_pairs(row.instructor_profile)
                    )
                uow.emit(
                    ev.PersonUpdated(
                        person_id=row.id,
                        external_id=row.external_id or "",
                        changed_fields=changed,
                        roles=role_names(row.roles),
                    )
                )
        return row

    async def _check_role_removal(self, session, tenant: str, row: RosterPerson, roles) -> None:
        removed = set(row.roles) - set(roles)
        if GUARDIAN in removed and await repo.links_of(
            session, tenant, guardian_id=row.id, limit=1
        ):
            raise FailedPrecondition(
                "the person is a linked guardian; unlink them first", reason="ROLE_IN_USE"
            )
        if LEARNER in removed and await repo.count_active(
            session, tenant, active=E_ACTIVE, person_id=row.id, role=E_LEARNER
        ):
            raise FailedPrecondition(
                "the person has active learner enrollments", reason="ROLE_IN_USE"
            )
        if INSTRUCTOR in removed and await repo.count_active(
            session, tenant, active=E_ACTIVE, person_id=row.id, role=E_INSTRUCTOR
        ):
            raise FailedPrecondition(
                "the person has active instructor enrollments", reason="ROLE_IN_USE"
            )

    async def delete_person(
        self, principal: Principal, person_id: str, force: bool, etag: str
    ) -> None:
        principal.require(WRITE)
        async with self._scope(principal) as uow:
            session, tenant = uow.session, principal.tenant_id
            row = await repo.get(session, RosterPerson, tenant, person_id, lock=True)
            if row is None:
                raise _person_not_found(person_id)
            _check_etag(row.version, etag)
            now = utcnow()
            for enrollment in await repo.enrollments_of_person(session, tenant, row.id, E_ACTIVE):
                self._end(uow, enrollment, now, "PERSON_DELETED")
            for link in await repo.delete_links_of(session, tenant, row.id):
                uow.emit(
                    ev.GuardianUnlinked(learner_id=link.learner_id, guardian_id=link.guardian_id)
                )
            await repo.set_person_orgs(session, tenant, row.id, [])
            await repo.set_qualifications(session, tenant, row.id, [])
            external_id = row.external_id or ""
            # Erasure: the row keeps its id (bookings and reports refer to it) and nothing else.
            row.external_id = None
            row.state = INACTIVE
            row.given_name = row.family_name = row.display_name = ""
            row.time_zone = row.locale = ""
            row.contact_channels, row.consents, row.org_ids, row.grades = [], [], [], []
            row.notification_settings, row.labels = {}, {}
            row.instructor_profile = row.learner_profile = None
            row.version += 1
            row.update_time = row.delete_time = now
            # Bookings belong to scheduling.v1, which has none in this release: nothing to
            # cancel, so `force` changes nothing yet.
            uow.emit(ev.PersonDeleted(person_id=row.id, external_id=external_id))

    # Guardianship ------------------------------------------------------------------------------

    async def link_guardian(
        self, principal: Principal, data: LinkInput, idempotency: IdempotencyKey | None
    ) -> RosterGuardianLink:
        principal.require(WRITE)
        problems = Violations()
        if not data.learner_id:
            problems.add("link.learner_id", "is required")
        if not data.guardian_id:
            problems.add("link.guardian_id", "is required")
        if data.learner_id and data.learner_id == data.guardian_id:
            problems.add("link.guardian_id", "must differ from the learner")
        if data.relationship and data.relationship not in RELATIONSHIPS:
            problems.add("link.relationship", "must be a guardian relationship")
        problems.raise_if_any()

        async def body(uow: UnitOfWork) -> RosterGuardianLink:
            session, tenant = uow.session, principal.tenant_id
            people = await repo.get_many(
                session, RosterPerson, tenant, [data.learner_id, data.guardian_id]
            )
            for pid in (data.learner_id, data.guardian_id):
                if pid not in people:
                    raise _person_not_found(pid)
            learner, guardian = people[data.learner_id], people[data.guardian_id]
            if LEARNER not in learner.roles:
                raise FailedPrecondition(
                    "the learner lacks the learner role",
                    reason="ROLE_REQUIRED",
                    metadata={"role": "PERSON_ROLE_LEARNER"},
                )
            if GUARDIAN not in guardian.roles:
                raise FailedPrecondition(
                    "the guardian lacks the guardian role",
                    reason="ROLE_REQUIRED",
                    metadata={"role": "PERSON_ROLE_GUARDIAN"},
                )
            if await repo.guardian_link(session, tenant, learner.id, guardian.id):
                raise AlreadyExists(
                    "the guardian is already linked to the learner",
                    reason="GUARDIAN_ALREADY_LINKED",
                )
            link = RosterGuardianLink(
                learner_id=learner.id,
                guardian_id=guardian.id,
                tenant_id=tenant,
                relationship=data.relationship or pb.GUARDIAN_RELATIONSHIP_OTHER,
                receives_notices=data.receives_notices,
                may_consent=data.may_consent,
                import_id=None,
                create_time=utcnow(),
            )
            session.add(link)
            uow.emit(_linked_event(link))
            return link

        return await run_idempotent(lambda: self._scope(principal), idempotency, body)

    async def unlink_guardian(self, principal: Principal, learner_id: str, guardian_id: str):
        principal.require(WRITE)
        async with self._scope(principal) as uow:
            session, tenant = uow.session, principal.tenant_id
            people = await repo.get_many(session, RosterPerson, tenant, [learner_id, guardian_id])
            for pid in (learner_id, guardian_id):
                if pid not in people:
                    raise _person_not_found(pid)
            link = await repo.guardian_link(session, tenant, learner_id, guardian_id)
            if link is None:
                raise NotFound(
                    "the guardian is not linked to the learner", reason="GUARDIAN_LINK_NOT_FOUND"
                )
            await session.delete(link)
            uow.emit(ev.GuardianUnlinked(learner_id=learner_id, guardian_id=guardian_id))

    async def list_linked(
        self, principal: Principal, person_id: str, wards: bool, size: int, token: str
    ) -> tuple[list[LinkedPersonView], str]:
        principal.require(READ)
        limit = paging.page_size(size)
        filters = ["wards" if wards else "guardians", person_id]
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            tenant = principal.tenant_id
            if await repo.get(session, RosterPerson, tenant, person_id) is None:
                raise _person_not_found(person_id)
            links = await repo.links_of(
                session,
                tenant,
                learner_id="" if wards else person_id,
                guardian_id=person_id if wards else "",
                limit=limit,
                after_id=after[1] if after else None,
            )
            others = [link.learner_id if wards else link.guardian_id for link in links]
            people = await repo.get_many(session, RosterPerson, tenant, others)
        views = [LinkedPersonView(link, people[o]) for link, o in zip(links, others, strict=True)]
        token_out = ""
        if len(links) == limit:
            token_out = paging.encode(_EPOCH, others[-1], filters)
        return views, token_out

    # Organisations -----------------------------------------------------------------------------

    def _validate_org(self, data: OrgInput, paths: set[str] | None) -> None:
        problems = _Problems()

        def on(name):
            return paths is None or name in paths

        if on("name"):
            _text(problems, "org.name", data.name, MAX_NAME, required=True)
        if on("type") and data.type not in ORG_TYPES:
            problems.add("org.type", "must be an organisation type")
        if on("external_id"):
            _external_id(problems, "org.external_id", data.external_id)
        if on("identifier"):
            _text(problems, "org.identifier", data.identifier, MAX_NAME)
        if on("time_zone"):
            problems.zone("org.time_zone", data.time_zone)
        if on("state") and paths is not None and data.state not in RECORD_STATES:
            problems.add("org.state", "must be ACTIVE or INACTIVE")
        problems.raise_if_any()

    async def create_org(
        self, principal: Principal, data: OrgInput, idempotency: IdempotencyKey | None
    ) -> RosterOrg:
        principal.require(WRITE)
        self._validate_org(data, None)

        async def body(uow: UnitOfWork) -> RosterOrg:
            session, tenant = uow.session, principal.tenant_id
            if (
                data.parent_id
                and await repo.get(session, RosterOrg, tenant, data.parent_id) is None
            ):
                raise _not_found("organisation", "ORG_NOT_FOUND", data.parent_id)
            if data.external_id and await repo.by_external_id(
                session, RosterOrg, tenant, data.external_id
            ):
                raise _external_taken(data.external_id)
            now = utcnow()
            row = RosterOrg(
                id=new_id("org"),
                tenant_id=tenant,
                external_id=data.external_id or None,
                state=data.state if data.state in RECORD_STATES else ACTIVE,
                name=data.name.strip(),
                type=data.type,
                identifier=data.identifier,
                parent_id=data.parent_id or None,
                time_zone=data.time_zone,
                version=1,
                import_id=None,
                create_time=now,
                update_time=now,
            )
            session.add(row)
            uow.emit(ev.OrgCreated(org_id=row.id, external_id=row.external_id or ""))
            return row

        return await run_idempotent(lambda: self._scope(principal), idempotency, body)

    async def get_org(self, principal: Principal, org_id: str) -> RosterOrg:
        principal.require(READ)
        async with self.db.reader() as session:
            row = await repo.get(session, RosterOrg, principal.tenant_id, org_id)
        if row is None:
            raise _not_found("organisation", "ORG_NOT_FOUND", org_id)
        return row

    async def list_orgs(
        self, principal: Principal, parent_id: str, org_type: int, state: int, size: int, token: str
    ):
        principal.require(READ)
        _check_filters(state=state, enum_ok=not org_type or org_type in ORG_TYPES, name="type")
        limit = paging.page_size(size)
        filters = [parent_id, org_type, state]
        after = paging.decode(token, filters)
        query = repo.orgs(
            principal.tenant_id, state=state or ACTIVE, parent_id=parent_id, org_type=org_type
        )
        async with self.db.reader() as session:
            rows = await repo.page_by_id(
                session, query, RosterOrg.id, limit, after[1] if after else None
            )
        return rows, _next(rows, limit, filters)

    async def update_org(
        self, principal: Principal, org_id: str, data: OrgInput, paths: list[str], etag: str
    ) -> RosterOrg:
        principal.require(WRITE)
        self._validate_org(data, set(paths))
        async with self._scope(principal) as uow:
            session, tenant = uow.session, principal.tenant_id
            row = await repo.get(session, RosterOrg, tenant, org_id, lock=True)
            if row is None:
                raise _not_found("organisation", "ORG_NOT_FOUND", org_id)
            _check_etag(row.version, etag)
            if "parent_id" in paths and data.parent_id:
                await self._check_org_parent(session, tenant, row.id, data.parent_id)
            if "external_id" in paths:
                await self._check_external(session, RosterOrg, tenant, row, data.external_id)
            values = {p: getattr(data, p) for p in paths}
            if "parent_id" in values or "external_id" in values:
                for name in ("parent_id", "external_id"):
                    if name in values:
                        values[name] = values[name] or None
            changed = _apply(row, values)
            if changed:
                uow.emit(
                    ev.OrgUpdated(
                        org_id=row.id, external_id=row.external_id or "", changed_fields=changed
                    )
                )
        return row

    async def _check_org_parent(self, session, tenant: str, org_id: str, parent_id: str) -> None:
        seen = {org_id}
        current = parent_id
        while current:
            if current in seen:
                raise InvalidArgument(
                    FieldViolation("org.parent_id", "would make the organisation its own ancestor"),
                    reason="PARENT_CYCLE",
                )
            seen.add(current)
            parent = await repo.get(session, RosterOrg, tenant, current)
            if parent is None:
                if current == parent_id:
                    raise _not_found("organisation", "ORG_NOT_FOUND", parent_id)
                break
            current = parent.parent_id

    @staticmethod
    async def _check_external(session, model, tenant: str, row, external_id: str) -> None:
        if external_id and external_id != row.external_id:
            if await repo.by_external_id(session, model, tenant, external_id):
                raise _external_taken(external_id)

    # Academic sessions -------------------------------------------------------------------------

    def _validate_session(self, data: AcademicSessionInput, paths: set[str] | None) -> None:
        problems = _Problems()

        def on(name):
            return paths is None or name in paths

        if on("title"):
            _text(problems, "academic_session.title", data.title, MAX_NAME, required=True)
        if on("type") and data.type not in SESSION_TYPES:
            problems.add("academic_session.type", "must be an academic session type")
        if on("external_id"):
            _external_id(problems, "academic_session.external_id", data.external_id)
        if on("start_date") and data.start_date is None:
            problems.add("academic_session.start_date", "is required: a valid date")
        if on("end_date") and data.end_date is None:
            problems.add("academic_session.end_date", "is required: a valid date")
        if on("school_year") and not 0 <= data.school_year <= 9999:
            problems.add("academic_session.school_year", "must be a year")
        if on("state") and paths is not None and data.state not in RECORD_STATES:
            problems.add("academic_session.state", "must be ACTIVE or INACTIVE")
        if paths is None and data.start_date and data.end_date and data.end_date < data.start_date:
            problems.order("academic_session.end_date", "must not be before start_date")
        problems.raise_if_any()

    async def create_academic_session(
        self, principal: Principal, data: AcademicSessionInput, idempotency
    ) -> RosterAcademicSession:
        principal.require(WRITE)
        self._validate_session(data, None)

        async def body(uow: UnitOfWork) -> RosterAcademicSession:
            session, tenant = uow.session, principal.tenant_id
            await self._check_session_refs(session, tenant, data.parent_id, data.org_id)
            if data.external_id and await repo.by_external_id(
                session, RosterAcademicSession, tenant, data.external_id
            ):
                raise _external_taken(data.external_id)
            now = utcnow()
            row = RosterAcademicSession(
                id=new_id("as"),
                tenant_id=tenant,
                external_id=data.external_id or None,
                state=data.state if data.state in RECORD_STATES else ACTIVE,
                title=data.title.strip(),
                type=data.type,
                start_date=data.start_date,
                end_date=data.end_date,
                parent_id=data.parent_id or None,
                org_id=data.org_id or None,
                school_year=data.school_year,
                version=1,
                import_id=None,
                create_time=now,
                update_time=now,
            )
            session.add(row)
            uow.emit(
                ev.AcademicSessionCreated(
                    academic_session_id=row.id, external_id=row.external_id or ""
                )
            )
            return row

        return await run_idempotent(lambda: self._scope(principal), idempotency, body)

    async def _check_session_refs(self, session, tenant: str, parent_id: str, org_id: str):
        if parent_id and await repo.get(session, RosterAcademicSession, tenant, parent_id) is None:
            raise _not_found("academic session", "ACADEMIC_SESSION_NOT_FOUND", parent_id)
        if org_id and await repo.get(session, RosterOrg, tenant, org_id) is None:
            raise _not_found("organisation", "ORG_NOT_FOUND", org_id)

    async def get_academic_session(self, principal: Principal, session_id: str):
        principal.require(READ)
        async with self.db.reader() as session:
            row = await repo.get(session, RosterAcademicSession, principal.tenant_id, session_id)
        if row is None:
            raise _not_found("academic session", "ACADEMIC_SESSION_NOT_FOUND", session_id)
        return row

    async def list_academic_sessions(
        self, principal: Principal, org_id: str, session_type: int, school_year: int, size, token
    ):
        principal.require(READ)
        _check_filters(enum_ok=not session_type or session_type in SESSION_TYPES, name="type")
        limit = paging.page_size(size)
        filters = [org_id, session_type, school_year]
        after = paging.decode(token, filters)
        query = repo.academic_sessions(
            principal.tenant_id, org_id=org_id, session_type=session_type, school_year=school_year
        )
        key = None
        if after is not None:
            key = (after[0].date(), after[1])
        async with self.db.reader() as session:
            rows = await repo.page_by(
                session,
                query,
                RosterAcademicSession.start_date,
                RosterAcademicSession.id,
                limit,
                key,
            )
        token_out = ""
        if len(rows) == limit:
            last = rows[-1]
            at = datetime(
                last.start_date.year, last.start_date.month, last.start_date.day, tzinfo=UTC
            )
            token_out = paging.encode(at, last.id, filters)
        return rows, token_out

    async def update_academic_session(
        self, principal: Principal, session_id: str, data: AcademicSessionInput, paths, etag: str
    ):
        principal.require(WRITE)
        self._validate_session(data, set(paths))
        async with self._scope(principal) as uow:
            session, tenant = uow.session, principal.tenant_id
            row = await repo.get(session, RosterAcademicSession, tenant, session_id, lock=True)
            if row is None:
                raise _not_found("academic session", "ACADEMIC_SESSION_NOT_FOUND", session_id)
            _check_etag(row.version, etag)
            if "parent_id" in paths and data.parent_id == row.id:
                raise InvalidArgument(
                    FieldViolation("academic_session.parent_id", "must not be the session itself")
                )
            await self._check_session_refs(
                session,
                tenant,
                data.parent_id if "parent_id" in paths else "",
                data.org_id if "org_id" in paths else "",
            )
            if "external_id" in paths:
                await self._check_external(
                    session, RosterAcademicSession, tenant, row, data.external_id
                )
            values = {p: getattr(data, p) for p in paths}
            for name in ("parent_id", "org_id", "external_id"):
                if name in values:
                    values[name] = values[name] or None
            start = values.get("start_date", row.start_date)
            end = values.get("end_date", row.end_date)
            if end < start:
                raise InvalidArgument(
                    FieldViolation("academic_session.end_date", "must not be before start_date"),
                    reason="END_BEFORE_START",
                )
            changed = _apply(row, values)
            if changed:
                uow.emit(
                    ev.AcademicSessionUpdated(
                        academic_session_id=row.id,
                        external_id=row.external_id or "",
                        changed_fields=changed,
                    )
                )
        return row

    # Courses -----------------------------------------------------------------------------------

    def _validate_course(self, data: CourseInput, paths: set[str] | None) -> None:
        problems = _Problems()

        def on(name):
            return paths is None or name in paths

        if on("title"):
            _text(problems, "course.title", data.title, MAX_NAME, required=True)
        if on("org_id") and not data.org_id:
            problems.add("course.org_id", "is required")
        if on("external_id"):
            _external_id(problems, "course.external_id", data.external_id)
        if on("course_code"):
            _text(problems, "course.course_code", data.course_code, MAX_CODE)
        if on("subjects"):
            _strings(problems, "course.subjects", data.subjects)
        if on("grades"):
            _strings(problems, "course.grades", data.grades)
        if on("metadata"):
            _metadata(problems, "course.metadata", data.metadata)
        if on("state") and paths is not None and data.state not in RECORD_STATES:
            problems.add("course.state", "must be ACTIVE or INACTIVE")
        problems.raise_if_any()

    async def _check_course_refs(self, session, tenant: str, org_id: str, year_id: str) -> None:
        if org_id and await repo.get(session, RosterOrg, tenant, org_id) is None:
            raise _not_found("organisation", "ORG_NOT_FOUND", org_id)
        if year_id and await repo.get(session, RosterAcademicSession, tenant, year_id) is None:
            raise _not_found("academic session", "ACADEMIC_SESSION_NOT_FOUND", year_id)

    async def create_course(self, principal: Principal, data: CourseInput, idempotency):
        principal.require(WRITE)
        self._validate_course(data, None)

        async def body(uow: UnitOfWork) -> RosterCourse:
            session, tenant = uow.session, principal.tenant_id
            await self._check_course_refs(session, tenant, data.org_id, data.school_year_session_id)
            if data.external_id and await repo.by_external_id(
                session, RosterCourse, tenant, data.external_id
            ):
                raise _external_taken(data.external_id)
            now = utcnow()
            row = RosterCourse(
                id=new_id("crs"),
                tenant_id=tenant,
                external_id=data.external_id or None,
                state=data.state if data.state in RECORD_STATES else ACTIVE,
                title=data.title.strip(),
                course_code=data.course_code,
                org_id=data.org_id,
                school_year_session_id=data.school_year_session_id or None,
                subjects=list(data.subjects),
                grades=list(data.grades),
                labels=dict(data.metadata),
                version=1,
                import_id=None,
                create_time=now,
                update_time=now,
            )
            session.add(row)
            uow.emit(
                ev.CourseCreated(
                    course_id=row.id, external_id=row.external_id or "", org_id=row.org_id
                )
            )
            return row

        return await run_idempotent(lambda: self._scope(principal), idempotency, body)

    async def get_course(self, principal: Principal, course_id: str) -> RosterCourse:
        principal.require(READ)
        async with self.db.reader() as session:
            row = await repo.get(session, RosterCourse, principal.tenant_id, course_id)
        if row is None:
            raise _not_found("course", "COURSE_NOT_FOUND", course_id)
        return row

    async def list_courses(
        self, principal: Principal, org_id: str, subject: str, state: int, size: int, token: str
    ):
        principal.require(READ)
        _check_filters(state=state)
        limit = paging.page_size(size)
        filters = [org_id, subject, state]
        after = paging.decode(token, filters)
        query = repo.courses(principal.tenant_id, state=state or ACTIVE, org_id=org_id)
        async with self.db.reader() as session:
            if not subject:
                rows = await repo.page_by_id(
                    session, query, RosterCourse.id, limit, after[1] if after else None
                )
            else:
                # Subjects are a short JSON list: filtered here, page by page, until full.
                rows, cursor = [], after[1] if after else None
                while len(rows) < limit:
                    batch = await repo.page_by_id(session, query, RosterCourse.id, 200, cursor)
                    for row in batch:
                        if subject.lower() in (s.lower() for s in row.subjects):
                            rows.append(row)
                            if len(rows) == limit:
                                break
                    if len(batch) < 200:
                        break
                    cursor = batch[-1].id
        return rows, _next(rows, limit, filters)

    async def update_course(
        self, principal: Principal, course_id: str, data: CourseInput, paths, etag: str
    ):
        principal.require(WRITE)
        self._validate_course(data, set(paths))
        async with self._scope(principal) as uow:
            session, tenant = uow.session, principal.tenant_id
            row = await repo.get(session, RosterCourse, tenant, course_id, lock=True)
            if row is None:
                raise _not_found("course", "COURSE_NOT_FOUND", course_id)
            _check_etag(row.version, etag)
            await self._check_course_refs(
                session,
                tenant,
                data.org_id if "org_id" in paths else "",
                data.school_year_session_id if "school_year_session_id" in paths else "",
            )
            if "external_id" in paths:
                await self._check_external(session, RosterCourse, tenant, row, data.external_id)
            values = {p: getattr(data, p) for p in paths}
            for name in ("school_year_session_id", "external_id"):
                if name in values:
                    values[name] = values[name] or None
            changed = _apply(row, values)
            if changed:
                uow.emit(
                    ev.CourseUpdated(
                        course_id=row.id, external_id=row.external_id or "", changed_fields=changed
                    )
                )
        return row

    # Classes -----------------------------------------------------------------------------------

    def _validate_class(self, data: ClassInput, paths: set[str] | None) -> None:
        problems = _Problems()

        def on(name):
            return paths is None or name in paths

        if on("title"):
            _text(problems, "course_class.title", data.title, MAX_NAME, required=True)
        if on("course_id") and not data.course_id:
            problems.add("course_class.course_id", "is required")
        if on("external_id"):
            _external_id(problems, "course_class.external_id", data.external_id)
        for name in ("class_code", "subject", "level"):
            if on(name):
                _text(problems, f"course_class.{name}", getattr(data, name), MAX_CODE)
        if on("time_zone"):
            problems.zone("course_class.time_zone", data.time_zone)
        if on("capacity") and data.capacity < 0:
            problems.add("course_class.capacity", "must not be negative")
        if on("academic_session_ids"):
            _strings(problems, "course_class.academic_session_ids", data.academic_session_ids, 64)
        if on("metadata"):
            _metadata(problems, "course_class.metadata", data.metadata)
        if on("state") and paths is not None and data.state not in RECORD_STATES:
            problems.add("course_class.state", "must be ACTIVE or INACTIVE")
        problems.raise_if_any()

    async def _check_class_refs(
        self, session, tenant: str, course_id: str, org_id: str, session_ids: list[str]
    ) -> str:
        """Checks the references; returns the org id (the course's when none is given)."""
        course = None
        if course_id:
            course = await repo.get(session, RosterCourse, tenant, course_id)
            if course is None:
                raise _not_found("course", "COURSE_NOT_FOUND", course_id)
        if org_id and await repo.get(session, RosterOrg, tenant, org_id) is None:
            raise _not_found("organisation", "ORG_NOT_FOUND", org_id)
        found = await repo.get_many(session, RosterAcademicSession, tenant, session_ids)
        for sid in session_ids:
            if sid not in found:
                raise _not_found("academic session", "ACADEMIC_SESSION_NOT_FOUND", sid)
        return org_id or (course.org_id if course else "")

    async def create_class(self, principal: Principal, data: ClassInput, idempotency):
        principal.require(WRITE)
        self._validate_class(data, None)

        async def body(uow: UnitOfWork) -> ClassView:
            session, tenant = uow.session, principal.tenant_id
            org_id = await self._check_class_refs(
                session, tenant, data.course_id, data.org_id, data.academic_session_ids
            )
            if data.external_id and await repo.by_external_id(
                session, RosterClass, tenant, data.external_id
            ):
                raise _external_taken(data.external_id)
            now = utcnow()
            row = RosterClass(
                id=new_id("cls"),
                tenant_id=tenant,
                external_id=data.external_id or None,
                state=data.state if data.state in RECORD_STATES else ACTIVE,
                course_id=data.course_id,
                title=data.title.strip(),
                class_code=data.class_code,
                subject=data.subject,
                level=data.level,
                time_zone=data.time_zone,
                org_id=org_id,
                academic_session_ids=list(dict.fromkeys(data.academic_session_ids)),
                capacity=data.capacity,
                labels=dict(data.metadata),
                version=1,
                import_id=None,
                create_time=now,
                update_time=now,
            )
            session.add(row)
            await session.flush()
            await repo.set_class_sessions(session, tenant, row.id, row.academic_session_ids)
            uow.emit(
                ev.ClassCreated(
                    class_id=row.id,
                    external_id=row.external_id or "",
                    course_id=row.course_id,
                    org_id=row.org_id,
                )
            )
            return ClassView(row, [], 0)

        return await run_idempotent(lambda: self._scope(principal), idempotency, body)

    async def _class_views(self, session, tenant: str, rows: list[RosterClass]) -> list[ClassView]:
        instructors, counts = await repo.class_members(
            session,
            tenant,
            [r.id for r in rows],
            active=E_ACTIVE,
            instructor=E_INSTRUCTOR,
            learner=E_LEARNER,
        )
        return [ClassView(r, instructors[r.id], counts[r.id]) for r in rows]

    async def get_class(self, principal: Principal, class_id: str) -> ClassView:
        principal.require(READ)
        async with self.db.reader() as session:
            row = await repo.get(session, RosterClass, principal.tenant_id, class_id)
            if row is None:
                raise _not_found("class", "CLASS_NOT_FOUND", class_id)
            return (await self._class_views(session, principal.tenant_id, [row]))[0]

    async def list_classes(
        self,
        principal: Principal,
        *,
        course_id: str,
        org_id: str,
        person_id: str,
        academic_session_id: str,
        state: int,
        size: int,
        token: str,
    ):
        principal.require(READ)
        _check_filters(state=state)
        limit = paging.page_size(size)
        filters = [course_id, org_id, person_id, academic_session_id, state]
        after = paging.decode(token, filters)
        query = repo.classes(
            principal.tenant_id,
            state=state or ACTIVE,
            course_id=course_id,
            org_id=org_id,
            person_id=person_id,
            academic_session_id=academic_session_id,
            active_enrollment=E_ACTIVE,
        )
        async with self.db.reader() as session:
            rows = await repo.page_by_id(
                session, query, RosterClass.id, limit, after[1] if after else None
            )
            views = await self._class_views(session, principal.tenant_id, rows)
        return views, _next(rows, limit, filters)

    async def update_class(
        self, principal: Principal, class_id: str, data: ClassInput, paths, etag: str
    ) -> ClassView:
        principal.require(WRITE)
        self._validate_class(data, set(paths))
        async with self._scope(principal) as uow:
            session, tenant = uow.session, principal.tenant_id
            row = await repo.get(session, RosterClass, tenant, class_id, lock=True)
            if row is None:
                raise _not_found("class", "CLASS_NOT_FOUND", class_id)
            _check_etag(row.version, etag)
            await self._check_class_refs(
                session,
                tenant,
                data.course_id if "course_id" in paths else "",
                data.org_id if "org_id" in paths else "",
                data.academic_session_ids if "academic_session_ids" in paths else [],
            )
            if "external_id" in paths:
                await self._check_external(session, RosterClass, tenant, row, data.external_id)
            if "capacity" in paths and data.capacity:
                count = await repo.count_active(
                    session, tenant, active=E_ACTIVE, class_id=row.id, role=E_LEARNER
                )
                if data.capacity < count:
                    raise FailedPrecondition(
                        f"the class has {count} active learners, more than the capacity",
                        reason="CAPACITY_BELOW_ENROLLMENT",
                    )
            values = {p: getattr(data, p) for p in paths}
            if "external_id" in values:
                values["external_id"] = values["external_id"] or None
            if "org_id" in values and not values["org_id"]:
                raise InvalidArgument(FieldViolation("course_class.org_id", "is required"))
            if "metadata" in values:
                values["labels"] = values.pop("metadata")
            if "academic_session_ids" in values:
                values["academic_session_ids"] = list(dict.fromkeys(values["academic_session_ids"]))
            changed = _apply(row, values)
            if "academic_session_ids" in changed:
                await repo.set_class_sessions(session, tenant, row.id, row.academic_session_ids)
            if changed:
                uow.emit(
                    ev.ClassUpdated(
                        class_id=row.id,
                        external_id=row.external_id or "",
                        changed_fields=["metadata" if c == "labels" else c for c in changed],
                    )
                )
            view = (await self._class_views(session, tenant, [row]))[0]
        return view

    # Enrollments -------------------------------------------------------------------------------

    async def create_enrollment(
        self, principal: Principal, data: EnrollmentInput, idempotency
    ) -> RosterEnrollment:
        principal.require(WRITE)
        problems = _Problems()
        if not data.person_id:
            problems.add("enrollment.person_id", "is required")
        if not data.class_id:
            problems.add("enrollment.class_id", "is required")
        if data.role not in ENROLLMENT_ROLES:
            problems.add("enrollment.role", "must be LEARNER, INSTRUCTOR or STAFF")
        elif data.primary and data.role != E_INSTRUCTOR:
            problems.add("enrollment.primary", "is only for instructors")
        _external_id(problems, "enrollment.external_id", data.external_id)
        if data.begin_time and data.end_time and data.end_time <= data.begin_time:
            problems.order("enrollment.end_time", "must be after begin_time")
        problems.raise_if_any()

        async def body(uow: UnitOfWork) -> RosterEnrollment:
            session, tenant = uow.session, principal.tenant_id
            person = await repo.get(session, RosterPerson, tenant, data.person_id)
            if person is None:
                raise _person_not_found(data.person_id)
            # The class row is locked so concurrent enrollments count seats one at a time.
            course_class = await repo.get(session, RosterClass, tenant, data.class_id, lock=True)
            if course_class is None:
                raise _not_found("class", "CLASS_NOT_FOUND", data.class_id)
            needed = ROLE_FOR_ENROLLMENT[data.role]
            if needed not in person.roles:
                raise FailedPrecondition(
                    f"the person lacks the {pb.PersonRole.Name(needed)} role",
                    reason="ROLE_REQUIRED",
                    metadata={"role": pb.PersonRole.Name(needed)},
                )
            if person.state != ACTIVE or course_class.state != ACTIVE:
                raise FailedPrecondition(
                    "the person or the class is inactive", reason="RECORD_INACTIVE"
                )
            if await repo.active_enrollment_of(
                session, tenant, person.id, course_class.id, data.role, E_ACTIVE
            ):
                raise AlreadyExists(
                    "the person already has an active enrollment in the class with that role",
                    reason="ENROLLMENT_EXISTS",
                )
            if data.role == E_LEARNER and course_class.capacity:
                count = await repo.count_active(
                    session, tenant, active=E_ACTIVE, class_id=course_class.id, role=E_LEARNER
                )
                if count >= course_class.capacity:
                    raise FailedPrecondition("the class is full", reason="CLASS_FULL")
            if data.external_id and await repo.by_external_id(
                session, RosterEnrollment, tenant, data.external_id
            ):
                raise _external_taken(data.external_id)
            now = utcnow()
            begin = data.begin_time or now
            if data.end_time and data.end_time <= begin:
                raise InvalidArgument(
                    FieldViolation("enrollment.end_time", "must be after begin_time"),
                    reason="END_BEFORE_START",
                )
            row = RosterEnrollment(
                id=new_id("enr"),
                tenant_id=tenant,
                external_id=data.external_id or None,
                person_id=person.id,
                class_id=course_class.id,
                role=data.role,
                primary=data.primary,
                state=E_ACTIVE,
                begin_time=begin,
                end_time=data.end_time,
                end_reason="",
                import_id=None,
                create_time=now,
            )
            session.add(row)
            await session.flush()
            uow.emit(_enrollment_created(row))
            if data.end_time is not None:
                await self._schedule_end(uow, row)
            return row

        return await run_idempotent(lambda: self._scope(principal), idempotency, body)

    async def get_enrollment(self, principal: Principal, enrollment_id: str) -> RosterEnrollment:
        principal.require(READ)
        async with self.db.reader() as session:
            row = await repo.get(session, RosterEnrollment, principal.tenant_id, enrollment_id)
        if row is None:
            raise _not_found("enrollment", "ENROLLMENT_NOT_FOUND", enrollment_id)
        return row

    async def list_enrollments(
        self,
        principal: Principal,
        *,
        class_id: str,
        person_id: str,
        role: int,
        state: int,
        size: int,
        token: str,
    ):
        principal.require(READ)
        problems = Violations()
        if role and role not in ENROLLMENT_ROLES:
            problems.add("role", "must be an enrollment role")
        if state and state not in ENROLLMENT_STATES:
            problems.add("state", "must be an enrollment state")
        limit = paging.page_size(size)
        problems.raise_if_any()
        filters = [class_id, person_id, role, state]
        after = paging.decode(token, filters)
        query = repo.enrollments(
            principal.tenant_id,
            state=state or E_ACTIVE,
            class_id=class_id,
            person_id=person_id,
            role=role,
        )
        async with self.db.reader() as session:
            rows = await repo.page_by_id(
                session, query, RosterEnrollment.id, limit, after[1] if after else None
            )
        return rows, _next(rows, limit, filters)

    async def end_enrollment(
        self, principal: Principal, enrollment_id: str, end_time: datetime | None, reason: str
    ) -> RosterEnrollment:
        principal.require(WRITE)
        if len(reason) > 500:
            raise InvalidArgument(FieldViolation("reason", "must be at most 500 characters"))
        async with self._scope(principal) as uow:
            row = await repo.get(
                uow.session, RosterEnrollment, principal.tenant_id, enrollment_id, lock=True
            )
            if row is None:
                raise _not_found("enrollment", "ENROLLMENT_NOT_FOUND", enrollment_id)
            if row.state == E_ENDED:
                raise FailedPrecondition(
                    "the enrollment has already ended", reason="ENROLLMENT_ALREADY_ENDED"
                )
            now = utcnow()
            at = end_time or now
            if at < row.begin_time:
                raise InvalidArgument(
                    FieldViolation("end_time", "must not be before the enrollment's begin_time"),
                    reason="END_BEFORE_START",
                )
            if at <= now:
                self._end(uow, row, at, reason)
            else:
                row.end_time = at
                row.end_reason = reason
                await self._schedule_end(uow, row)
        return row

    def _end(self, uow: UnitOfWork, row: RosterEnrollment, at: datetime, reason: str, **kw):
        row.state = E_ENDED
        row.end_time = min(at, row.end_time) if row.end_time else at
        row.end_reason = reason
        event = ev.EnrollmentEnded(
            enrollment_id=row.id,
            person_id=row.person_id,
            class_id=row.class_id,
            role=pb.EnrollmentRole.Name(row.role),
            reason=reason,
            **kw,
        )
        event.end_time.FromDatetime(row.end_time)
        uow.emit(event)

    async def _schedule_end(self, uow: UnitOfWork, row: RosterEnrollment) -> None:
        if self.timers is None or row.end_time is None:
            return
        await self.timers.cancel(uow, ENROLLMENT_END_TIMER, row.id)
        await self.timers.schedule(
            uow, ENROLLMENT_END_TIMER, row.id, row.end_time, {"enrollment_id": row.id}
        )

    async def _enrollment_end_due(self, timer: DueTimer, uow: UnitOfWork) -> None:
        row = await repo.get(uow.session, RosterEnrollment, uow.tenant_id, timer.key, lock=True)
        # Ended meanwhile, or its end moved later (a newer timer covers it): nothing to do.
        if row is None or row.state != E_ACTIVE or row.end_time is None:
            return
        if row.end_time > utcnow():
            return
        self._end(uow, row, row.end_time, row.end_reason)

    # Imports -----------------------------------------------------------------------------------

    async def get_import(self, principal: Principal, import_id: str) -> RosterImport:
        principal.require(READ)
        async with self.db.reader() as session:
            row = await repo.get(session, RosterImport, principal.tenant_id, import_id)
        if row is None:
            raise _not_found("roster import", "ROSTER_IMPORT_NOT_FOUND", import_id)
        return row

    async def list_imports(self, principal: Principal, state: int, size: int, token: str):
        principal.require(READ)
        if state and state not in IMPORT_STATES:
            raise InvalidArgument(FieldViolation("state", "must be a roster import state"))
        limit = paging.page_size(size)
        after = paging.decode(token, [state])
        async with self.db.reader() as session:
            rows = await core_repo.page(
                session,
                repo.imports(principal.tenant_id, state=state),
                RosterImport.create_time,
                RosterImport.id,
                limit,
                after,
                newest_first=True,
            )
        return rows, paging.next_token(rows, limit, "create_time", [state])

    async def import_oneroster(
        self,
        principal: Principal,
        options: ImportOptions,
        files: dict[str, bytes],
        file_sizes: dict[str, int],
        idempotency: IdempotencyKey | None,
    ) -> RosterImport:
        """Validates every row, then applies everything in one transaction or nothing."""
        principal.require(WRITE)
        if sum(file_sizes.values()) > MAX_IMPORT_BYTES:
            raise ResourceExhausted("the import is over the size limit", reason="IMPORT_TOO_LARGE")
        tenant = principal.tenant_id
        if idempotency is not None:
            async with self.db.reader() as session:
                record = await core_repo.get_idempotency_record(
                    session, tenant, idempotency.method, idempotency.request_id
                )
            if record is not None:
                if record.fingerprint != idempotency.fingerprint:
                    raise AlreadyExists(
                        "request_id was already used for a different request",
                        reason="REQUEST_ID_REUSED",
                        metadata={"request_id": idempotency.request_id},
                    )
                return await self.get_import(principal, idempotency.decode(record.response))
        import_id = await self._start_import(principal, options, file_sizes)
        try:
            return await self._run_import(principal, import_id, options, files, idempotency)
        except BaseException:
            await self._abandon_import(tenant, import_id)
            raise

    async def _start_import(self, principal, options: ImportOptions, file_sizes) -> str:
        async with self._scope(principal) as uow:
            session = uow.session
            # Locking the tenant row serialises import starts of one tenant on PostgreSQL;
            # SQLite writers are serial anyway.
            await session.execute(
                Tenant.__table__.select().where(Tenant.id == principal.tenant_id).with_for_update()
            )
            now = utcnow()
            if await repo.running_import(
                session, principal.tenant_id, pb.ROSTER_IMPORT_STATE_RUNNING, now - STALE_IMPORT
            ):
                raise Aborted(
                    "another roster import of the tenant is running", reason="IMPORT_IN_PROGRESS"
                )
            row = RosterImport(
                id=new_id("imp"),
                tenant_id=principal.tenant_id,
                state=pb.ROSTER_IMPORT_STATE_RUNNING,
                mode=options.mode,
                dry_run=options.dry_run,
                file_sizes=dict(file_sizes),
                counts=[],
                report={},
                created_by_api_key_id=principal.api_key_id,
                create_time=now,
                complete_time=None,
            )
            session.add(row)
        return row.id

    async def _abandon_import(self, tenant: str, import_id: str) -> None:
        try:
            async with self.uow(tenant) as uow:
                row = await repo.get(uow.session, RosterImport, tenant, import_id)
                if row is not None and row.state == pb.ROSTER_IMPORT_STATE_RUNNING:
                    row.state = pb.ROSTER_IMPORT_STATE_FAILED
                    row.complete_time = utcnow()
                    row.report = {"errors": [], "warnings": [], "aborted": True}
        except Exception:  # the original error matters more; the stale-import window covers it
            pass

    async def _run_import(
        self, principal, import_id: str, options: ImportOptions, files, idempotency
    ) -> RosterImport:
        tenant = principal.tenant_id
        async with self.db.reader() as session:
            existing = await oneroster_existing(session, tenant)
        async with self._parse_lock:
            result = await asyncio.to_thread(
                oneroster.parse_and_validate, files, options.mode, existing.refs()
            )

        async def body(uow: UnitOfWork) -> str:
            row = await repo.get(uow.session, RosterImport, tenant, import_id)
            counts: dict[int, dict[str, int]] = {}
            if not result.errors:
                # Re-read inside the writing transaction: what is applied is diffed against the
                # state it replaces, not against the snapshot taken for validation.
                current = await oneroster_existing(uow.session, tenant)
                counts = await apply_import(
                    uow, tenant, import_id, result, current, dry_run=options.dry_run
                )
            else:
                counts = result.row_counts()
            row.counts = [{"entity": k, **v} for k, v in sorted(counts.items())]
            row.report = {
                "errors": [i.to_json() for i in result.errors],
                "warnings": [i.to_json() for i in result.warnings],
            }
            row.complete_time = utcnow()
            mode_name = pb.ImportMode.Name(options.mode)
            if result.errors:
                row.state = pb.ROSTER_IMPORT_STATE_FAILED
                uow.emit(
                    ev.RosterImportFailed(
                        roster_import_id=import_id,
                        dry_run=options.dry_run,
                        mode=mode_name,
                        error_count=len(result.errors),
                        warning_count=len(result.warnings),
                        files_with_errors=sorted({i.file for i in result.errors}),
                    )
                )
            else:
                row.state = (
                    pb.ROSTER_IMPORT_STATE_VALIDATED
                    if options.dry_run
                    else pb.ROSTER_IMPORT_STATE_SUCCEEDED
                )
                uow.emit(
                    ev.RosterImportCompleted(
                        roster_import_id=import_id,
                        dry_run=options.dry_run,
                        mode=mode_name,
                        counts=[
                            ev.RosterImportCounts(entity=pb.ImportEntity.Name(k), **v)
                            for k, v in sorted(counts.items())
                        ],
                        warning_count=len(result.warnings),
                    )
                )
            return import_id

        await run_idempotent(lambda: self._scope(principal), idempotency, body)
        return await self.get_import(principal, import_id)


# Helpers ------------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _next(rows: list, limit: int, filters) -> str:
    if len(rows) < limit:
        return ""
    return paging.encode(_EPOCH, rows[-1].id, filters)


def _check_filters(*, state: int = 0, enum_ok: bool = True, name: str = "") -> None:
    problems = Violations()
    if state and state not in RECORD_STATES:
        problems.add("state", "must be a record state")
    if not enum_ok:
        problems.add(name, "is not a known value")
    problems.raise_if_any()


def _apply(row, values: dict[str, Any]) -> list[str]:
    """Sets changed attributes; bumps version and update time when anything changed."""
    changed = []
    for name, value in values.items():
        if isinstance(value, str) and name not in ("external_id",):
            value = value.strip() if name in ("name", "title") else value
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed.append(name)
    if changed:
        row.version += 1
        row.update_time = utcnow()
    return changed


def _merge_nested(row, name: str, value, wanted: set[str], put: Callable, empty) -> None:
    """Applies `name` whole, or the sub-fields of it that the mask names (then the changed
    paths are the sub-fields, as the mask named them)."""
    if name in wanted:
        put(name, value if value is not None else empty)
        return
    subs = sorted(p.split(".", 1)[1] for p in wanted if p.startswith(name + "."))
    if not subs:
        return
    before = dict(getattr(row, name) or {})
    current = dict(before)
    source = value or {}
    for sub in subs:
        if sub in source:
            current[sub] = source[sub]
        else:
            current.pop(sub, None)
    changed = [f"{name}.{sub}" for sub in subs if before.get(sub) != current.get(sub)]
    if changed:
        put(name, current, changed)


def _linked_event(link: RosterGuardianLink, import_id: str = "") -> ev.GuardianLinked:
    return ev.GuardianLinked(
        learner_id=link.learner_id,
        guardian_id=link.guardian_id,
        relationship=pb.GuardianRelationship.Name(link.relationship),
        receives_notices=link.receives_notices,
        roster_import_id=import_id,
    )


def _enrollment_created(row: RosterEnrollment, import_id: str = "") -> ev.EnrollmentCreated:
    event = ev.EnrollmentCreated(
        enrollment_id=row.id,
        external_id=row.external_id or "",
        person_id=row.person_id,
        class_id=row.class_id,
        role=pb.EnrollmentRole.Name(row.role),
        primary=row.primary,
        roster_import_id=import_id,
    )
    event.begin_time.FromDatetime(row.begin_time)
    return event


# OneRoster import: applying a validated data set ------------------------------------------------


@dataclass
class Existing:
    """The tenant's records that carry an external id, by external id."""

    orgs: dict[str, RosterOrg]
    sessions: dict[str, RosterAcademicSession]
    courses: dict[str, RosterCourse]
    classes: dict[str, RosterClass]
    people: dict[str, RosterPerson]
    enrollments: dict[str, RosterEnrollment]
    links: dict[tuple[str, str], RosterGuardianLink]

    def refs(self) -> oneroster.Refs:
        return oneroster.Refs(
            orgs=set(self.orgs),
            sessions=set(self.sessions),
            courses=set(self.courses),
            classes=set(self.classes),
            users={k: set(p.roles) for k, p in self.people.items()},
        )


async def oneroster_existing(session, tenant: str) -> Existing:
    async def by_external(model):
        return {r.external_id: r for r in await repo.with_external_ids(session, model, tenant)}

    return Existing(
        orgs=await by_external(RosterOrg),
        sessions=await by_external(RosterAcademicSession),
        courses=await by_external(RosterCourse),
        classes=await by_external(RosterClass),
        people=await by_external(RosterPerson),
        enrollments=await by_external(RosterEnrollment),
        links={(r.learner_id, r.guardian_id): r for r in await repo.import_links(session, tenant)},
    )


def _day_start(value: date) -> datetime:
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


class _Applier:
    """Diffs the import's rows against the stored records and writes the difference in bulk."""

    def __init__(self, uow: UnitOfWork, tenant: str, import_id: str, result, existing, dry_run):
        self.uow = uow
        self.tenant = tenant
        self.import_id = import_id
        self.result = result
        self.existing = existing
        self.dry_run = dry_run
        self.now = utcnow()
        self.counts: dict[int, dict[str, int]] = result.row_counts()
        self.events: list = []
        # sourcedId -> record id per kind: stored records first, the import's new ones added.
        self.ids: dict[str, dict[str, str]] = {
            kind: {sid: r.id for sid, r in stored.items()}
            for kind, stored in (
                ("org", existing.orgs),
                ("session", existing.sessions),
                ("course", existing.courses),
                ("class", existing.classes),
                ("user", existing.people),
            )
        }

    def emit(self, event) -> None:
        if not self.dry_run:
            self.events.append(event)

    def resolve(self, kind: str, sid: str) -> str | None:
        if not sid:
            return None
        return self.ids[kind].get(sid)

    def assign_ids(self, kind: str, file: str, stored: dict, prefix: str) -> None:
        ids = self.ids[kind]
        for sid in self.result.of(file):
            ids.setdefault(sid, new_id(prefix))

    async def upsert(
        self,
        *,
        file: str,
        kind: str,
        model,
        stored: dict,
        target: Callable[[oneroster.Row], dict[str, Any]],
        create_extra: Callable[[str], dict[str, Any]],
        created_event: Callable[[str, str, dict], Any],
        updated_event: Callable[[str, str, list[str]], Any],
        deferred: tuple[str, ...] = (),
    ) -> tuple[list[str], list[str]]:
        """Creates, updates and deactivates one kind of record; returns the ids created and
        the ids whose values changed. `deferred` columns (self references) are set after all
        rows exist."""
        if file not in self.result.modes:
            return [], []
        entity = oneroster.ENTITY_OF[file]
        counts = self.counts[entity]
        inserts, updates, later = [], [], []
        created, changed_ids = [], []
        rows = self.result.of(file)
        for sid, row in rows.items():
            values = target(row)
            if row.status == "tobedeleted":
                values = {"state": INACTIVE}
            current = stored.get(sid)
            if current is None:
                if row.status == "tobedeleted":
                    counts["unchanged"] += 1
                    continue
                record_id = self.ids[kind][sid]
                insert = {
                    "id": record_id,
                    "tenant_id": self.tenant,
                    "external_id": sid,
                    "version": 1,
                    "import_id": self.import_id,
                    "create_time": self.now,
                    "update_time": self.now,
                    **create_extra(record_id),
                    **values,
                }
                for name in deferred:
                    if insert.get(name):
                        later.append({"id": record_id, name: insert[name]})
                    insert[name] = None
                inserts.append(insert)
                created.append(record_id)
                counts["created"] += 1
                self.emit(created_event(record_id, sid, insert))
                continue
            diff = [name for name, value in values.items() if getattr(current, name) != value]
            if not diff:
                counts["unchanged"] += 1
                continue
            update = {name: values[name] for name in diff}
            if update.get("state") == INACTIVE and current.state == ACTIVE:
                counts["deactivated"] += 1
            else:
                counts["updated"] += 1
            update.update(
                id=current.id,
                version=current.version + 1,
                update_time=self.now,
                import_id=self.import_id,
            )
            updates.append(update)
            changed_ids.append(current.id)
            self.emit(
                updated_event(current.id, sid, ["metadata" if d == "labels" else d for d in diff])
            )
        if self.result.modes[file] == "bulk":
            for sid, current in stored.items():
                if sid in rows or current.import_id is None or current.state != ACTIVE:
                    continue
                counts["deactivated"] += 1
                updates.append(
                    {
                        "id": current.id,
                        "state": INACTIVE,
                        "version": current.version + 1,
                        "update_time": self.now,
                        "import_id": self.import_id,
                    }
                )
                changed_ids.append(current.id)
                self.emit(updated_event(current.id, sid, ["state"]))
        if not self.dry_run:
            session = self.uow.session
            await repo.insert_rows(session, model, inserts)
            await repo.update_rows(session, model, updates)
            await repo.update_rows(session, model, later)
        return created, changed_ids

    # Per kind -------------------------------------------------------------------------------

    async def orgs(self) -> None:
        stored = self.existing.orgs
        self.assign_ids("org", "orgs.csv", stored, "org")

        def target(row):
            v = row.values
            return {
                "state": ACTIVE,
                "name": v["name"],
                "type": oneroster.ORG_TYPES[v["type"]],
                "identifier": v.get("identifier", ""),
                "parent_id": self.resolve("org", v.get("parentSourcedId", "")),
            }

        await self.upsert(
            file="orgs.csv",
            kind="org",
            model=RosterOrg,
            stored=stored,
            target=target,
            create_extra=lambda _id: {"time_zone": ""},
            created_event=lambda i, sid, _v: ev.OrgCreated(
                org_id=i, external_id=sid, roster_import_id=self.import_id
            ),
            updated_event=lambda i, sid, diff: ev.OrgUpdated(
                org_id=i, external_id=sid, changed_fields=diff, roster_import_id=self.import_id
            ),
            deferred=("parent_id",),
        )

    async def sessions(self) -> None:
        stored = self.existing.sessions
        self.assign_ids("session", "academicSessions.csv", stored, "as")

        def target(row):
            v = row.values
            return {
                "state": ACTIVE,
                "title": v["title"],
                "type": oneroster.SESSION_TYPES[v["type"]],
                "start_date": date.fromisoformat(v["startDate"]),
                "end_date": date.fromisoformat(v["endDate"]),
                "parent_id": self.resolve("session", v.get("parentSourcedId", "")),
                "school_year": int(v["schoolYear"]),
            }

        await self.upsert(
            file="academicSessions.csv",
            kind="session",
            model=RosterAcademicSession,
            stored=stored,
            target=target,
            create_extra=lambda _id: {"org_id": None},
            created_event=lambda i, sid, _v: ev.AcademicSessionCreated(
                academic_session_id=i, external_id=sid, roster_import_id=self.import_id
            ),
            updated_event=lambda i, sid, diff: ev.AcademicSessionUpdated(
                academic_session_id=i,
                external_id=sid,
                changed_fields=diff,
                roster_import_id=self.import_id,
            ),
            deferred=("parent_id",),
        )

    async def courses(self) -> None:
        stored = self.existing.courses
        self.assign_ids("course", "courses.csv", stored, "crs")

        def target(row):
            v = row.values
            return {
                "state": ACTIVE,
                "title": v["title"],
                "course_code": v.get("courseCode", ""),
                "org_id": self.resolve("org", v["orgSourcedId"]),
                "school_year_session_id": self.resolve("session", v.get("schoolYearSourcedId", "")),
                "subjects": oneroster.split(v.get("subjects", "")),
                "grades": oneroster.split(v.get("grades", "")),
            }

        await self.upsert(
            file="courses.csv",
            kind="course",
            model=RosterCourse,
            stored=stored,
            target=target,
            create_extra=lambda _id: {"labels": {}},
            created_event=lambda i, sid, v: ev.CourseCreated(
                course_id=i, external_id=sid, org_id=v["org_id"], roster_import_id=self.import_id
            ),
            updated_event=lambda i, sid, diff: ev.CourseUpdated(
                course_id=i, external_id=sid, changed_fields=diff, roster_import_id=self.import_id
            ),
        )

    async def classes(self) -> None:
        stored = self.existing.classes
        self.assign_ids("class", "classes.csv", stored, "cls")

        def target(row):
            v = row.values
            subjects = oneroster.split(v.get("subjects", ""))
            grades = oneroster.split(v.get("grades", ""))
            return {
                "state": ACTIVE,
                "title": v["title"],
                "course_id": self.resolve("course", v["courseSourcedId"]),
                "class_code": v.get("classCode", ""),
                "org_id": self.resolve("org", v["schoolSourcedId"]),
                "academic_session_ids": [
                    self.resolve("session", t) for t in oneroster.split(v["termSourcedIds"])
                ],
                "subject": subjects[0] if subjects else "",
                "level": grades[0] if len(grades) == 1 else "",
            }

        created, changed = await self.upsert(
            file="classes.csv",
            kind="class",
            model=RosterClass,
            stored=stored,
            target=target,
            create_extra=lambda _id: {"labels": {}, "capacity": 0, "time_zone": ""},
            created_event=lambda i, sid, v: ev.ClassCreated(
                class_id=i,
                external_id=sid,
                course_id=v["course_id"],
                org_id=v["org_id"],
                roster_import_id=self.import_id,
            ),
            updated_event=lambda i, sid, diff: ev.ClassUpdated(
                class_id=i, external_id=sid, changed_fields=diff, roster_import_id=self.import_id
            ),
        )
        if self.dry_run or not (created or changed):
            return
        session = self.uow.session
        touched = set(created) | set(changed)
        await repo.delete_where_in(session, RosterClassSession.class_id, touched)
        pairs = []
        for sid, row in self.result.of("classes.csv").items():
            class_id = self.ids["class"][sid]
            if class_id not in touched or row.status == "tobedeleted":
                continue
            for term in dict.fromkeys(oneroster.split(row.values["termSourcedIds"])):
                pairs.append(
                    {
                        "class_id": class_id,
                        "academic_session_id": self.resolve("session", term),
                        "tenant_id": self.tenant,
                    }
                )
        await repo.insert_rows(session, RosterClassSession, pairs)

    async def people(self) -> None:
        stored = self.existing.people
        self.assign_ids("user", "users.csv", stored, "per")
        user_roles = self.result.user_roles

        def target(row):
            v = row.values
            current = stored.get(row.sid)
            if row.sid in user_roles:
                roles, _rel, org_sids = user_roles[row.sid]
                roles = sorted(roles)
            else:
                roles, org_sids = (list(current.roles) if current else []), []
            primary = v.get("primaryOrgSourcedId", "")
            if primary:
                org_sids = [primary, *[o for o in org_sids if o != primary]]
            if org_sids or current is None:
                org_ids = list(dict.fromkeys(self.resolve("org", o) for o in org_sids))
            else:
                org_ids = list(current.org_ids)
            channels = [c for c in (current.contact_channels if current else [])]
            channels = [c for c in channels if not str(c.get("id", "")).startswith("sis-")]
            if v.get("email"):
                channels.append({"id": "sis-email", "email": v["email"], "label": "oneroster"})
            if v.get("sms"):
                channels.append({"id": "sis-sms", "phone_number": v["sms"], "label": "oneroster"})
            enabled = oneroster._bool(v.get("enabledUser", "true")) is not False
            return {
                "state": ACTIVE if enabled else INACTIVE,
                "roles": roles,
                "role_bits": role_bits(roles),
                "given_name": v.get("preferredGivenName") or v["givenName"],
                "family_name": v.get("preferredFamilyName") or v["familyName"],
                "org_ids": org_ids,
                "grades": oneroster.split(v.get("grades", "")),
                "contact_channels": channels,
            }

        def created_event(i, sid, v):
            return ev.PersonCreated(
                person_id=i,
                external_id=sid,
                roles=role_names(v["roles"]),
                roster_import_id=self.import_id,
            )

        def updated_event(i, sid, diff):
            roles = user_roles.get(sid, (set(), 0, []))[0] or (
                stored[sid].roles if sid in stored else []
            )
            return ev.PersonUpdated(
                person_id=i,
                external_id=sid,
                changed_fields=[d for d in diff if d != "role_bits"],
                roles=role_names(sorted(roles)),
                roster_import_id=self.import_id,
            )

        created, changed = await self.upsert(
            file="users.csv",
            kind="user",
            model=RosterPerson,
            stored=stored,
            target=target,
            create_extra=lambda _id: {
                "display_name": "",
                "time_zone": "",
                "locale": "",
                "notification_settings": {},
                "consents": [],
                "instructor_profile": None,
                "learner_profile": None,
                "labels": {},
                "delete_time": None,
            },
            created_event=created_event,
            updated_event=updated_event,
        )
        if self.dry_run or not (created or changed):
            return
        session = self.uow.session
        touched = set(created) | set(changed)
        await repo.delete_where_in(session, RosterPersonOrg.person_id, touched)
        memberships = []
        for sid, row in self.result.of("users.csv").items():
            person_id = self.ids["user"][sid]
            if person_id not in touched or row.status == "tobedeleted":
                continue
            for org_id in target(row)["org_ids"]:
                memberships.append(
                    {"person_id": person_id, "org_id": org_id, "tenant_id": self.tenant}
                )
        await repo.insert_rows(session, RosterPersonOrg, memberships)

    async def links(self) -> None:
        if "users.csv" not in self.result.modes:
            return
        counts = self.counts[pb.IMPORT_ENTITY_GUARDIAN_LINK]
        people = self.ids["user"]
        wanted = {
            (people[learner], people[guardian]): relationship
            for (learner, guardian), relationship in self.result.links.items()
        }
        stored = self.existing.links
        inserts = []
        for (learner_id, guardian_id), relationship in wanted.items():
            current = stored.get((learner_id, guardian_id))
            if current is not None:
                if current.relationship == relationship:
                    counts["unchanged"] += 1
                    continue
                counts["updated"] += 1
                if not self.dry_run:
                    await repo.update_rows(
                        self.uow.session,
                        RosterGuardianLink,
                        [
                            {
                                "learner_id": learner_id,
                                "guardian_id": guardian_id,
                                "relationship": relationship,
                                "import_id": self.import_id,
                            }
                        ],
                    )
                continue
            link = {
                "learner_id": learner_id,
                "guardian_id": guardian_id,
                "tenant_id": self.tenant,
                "relationship": relationship,
                "receives_notices": True,
                "may_consent": relationship != pb.GUARDIAN_RELATIONSHIP_RELATIVE,
                "import_id": self.import_id,
                "create_time": self.now,
            }
            inserts.append(link)
            counts["created"] += 1
            self.emit(_linked_event(RosterGuardianLink(**link), self.import_id))
        removed = []
        if self.result.modes["users.csv"] == "bulk":
            for key, current in stored.items():
                if key not in wanted and current.import_id is not None:
                    removed.append(current)
        counts["deactivated"] += len(removed)
        if self.dry_run:
            return
        await repo.insert_rows(self.uow.session, RosterGuardianLink, inserts)
        for link in removed:
            await self.uow.session.delete(link)
            self.emit(
                ev.GuardianUnlinked(
                    learner_id=link.learner_id,
                    guardian_id=link.guardian_id,
                    roster_import_id=self.import_id,
                )
            )

    async def enrollments(self) -> None:
        file = "enrollments.csv"
        if file not in self.result.modes:
            return
        stored = self.existing.enrollments
        counts = self.counts[pb.IMPORT_ENTITY_ENROLLMENT]
        rows = self.result.of(file)
        inserts, updates = [], []
        for sid, row in rows.items():
            v = row.values
            begin_day = oneroster._date(v.get("beginDate", ""))
            end_day = oneroster._date(v.get("endDate", ""))
            current = stored.get(sid)
            begin = _day_start(begin_day) if begin_day else None
            # endDate is inclusive: the enrollment ends when that day does.
            end = _day_start(end_day) + timedelta(days=1) if end_day else None
            ended = row.status == "tobedeleted" or (end is not None and end <= self.now)
            values = {
                "person_id": self.resolve("user", v["userSourcedId"]),
                "class_id": self.resolve("class", v["classSourcedId"]),
                "role": oneroster.ENROLLMENT_ROLES[v["role"]],
                "primary": oneroster._bool(v.get("primary", "") or "false") is True,
            }
            if current is None:
                if row.status == "tobedeleted":
                    counts["unchanged"] += 1
                    continue
                record = RosterEnrollment(
                    id=new_id("enr"),
                    tenant_id=self.tenant,
                    external_id=sid,
                    state=E_ACTIVE,
                    begin_time=begin or self.now,
                    end_time=end,
                    end_reason="",
                    import_id=self.import_id,
                    create_time=self.now,
                    **values,
                )
                counts["created"] += 1
                self.emit(_enrollment_created(record, self.import_id))
                if ended:
                    self._end_event(record, end or self.now, "")
                inserts.append({c: getattr(record, c) for c in _ENROLLMENT_COLUMNS})
                continue
            if current.state == E_ENDED:
                counts["unchanged"] += 1
                continue
            if begin is not None:
                values["begin_time"] = begin
            values["end_time"] = end
            diff = {k: val for k, val in values.items() if getattr(current, k) != val}
            if ended:
                diff["state"] = E_ENDED
                diff["end_time"] = min(end or self.now, self.now)
                counts["deactivated"] += 1
                self._end_event(current, diff["end_time"], "")
            elif diff:
                counts["updated"] += 1
            else:
                counts["unchanged"] += 1
                continue
            updates.append({"id": current.id, "import_id": self.import_id, **diff})
        if self.result.modes[file] == "bulk":
            for sid, current in stored.items():
                if sid in rows or current.import_id is None or current.state != E_ACTIVE:
                    continue
                counts["deactivated"] += 1
                updates.append(
                    {
                        "id": current.id,
                        "state": E_ENDED,
                        "end_time": self.now,
                        "end_reason": "absent from a bulk import",
                        "import_id": self.import_id,
                    }
                )
                self._end_event(current, self.now, "absent from a bulk import")
        if not self.dry_run:
            await repo.insert_rows(self.uow.session, RosterEnrollment, inserts)
            await repo.update_rows(self.uow.session, RosterEnrollment, updates)

    def _end_event(self, row: RosterEnrollment, at: datetime, reason: str) -> None:
        event = ev.EnrollmentEnded(
            enrollment_id=row.id,
            person_id=row.person_id,
            class_id=row.class_id,
            role=pb.EnrollmentRole.Name(row.role),
            reason=reason,
            roster_import_id=self.import_id,
        )
        event.end_time.FromDatetime(at)
        self.emit(event)


_ENROLLMENT_COLUMNS = (
    "id",
    "tenant_id",
    "external_id",
    "person_id",
    "class_id",
    "role",
    "primary",
    "state",
    "begin_time",
    "end_time",
    "end_reason",
    "import_id",
    "create_time",
)


async def apply_import(
    uow: UnitOfWork, tenant: str, import_id: str, result, existing: Existing, *, dry_run: bool
) -> dict[int, dict[str, int]]:
    """Writes the import's changes in the caller's unit of work (nothing when `dry_run`) and
    returns the counts per kind of record."""
    applier = _Applier(uow, tenant, import_id, result, existing, dry_run)
    await applier.orgs()
    await applier.sessions()
    await applier.courses()
    await applier.classes()
    await applier.people()
    await applier.links()
    await applier.enrollments()
    # Queued on the unit of work: it numbers them in one reservation and writes them in one
    # batch at commit, so tens of thousands of changes cost two statements, not one per event.
    for payload in applier.events:
        uow.emit(payload)
    return applier.counts
