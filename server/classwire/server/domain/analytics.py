"""Analytics (QueryAttendance, QueryEngagement, QueryInstructorQuality) and ratings.

The queries read the rollup rows that events/rollups.py keeps up to date as events commit: one
row per (session, person), summed per (group, 15-minute slot) in the database through an index
range scan, then put into day or week buckets of the request's time zone here. Buckets are
clipped to the requested range; each bucket carries the one before it for the trend (the first
bucket's previous lies before the range). The range has the slots' 15-minute precision.

Attendance and engagement count the learners' attendances; instructor quality counts the rows
of instructors and co-instructors. A session's instructor, for grouping and filtering, is its
first one.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from classwire.api.events.v1 import data_events_pb2 as dev

from ..store import analytics_repositories as repo
from ..store import repositories as core_repo
from ..store import roster_repositories as roster_repo
from ..store.analytics_models import RatingRow
from ..store.models import LiveSession
from ..store.types import utcnow
from . import paging
from .analytics_fold import LEARNER, SLOT_MS, TEACHING
from .auth import Principal
from .errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Violations
from .idempotency import IdempotencyKey, run_idempotent
from .ids import new_id

MAX_BUCKETS = 366
MAX_FILTER_ITEMS = 500
MAX_COMMENT = 2000
MAX_IDENTITY = 128
GROUPS = {1: "learner", 2: "class", 3: "instructor", 4: "tenant"}
GRANULARITIES = {1: "day", 2: "week"}
GUARDIAN = 5


@dataclass
class Scope:
    """A validated analytics request."""

    start: datetime
    end: datetime
    granularity: str
    zone: ZoneInfo
    group: str = "tenant"
    learners: list[str] = field(default_factory=list)
    instructors: list[str] = field(default_factory=list)
    class_ids: list[str] = field(default_factory=list)
    course_ids: list[str] = field(default_factory=list)
    page_size: int = paging.DEFAULT_PAGE_SIZE
    page_token: str = ""

    def fingerprint(self) -> dict:
        return {
            "range": [self.start.isoformat(), self.end.isoformat()],
            "g": self.granularity,
            "z": self.zone.key,
            "group": self.group,
            "f": [self.learners, self.instructors, self.class_ids, self.course_ids],
        }


@dataclass
class Bucket:
    start: datetime
    end: datetime
    stats: dict
    previous: dict


@dataclass
class Group:
    id: str
    display_name: str
    total: dict
    buckets: list[Bucket]


def _ids(problems: Violations, path: str, values) -> list[str]:
    values = list(values)
    if len(values) > MAX_FILTER_ITEMS:
        problems.add(path, f"at most {MAX_FILTER_ITEMS} entries")
    for i, value in enumerate(values):
        if not value or len(value) > MAX_IDENTITY:
            problems.add(f"{path}[{i}]", f"must be 1 to {MAX_IDENTITY} characters")
    return sorted(set(values))


def validate_scope(
    start: datetime | None,
    end: datetime | None,
    granularity: int,
    time_zone: str,
    group_by: int | None = None,
    *,
    learners=(),
    instructors=(),
    class_ids=(),
    course_ids=(),
    page_size: int = 0,
    page_token: str = "",
    filter_prefix: str = "filter.",
) -> Scope:
    problems = Violations()
    if start is None:
        problems.add("time_range.start_time", "is required")
    if end is None:
        problems.add("time_range.end_time", "is required")
    if start is not None and end is not None and end <= start:
        problems.add("time_range.end_time", "must be after start_time")
    if group_by is not None and group_by not in GROUPS:
        problems.add("group_by", "must be LEARNER, CLASS, INSTRUCTOR or TENANT")
    if granularity not in GRANULARITIES:
        problems.add("granularity", "must be DAY or WEEK")
    zone = ZoneInfo("UTC")
    if time_zone:
        try:
            zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.add("time_zone", "is not a known IANA time zone")
    if page_size < 0:
        problems.add("page_size", "must not be negative")
    scope_lists = {
        "learners": _ids(problems, f"{filter_prefix}learner_identities", learners),
        "instructors": _ids(
            problems,
            f"{filter_prefix}instructor_identities" if filter_prefix else "instructor_identities",
            instructors,
        ),
        "class_ids": _ids(problems, f"{filter_prefix}class_ids", class_ids),
        "course_ids": _ids(problems, f"{filter_prefix}course_ids", course_ids),
    }
    problems.raise_if_any()
    scope = Scope(
        start=start,
        end=end,
        granularity=GRANULARITIES[granularity],
        zone=zone,
        group=GROUPS.get(group_by or 4, "tenant"),
        page_size=paging.page_size(page_size),
        page_token=page_token,
        **scope_lists,
    )
    if len(bucket_bounds(scope)) - 2 > MAX_BUCKETS:
        raise InvalidArgument(
            FieldViolation("time_range", f"covers more than {MAX_BUCKETS} buckets")
        )
    return scope


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def bucket_bounds(scope: Scope) -> list[datetime]:
    """[start of the bucket before the first, start of the first, ..., end of the last]."""
    step = 7 if scope.granularity == "week" else 1
    day = scope.start.astimezone(scope.zone).date()
    if step == 7:
        day -= timedelta(days=day.weekday())
    day -= timedelta(days=step)
    bounds = [_local_midnight(day, scope.zone)]
    while bounds[-1] < scope.end:
        day += timedelta(days=step)
        bounds.append(_local_midnight(day, scope.zone))
        if len(bounds) > MAX_BUCKETS + 3:
            break
    return bounds


def _slot(moment: datetime) -> int:
    epoch_ms = int(moment.timestamp() * 1000)
    return (epoch_ms - epoch_ms % SLOT_MS) // 1000


def _add(into: dict, row: dict) -> None:
    for name, value in row.items():
        if name not in ("key", "slot"):
            into[name] = into.get(name, 0) + (value or 0)


class AnalyticsDomain:
    def __init__(self, db, uow) -> None:
        self.db = db
        self.uow = uow

    # -- queries -----------------------------------------------------------------------------

    async def _query(
        self, principal: Principal, scope: Scope, measures: dict, roles, group_column: str | None
    ) -> tuple[list[Group], str, int]:
        principal.require("data:read")
        bounds = bucket_bounds(scope)
        edges = [int(b.timestamp()) for b in bounds]
        range_start, range_end = _slot(scope.start), int(scope.end.timestamp())
        where = {
            "tenant_id": principal.tenant_id,
            "roles": roles,
            "first_slot": edges[0],
            "end_slot": max(edges[-1], range_end),
            "learners": scope.learners,
            "instructors": scope.instructors,
            "class_ids": scope.class_ids,
            "course_ids": scope.course_ids,
        }
        filters = scope.fingerprint()
        after = paging.decode(scope.page_token, filters)
        async with self.db.reader() as session:
            as_of = await repo.cursor_position(session, principal.tenant_id)
            if group_column is None:
                keys = [""] if not after else []
            else:
                keys = await repo.group_keys(
                    session, group_column, after[1] if after else "", scope.page_size + 1, **where
                )
            more = len(keys) > scope.page_size
            keys = keys[: scope.page_size]
            rows = (
                await repo.aggregate(session, group_column, keys, measures, **where) if keys else []
            )
            names = (
                await repo.display_names(session, principal.tenant_id, keys)
                if group_column in ("learner", "instructor")
                else {}
            )
        per_key: dict[str, list[dict]] = {}
        for row in rows:
            per_key.setdefault(row.get("key", ""), []).append(row)
        groups = []
        for key in keys:
            sums: list[dict] = [{} for _ in edges[:-1]]
            total: dict = {}
            for row in per_key.get(key, []):
                index = bisect_right(edges, row["slot"]) - 1
                if not 0 <= index < len(sums):
                    continue
                in_range = range_start <= row["slot"] < range_end
                if in_range:
                    _add(total, row)
                if in_range or index == 0:
                    _add(sums[index], row)
            buckets = [
                Bucket(bounds[i], bounds[i + 1], sums[i], sums[i - 1]) for i in range(1, len(sums))
            ]
            groups.append(Group(key, names.get(key, ""), total, buckets))
        token = paging.encode(scope.start, keys[-1], filters) if more and keys else ""
        return groups, token, as_of

    async def query_attendance(self, principal: Principal, scope: Scope):
        column = None if scope.group == "tenant" else scope.group
        return await self._query(principal, scope, repo.ATTENDANCE_MEASURES, [LEARNER], column)

    async def query_engagement(self, principal: Principal, scope: Scope):
        column = None if scope.group == "tenant" else scope.group
        return await self._query(principal, scope, repo.ENGAGEMENT_MEASURES, [LEARNER], column)

    async def query_instructor_quality(self, principal: Principal, scope: Scope):
        # Instructors are the rows of the teaching roles, grouped by their own identity; the
        # instructor filter then names those identities.
        scope.learners, scope.instructors = scope.instructors, []
        return await self._query(principal, scope, repo.QUALITY_MEASURES, list(TEACHING), "learner")

    # -- ratings -----------------------------------------------------------------------------

    async def submit_rating(
        self,
        principal: Principal,
        session_id: str,
        rater: str,
        instructor: str,
        score: int,
        comment: str,
        key: IdempotencyKey | None,
    ) -> RatingRow:
        principal.require("data:write")
        problems = Violations()
        if not session_id:
            problems.add("session_id", "is required")
        if not rater or len(rater) > MAX_IDENTITY:
            problems.add("rater_identity", f"must be 1 to {MAX_IDENTITY} characters")
        if len(instructor) > MAX_IDENTITY:
            problems.add("instructor_identity", f"must be at most {MAX_IDENTITY} characters")
        if not 1 <= score <= 5:
            problems.add("score", "must be 1 to 5")
        if len(comment) > MAX_COMMENT:
            problems.add("comment", f"must be at most {MAX_COMMENT} characters")
        problems.raise_if_any()

        async def body(uow) -> RatingRow:
            s = uow.session
            row = await core_repo.get_live_session(s, principal.tenant_id, session_id)
            if row is None:
                raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
            if row.live_time is None or row.state == 5:
                raise FailedPrecondition(
                    "the session never went live", reason="SESSION_NOT_STARTED"
                )
            rated = await self._instructor(s, row, instructor)
            await self._check_rater(s, row, rater)
            now = utcnow()
            existing = await repo.rating_for(s, row.tenant_id, row.id, rater, rated)
            if existing is None:
                existing = RatingRow(
                    id=new_id("rtg"),
                    tenant_id=row.tenant_id,
                    session_id=row.id,
                    rater_identity=rater,
                    instructor_identity=rated,
                    score=score,
                    comment=comment,
                    create_time=now,
                    update_time=now,
                )
                s.add(existing)
                replaced = False
            else:
                existing.score, existing.comment, existing.update_time = score, comment, now
                replaced = True
            await s.flush()
            uow.emit(
                dev.RatingSubmitted(
                    rating_id=existing.id,
                    session_id=row.id,
                    rater_identity=rater,
                    instructor_identity=rated,
                    score=score,
                    replaced=replaced,
                ),
                session_id=row.id,
            )
            return existing

        return await run_idempotent(lambda: self.uow(principal.tenant_id), key, body)

    async def _instructor(self, s, row: LiveSession, instructor: str) -> str:
        assigned = (await core_repo.session_instructors(s, row.tenant_id, [row.id]))[row.id]
        taught = await repo.joined_identities(s, row.tenant_id, row.id, TEACHING)
        known = list(dict.fromkeys([*assigned, *taught]))
        if not instructor:
            if len(known) == 1:
                return known[0]
            raise InvalidArgument(
                FieldViolation(
                    "instructor_identity",
                    "is required: the session had several instructors" if known else "is required",
                )
            )
        if instructor not in known:
            raise FailedPrecondition(
                f"{instructor!r} did not teach the session", reason="NOT_SESSION_INSTRUCTOR"
            )
        return instructor

    async def _check_rater(self, s, row: LiveSession, rater: str) -> None:
        learners = []
        for identity in await repo.joined_identities(s, row.tenant_id, row.id):
            if identity == rater:
                return
            learners.append(identity)
        from .sessions import _roster_person  # the session area's identity -> person rule

        guardian = await _roster_person(s, row.tenant_id, rater)
        if guardian is not None:
            for identity in learners:
                learner = await _roster_person(s, row.tenant_id, identity)
                if learner is not None and await roster_repo.guardian_link(
                    s, row.tenant_id, learner.id, guardian.id
                ):
                    return
        raise FailedPrecondition(
            f"{rater!r} neither attended nor is the guardian of a learner who did",
            reason="RATER_NOT_IN_SESSION",
        )

    async def list_ratings(
        self,
        principal: Principal,
        session_id: str,
        instructor: str,
        rater: str,
        start: datetime | None,
        end: datetime | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[RatingRow], str]:
        principal.require("data:read")
        if start is not None and end is not None and end <= start:
            raise InvalidArgument(
                FieldViolation("create_time_range.end_time", "must be after start_time")
            )
        limit = paging.page_size(page_size)
        filters = [session_id, instructor, rater, str(start), str(end)]
        after = paging.decode(page_token, filters)
        async with self.db.reader() as s:
            rows = await repo.list_ratings(
                s,
                principal.tenant_id,
                session_id=session_id,
                instructor=instructor,
                rater=rater,
                start=start,
                end=end,
                after=after,
                limit=limit,
            )
        return rows, paging.next_token(rows, limit, "create_time", filters)

    async def delete_rating(self, principal: Principal, rating_id: str) -> None:
        principal.require("data:write")
        async with self.uow(principal.tenant_id) as uow:
            row = await repo.get_rating(uow.session, principal.tenant_id, rating_id)
            if row is None:
                raise NotFound(f"rating {rating_id!r} not found", reason="RATING_NOT_FOUND")
            await repo.delete_rating(uow.session, row)
            uow.emit(
                dev.RatingDeleted(
                    rating_id=row.id,
                    session_id=row.session_id,
                    instructor_identity=row.instructor_identity,
                ),
                session_id=row.session_id,
            )
