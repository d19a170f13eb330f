"""Queries for the roster area. Every function takes the caller's AsyncSession and never commits;
every lookup filters on tenant_id, so another tenant's id behaves exactly like a missing one."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .roster_models import (
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
    RosterQualification,
)

# Bound parameters per statement stay under SQLite's limit (32766) and asyncpg's (32767).
CHUNK = 500


def chunks(items: list, size: int = CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def get(session: AsyncSession, model, tenant_id: str, row_id: str, *, lock: bool = False):
    query = select(model).where(model.tenant_id == tenant_id, model.id == row_id)
    if model is RosterPerson:
        query = query.where(RosterPerson.delete_time.is_(None))
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def get_many(session: AsyncSession, model, tenant_id: str, ids: Collection[str]) -> dict:
    found = {}
    for part in chunks(sorted(set(ids))):
        query = select(model).where(model.tenant_id == tenant_id, model.id.in_(part))
        if model is RosterPerson:
            query = query.where(RosterPerson.delete_time.is_(None))
        for row in (await session.scalars(query)).all():
            found[row.id] = row
    return found


async def by_external_id(session: AsyncSession, model, tenant_id: str, external_id: str):
    query = select(model).where(model.tenant_id == tenant_id, model.external_id == external_id)
    return await session.scalar(query)


async def with_external_ids(session: AsyncSession, model, tenant_id: str) -> list:
    """Every record of the tenant that has an external id (an import's matching set)."""
    query = select(model).where(model.tenant_id == tenant_id, model.external_id.is_not(None))
    if model is RosterPerson:
        query = query.where(RosterPerson.delete_time.is_(None))
    return list((await session.scalars(query)).all())


async def page_by_id(
    session: AsyncSession, query: Select, id_column, limit: int, after_id: str | None
) -> list:
    """Keyset pagination on id."""
    if after_id is not None:
        query = query.where(id_column > after_id)
    return list((await session.scalars(query.order_by(id_column).limit(limit))).all())


async def page_by(
    session: AsyncSession, query: Select, key_column, id_column, limit: int, after
) -> list:
    """Keyset pagination on (key, id); `after` is (key, id) or None."""
    if after is not None:
        key, last_id = after
        query = query.where(or_(key_column > key, and_(key_column == key, id_column > last_id)))
    return list((await session.scalars(query.order_by(key_column, id_column).limit(limit))).all())


# People -----------------------------------------------------------------------------------------


def people(
    tenant_id: str,
    *,
    state: int,
    role_bit: int = 0,
    org_id: str = "",
    external_ids: Collection[str] = (),
    subject: str = "",
    level: str = "",
) -> Select:
    query = select(RosterPerson).where(
        RosterPerson.tenant_id == tenant_id,
        RosterPerson.delete_time.is_(None),
        RosterPerson.state == state,
    )
    if role_bit:
        query = query.where(RosterPerson.role_bits.op("&")(role_bit) != 0)
    if org_id:
        query = query.where(
            RosterPerson.id.in_(
                select(RosterPersonOrg.person_id).where(
                    RosterPersonOrg.tenant_id == tenant_id, RosterPersonOrg.org_id == org_id
                )
            )
        )
    if external_ids:
        query = query.where(RosterPerson.external_id.in_(list(external_ids)))
    if subject:
        qualified = select(RosterQualification.person_id).where(
            RosterQualification.tenant_id == tenant_id,
            RosterQualification.subject == subject.lower(),
        )
        if level:
            qualified = qualified.where(RosterQualification.level.in_(["", level]))
        query = query.where(RosterPerson.id.in_(qualified))
    return query


async def set_person_orgs(
    session: AsyncSession, tenant_id: str, person_id: str, org_ids: Collection[str]
) -> None:
    await session.execute(delete(RosterPersonOrg).where(RosterPersonOrg.person_id == person_id))
    rows = [{"person_id": person_id, "org_id": o, "tenant_id": tenant_id} for o in set(org_ids)]
    if rows:
        await session.execute(insert(RosterPersonOrg), rows)


async def set_qualifications(
    session: AsyncSession, tenant_id: str, person_id: str, pairs: Collection[tuple[str, str]]
) -> None:
    await session.execute(
        delete(RosterQualification).where(RosterQualification.person_id == person_id)
    )
    rows = [
        {"person_id": person_id, "subject": s, "level": lv, "tenant_id": tenant_id}
        for s, lv in set(pairs)
    ]
    if rows:
        await session.execute(insert(RosterQualification), rows)


async def guardian_link(
    session: AsyncSession, tenant_id: str, learner_id: str, guardian_id: str
) -> RosterGuardianLink | None:
    return await session.scalar(
        select(RosterGuardianLink).where(
            RosterGuardianLink.tenant_id == tenant_id,
            RosterGuardianLink.learner_id == learner_id,
            RosterGuardianLink.guardian_id == guardian_id,
        )
    )


async def links_of(
    session: AsyncSession,
    tenant_id: str,
    *,
    learner_id: str = "",
    guardian_id: str = "",
    limit: int | None = None,
    after_id: str | None = None,
) -> list[RosterGuardianLink]:
    """Links of a learner (ordered by guardian id) or of a guardian (ordered by learner id)."""
    query = select(RosterGuardianLink).where(RosterGuardianLink.tenant_id == tenant_id)
    if learner_id:
        other = RosterGuardianLink.guardian_id
        query = query.where(RosterGuardianLink.learner_id == learner_id)
    else:
        other = RosterGuardianLink.learner_id
        query = query.where(RosterGuardianLink.guardian_id == guardian_id)
    if after_id is not None:
        query = query.where(other > after_id)
    query = query.order_by(other)
    if limit is not None:
        query = query.limit(limit)
    return list((await session.scalars(query)).all())


async def delete_links_of(session: AsyncSession, tenant_id: str, person_id: str) -> list:
    links = list(
        (
            await session.scalars(
                select(RosterGuardianLink).where(
                    RosterGuardianLink.tenant_id == tenant_id,
                    or_(
                        RosterGuardianLink.learner_id == person_id,
                        RosterGuardianLink.guardian_id == person_id,
                    ),
                )
            )
        ).all()
    )
    for link in links:
        await session.delete(link)
    return links


async def import_links(session: AsyncSession, tenant_id: str) -> list[RosterGuardianLink]:
    query = select(RosterGuardianLink).where(RosterGuardianLink.tenant_id == tenant_id)
    return list((await session.scalars(query)).all())


# Orgs, sessions, courses, classes ---------------------------------------------------------------


def orgs(tenant_id: str, *, state: int, parent_id: str = "", org_type: int = 0) -> Select:
    query = select(RosterOrg).where(RosterOrg.tenant_id == tenant_id, RosterOrg.state == state)
    if parent_id:
        query = query.where(RosterOrg.parent_id == parent_id)
    if org_type:
        query = query.where(RosterOrg.type == org_type)
    return query


def academic_sessions(
    tenant_id: str, *, org_id: str = "", session_type: int = 0, school_year: int = 0
) -> Select:
    query = select(RosterAcademicSession).where(RosterAcademicSession.tenant_id == tenant_id)
    if org_id:
        query = query.where(RosterAcademicSession.org_id == org_id)
    if session_type:
        query = query.where(RosterAcademicSession.type == session_type)
    if school_year:
        query = query.where(RosterAcademicSession.school_year == school_year)
    return query


def courses(tenant_id: str, *, state: int, org_id: str = "") -> Select:
    query = select(RosterCourse).where(
        RosterCourse.tenant_id == tenant_id, RosterCourse.state == state
    )
    if org_id:
        query = query.where(RosterCourse.org_id == org_id)
    return query


def classes(
    tenant_id: str,
    *,
    state: int,
    course_id: str = "",
    org_id: str = "",
    person_id: str = "",
    academic_session_id: str = "",
    active_enrollment: int = 0,
) -> Select:
    query = select(RosterClass).where(
        RosterClass.tenant_id == tenant_id, RosterClass.state == state
    )
    if course_id:
        query = query.where(RosterClass.course_id == course_id)
    if org_id:
        query = query.where(RosterClass.org_id == org_id)
    if person_id:
        query = query.where(
            RosterClass.id.in_(
                select(RosterEnrollment.class_id).where(
                    RosterEnrollment.tenant_id == tenant_id,
                    RosterEnrollment.person_id == person_id,
                    RosterEnrollment.state == active_enrollment,
                )
            )
        )
    if academic_session_id:
        query = query.where(
            RosterClass.id.in_(
                select(RosterClassSession.class_id).where(
                    RosterClassSession.tenant_id == tenant_id,
                    RosterClassSession.academic_session_id == academic_session_id,
                )
            )
        )
    return query


async def set_class_sessions(
    session: AsyncSession, tenant_id: str, class_id: str, session_ids: Collection[str]
) -> None:
    await session.execute(delete(RosterClassSession).where(RosterClassSession.class_id == class_id))
    rows = [
        {"class_id": class_id, "academic_session_id": s, "tenant_id": tenant_id}
        for s in set(session_ids)
    ]
    if rows:
        await session.execute(insert(RosterClassSession), rows)


# Enrollments ------------------------------------------------------------------------------------


def enrollments(
    tenant_id: str, *, state: int, class_id: str = "", person_id: str = "", role: int = 0
) -> Select:
    query = select(RosterEnrollment).where(
        RosterEnrollment.tenant_id == tenant_id, RosterEnrollment.state == state
    )
    if class_id:
        query = query.where(RosterEnrollment.class_id == class_id)
    if person_id:
        query = query.where(RosterEnrollment.person_id == person_id)
    if role:
        query = query.where(RosterEnrollment.role == role)
    return query


async def class_members(
    session: AsyncSession,
    tenant_id: str,
    class_ids: Collection[str],
    *,
    active: int,
    instructor: int,
    learner: int,
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Per class: active instructors (primary first, then by begin time) and learner counts."""
    instructors: dict[str, list[str]] = {c: [] for c in class_ids}
    counts: dict[str, int] = dict.fromkeys(class_ids, 0)
    for part in chunks(sorted(set(class_ids))):
        query = (
            select(RosterEnrollment.class_id, RosterEnrollment.person_id)
            .where(
                RosterEnrollment.tenant_id == tenant_id,
                RosterEnrollment.class_id.in_(part),
                RosterEnrollment.state == active,
                RosterEnrollment.role == instructor,
            )
            .order_by(
                RosterEnrollment.class_id,
                RosterEnrollment.primary.desc(),
                RosterEnrollment.begin_time,
                RosterEnrollment.id,
            )
        )
        for class_id, person_id in (await session.execute(query)).all():
            if person_id not in instructors[class_id]:
                instructors[class_id].append(person_id)
        query = (
            select(RosterEnrollment.class_id, func.count())
            .where(
                RosterEnrollment.tenant_id == tenant_id,
                RosterEnrollment.class_id.in_(part),
                RosterEnrollment.state == active,
                RosterEnrollment.role == learner,
            )
            .group_by(RosterEnrollment.class_id)
        )
        for class_id, count in (await session.execute(query)).all():
            counts[class_id] = count
    return instructors, counts


async def count_active(
    session: AsyncSession,
    tenant_id: str,
    *,
    active: int,
    class_id: str = "",
    person_id: str = "",
    role: int = 0,
) -> int:
    query = (
        select(func.count())
        .select_from(RosterEnrollment)
        .where(RosterEnrollment.tenant_id == tenant_id, RosterEnrollment.state == active)
    )
    if class_id:
        query = query.where(RosterEnrollment.class_id == class_id)
    if person_id:
        query = query.where(RosterEnrollment.person_id == person_id)
    if role:
        query = query.where(RosterEnrollment.role == role)
    return int(await session.scalar(query) or 0)


async def active_enrollment_of(
    session: AsyncSession, tenant_id: str, person_id: str, class_id: str, role: int, active: int
) -> RosterEnrollment | None:
    return await session.scalar(
        select(RosterEnrollment).where(
            RosterEnrollment.tenant_id == tenant_id,
            RosterEnrollment.person_id == person_id,
            RosterEnrollment.class_id == class_id,
            RosterEnrollment.role == role,
            RosterEnrollment.state == active,
        )
    )


async def enrollments_of_person(
    session: AsyncSession, tenant_id: str, person_id: str, state: int
) -> list[RosterEnrollment]:
    query = select(RosterEnrollment).where(
        RosterEnrollment.tenant_id == tenant_id,
        RosterEnrollment.person_id == person_id,
        RosterEnrollment.state == state,
    )
    return list((await session.scalars(query)).all())


# Imports ----------------------------------------------------------------------------------------


def imports(tenant_id: str, *, state: int = 0) -> Select:
    query = select(RosterImport).where(RosterImport.tenant_id == tenant_id)
    if state:
        query = query.where(RosterImport.state == state)
    return query


async def running_import(
    session: AsyncSession, tenant_id: str, running: int, since
) -> RosterImport | None:
    return await session.scalar(
        select(RosterImport).where(
            RosterImport.tenant_id == tenant_id,
            RosterImport.state == running,
            RosterImport.create_time > since,
        )
    )


# Bulk writes for imports ------------------------------------------------------------------------


async def insert_rows(session: AsyncSession, model, rows: list[dict[str, Any]]) -> None:
    for part in chunks(rows, 200):
        await session.execute(insert(model), part)


async def update_rows(session: AsyncSession, model, rows: list[dict[str, Any]]) -> None:
    """Bulk UPDATE by primary key; each dict holds the key and the columns to set."""
    for part in chunks(rows, 200):
        await session.execute(update(model), part)


async def delete_where_in(session: AsyncSession, column, values: Collection[str]) -> None:
    for part in chunks(sorted(set(values))):
        await session.execute(delete(column.class_).where(column.in_(part)))
