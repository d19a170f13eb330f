"""Tables of the roster area. They share the core's declarative Base (and naming convention).

Enum columns hold the roster.v1 enum numbers (frozen by the v1 contract). Nested, rarely
filtered values (contact channels, preferences, consents, profiles) are JSON in their proto JSON
form; what lists filter on (roles, org membership, instructor subjects, class terms) has its own
indexed column or table, so filters work with an index on both engines.

`import_id` is the last roster import that wrote a record: a bulk import deactivates only
records that came from an import and are absent from its files, never hand-made ones.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


def _tenant() -> Mapped[str]:
    return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))


class RosterPerson(Base):
    __tablename__ = "roster_people"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id", name="uq_roster_people_tenant_external_id"),
        Index("ix_roster_people_list", "tenant_id", "state", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[int] = mapped_column(Integer)
    # Roles in the caller's order, and as bits (1 << PersonRole) for filtering.
    roles: Mapped[list[Any]] = mapped_column(JSON)
    role_bits: Mapped[int] = mapped_column(Integer)
    given_name: Mapped[str] = mapped_column(String(200), default="")
    family_name: Mapped[str] = mapped_column(String(200), default="")
    display_name: Mapped[str] = mapped_column(String(200), default="")
    time_zone: Mapped[str] = mapped_column(String(64), default="")
    locale: Mapped[str] = mapped_column(String(35), default="")
    contact_channels: Mapped[list[Any]] = mapped_column(JSON)
    notification_settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    consents: Mapped[list[Any]] = mapped_column(JSON)
    instructor_profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    learner_profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    org_ids: Mapped[list[Any]] = mapped_column(JSON)
    grades: Mapped[list[Any]] = mapped_column(JSON)
    labels: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    version: Mapped[int] = mapped_column(Integer)
    import_id: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    # A deleted person stays as a row with no personal data, so bookings and reports that
    # name the id keep a valid reference; every read skips it.
    delete_time: Mapped[datetime | None]


class RosterPersonOrg(Base):
    """A person's membership of an organisation, for ListPeople's org filter."""

    __tablename__ = "roster_person_orgs"
    __table_args__ = (Index("ix_roster_person_orgs_org", "tenant_id", "org_id", "person_id"),)

    person_id: Mapped[str] = mapped_column(
        ForeignKey("roster_people.id", ondelete="CASCADE"), primary_key=True
    )
    org_id: Mapped[str] = mapped_column(
        ForeignKey("roster_orgs.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = _tenant()


class RosterQualification(Base):
    """One subject (lower case) and level of an instructor; level "" means every level."""

    __tablename__ = "roster_qualifications"
    __table_args__ = (
        Index("ix_roster_qualifications_subject", "tenant_id", "subject", "level", "person_id"),
    )

    person_id: Mapped[str] = mapped_column(
        ForeignKey("roster_people.id", ondelete="CASCADE"), primary_key=True
    )
    subject: Mapped[str] = mapped_column(String(100), primary_key=True)
    level: Mapped[str] = mapped_column(String(100), primary_key=True)
    tenant_id: Mapped[str] = _tenant()


class RosterGuardianLink(Base):
    __tablename__ = "roster_guardian_links"
    __table_args__ = (
        Index("ix_roster_guardian_links_guardian", "tenant_id", "guardian_id", "learner_id"),
    )

    learner_id: Mapped[str] = mapped_column(
        ForeignKey("roster_people.id", ondelete="CASCADE"), primary_key=True
    )
    guardian_id: Mapped[str] = mapped_column(
        ForeignKey("roster_people.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = _tenant()
    relationship: Mapped[int] = mapped_column(Integer)
    receives_notices: Mapped[bool] = mapped_column(Boolean)
    may_consent: Mapped[bool] = mapped_column(Boolean)
    import_id: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime]


class RosterOrg(Base):
    __tablename__ = "roster_orgs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id", name="uq_roster_orgs_tenant_external_id"),
        Index("ix_roster_orgs_list", "tenant_id", "state", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[int] = mapped_column(Integer)
    identifier: Mapped[str] = mapped_column(String(200), default="")
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("roster_orgs.id"))
    time_zone: Mapped[str] = mapped_column(String(64), default="")
    version: Mapped[int] = mapped_column(Integer)
    import_id: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class RosterAcademicSession(Base):
    __tablename__ = "roster_academic_sessions"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "external_id", name="uq_roster_academic_sessions_tenant_external_id"
        ),
        Index("ix_roster_academic_sessions_list", "tenant_id", "start_date", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(200))
    type: Mapped[int] = mapped_column(Integer)
    start_date: Mapped[date] = mapped_column(Date)
    end_date: Mapped[date] = mapped_column(Date)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("roster_academic_sessions.id"))
    org_id: Mapped[str | None] = mapped_column(ForeignKey("roster_orgs.id"))
    school_year: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer)
    import_id: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class RosterCourse(Base):
    __tablename__ = "roster_courses"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id", name="uq_roster_courses_tenant_external_id"),
        Index("ix_roster_courses_list", "tenant_id", "state", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(200))
    course_code: Mapped[str] = mapped_column(String(100), default="")
    org_id: Mapped[str] = mapped_column(ForeignKey("roster_orgs.id"))
    school_year_session_id: Mapped[str | None] = mapped_column(
        ForeignKey("roster_academic_sessions.id")
    )
    subjects: Mapped[list[Any]] = mapped_column(JSON)
    grades: Mapped[list[Any]] = mapped_column(JSON)
    labels: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    version: Mapped[int] = mapped_column(Integer)
    import_id: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class RosterClass(Base):
    __tablename__ = "roster_classes"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id", name="uq_roster_classes_tenant_external_id"),
        Index("ix_roster_classes_list", "tenant_id", "state", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[int] = mapped_column(Integer)
    course_id: Mapped[str] = mapped_column(ForeignKey("roster_courses.id"))
    title: Mapped[str] = mapped_column(String(200))
    class_code: Mapped[str] = mapped_column(String(100), default="")
    subject: Mapped[str] = mapped_column(String(100), default="")
    level: Mapped[str] = mapped_column(String(100), default="")
    time_zone: Mapped[str] = mapped_column(String(64), default="")
    org_id: Mapped[str] = mapped_column(ForeignKey("roster_orgs.id"))
    academic_session_ids: Mapped[list[Any]] = mapped_column(JSON)
    capacity: Mapped[int] = mapped_column(Integer, default=0)
    labels: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    version: Mapped[int] = mapped_column(Integer)
    import_id: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class RosterClassSession(Base):
    """A class running in an academic session, for ListClasses' session filter."""

    __tablename__ = "roster_class_sessions"
    __table_args__ = (
        Index("ix_roster_class_sessions_session", "tenant_id", "academic_session_id", "class_id"),
    )

    class_id: Mapped[str] = mapped_column(
        ForeignKey("roster_classes.id", ondelete="CASCADE"), primary_key=True
    )
    academic_session_id: Mapped[str] = mapped_column(
        ForeignKey("roster_academic_sessions.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = _tenant()


class RosterEnrollment(Base):
    __tablename__ = "roster_enrollments"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "external_id", name="uq_roster_enrollments_tenant_external_id"
        ),
        Index("ix_roster_enrollments_class", "tenant_id", "class_id", "state", "role"),
        Index("ix_roster_enrollments_person", "tenant_id", "person_id", "state"),
        Index("ix_roster_enrollments_list", "tenant_id", "state", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(255))
    person_id: Mapped[str] = mapped_column(ForeignKey("roster_people.id", ondelete="CASCADE"))
    class_id: Mapped[str] = mapped_column(ForeignKey("roster_classes.id"))
    role: Mapped[int] = mapped_column(Integer)
    primary: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[int] = mapped_column(Integer)
    begin_time: Mapped[datetime]
    end_time: Mapped[datetime | None]
    end_reason: Mapped[str] = mapped_column(Text, default="")
    import_id: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime]


class RosterImport(Base):
    """A OneRoster import with its report (the serialized roster.v1 ImportReport)."""

    __tablename__ = "roster_imports"
    __table_args__ = (Index("ix_roster_imports_list", "tenant_id", "create_time", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    state: Mapped[int] = mapped_column(Integer)
    mode: Mapped[int] = mapped_column(Integer)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    file_sizes: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Counts as JSON (ListRosterImports returns them without the issues); issues as JSON lists.
    counts: Mapped[list[Any]] = mapped_column(JSON)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by_api_key_id: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime]
    complete_time: Mapped[datetime | None]


__all__ = [
    "RosterAcademicSession",
    "RosterClass",
    "RosterClassSession",
    "RosterCourse",
    "RosterEnrollment",
    "RosterGuardianLink",
    "RosterImport",
    "RosterOrg",
    "RosterPerson",
    "RosterPersonOrg",
    "RosterQualification",
]
