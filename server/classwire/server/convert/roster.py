"""roster.v1 protos <-> roster domain values and rows.

Nested person values cross as their proto JSON form (proto field names, enum value names), the
form the domain validates and the store keeps, so they read back exactly as written.
"""

from __future__ import annotations

from datetime import date

from google.protobuf import json_format

from classwire.api.roster.v1 import resources_pb2 as pb
from classwire.api.roster.v1 import service_pb2 as api

from ..domain import roster as d
from .common import set_time, time_or_none


def _dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _parse(data, message):
    return json_format.ParseDict(data or {}, message, ignore_unknown_fields=True)


def _optional(message, name: str) -> dict | None:
    return _dict(getattr(message, name)) if message.HasField(name) else None


# People -----------------------------------------------------------------------------------------


def person_from_proto(p: pb.Person) -> d.PersonInput:
    return d.PersonInput(
        external_id=p.external_id,
        roles=list(p.roles),
        state=p.state,
        given_name=p.given_name,
        family_name=p.family_name,
        display_name=p.display_name,
        time_zone=p.time_zone,
        locale=p.locale,
        contact_channels=[_dict(c) for c in p.contact_channels],
        notification_settings=_optional(p, "notification_settings") or {},
        consents=[_dict(c) for c in p.consents],
        instructor_profile=_optional(p, "instructor_profile"),
        learner_profile=_optional(p, "learner_profile"),
        org_ids=list(p.org_ids),
        grades=list(p.grades),
        metadata=dict(p.metadata),
    )


def person_to_proto(row) -> pb.Person:
    p = pb.Person(
        id=row.id,
        external_id=row.external_id or "",
        roles=list(row.roles),
        state=row.state,
        given_name=row.given_name,
        family_name=row.family_name,
        display_name=row.display_name,
        time_zone=row.time_zone,
        locale=row.locale,
        org_ids=list(row.org_ids),
        grades=list(row.grades),
        metadata=dict(row.labels),
        etag=str(row.version),
    )
    for channel in row.contact_channels:
        _parse(channel, p.contact_channels.add())
    if row.notification_settings:
        _parse(row.notification_settings, p.notification_settings)
    for consent in row.consents:
        _parse(consent, p.consents.add())
    if row.instructor_profile is not None:
        _parse(row.instructor_profile, p.instructor_profile)
    if row.learner_profile is not None:
        _parse(row.learner_profile, p.learner_profile)
    set_time(p.create_time, row.create_time)
    set_time(p.update_time, row.update_time)
    return p


def link_from_proto(link: pb.GuardianLink) -> d.LinkInput:
    return d.LinkInput(
        learner_id=link.learner_id,
        guardian_id=link.guardian_id,
        relationship=link.relationship,
        receives_notices=link.receives_notices,
        may_consent=link.may_consent,
    )


def link_to_proto(row) -> pb.GuardianLink:
    link = pb.GuardianLink(
        learner_id=row.learner_id,
        guardian_id=row.guardian_id,
        relationship=row.relationship,
        receives_notices=row.receives_notices,
        may_consent=row.may_consent,
    )
    set_time(link.create_time, row.create_time)
    return link


def linked_to_proto(view: d.LinkedPersonView) -> api.LinkedPerson:
    return api.LinkedPerson(link=link_to_proto(view.link), person=person_to_proto(view.person))


# Orgs, sessions, courses, classes ---------------------------------------------------------------


def org_from_proto(o: pb.Org) -> d.OrgInput:
    return d.OrgInput(
        external_id=o.external_id,
        state=o.state,
        name=o.name,
        type=o.type,
        identifier=o.identifier,
        parent_id=o.parent_id,
        time_zone=o.time_zone,
    )


def org_to_proto(row) -> pb.Org:
    o = pb.Org(
        id=row.id,
        external_id=row.external_id or "",
        state=row.state,
        name=row.name,
        type=row.type,
        identifier=row.identifier,
        parent_id=row.parent_id or "",
        time_zone=row.time_zone,
        etag=str(row.version),
    )
    set_time(o.create_time, row.create_time)
    set_time(o.update_time, row.update_time)
    return o


def date_from_proto(message, name: str) -> date | None:
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        return None


def date_to_proto(target: pb.LocalDate, value: date | None) -> None:
    if value is not None:
        target.year, target.month, target.day = value.year, value.month, value.day


def session_from_proto(s: pb.AcademicSession) -> d.AcademicSessionInput:
    return d.AcademicSessionInput(
        external_id=s.external_id,
        state=s.state,
        title=s.title,
        type=s.type,
        start_date=date_from_proto(s, "start_date"),
        end_date=date_from_proto(s, "end_date"),
        parent_id=s.parent_id,
        org_id=s.org_id,
        school_year=s.school_year,
    )


def session_to_proto(row) -> pb.AcademicSession:
    s = pb.AcademicSession(
        id=row.id,
        external_id=row.external_id or "",
        state=row.state,
        title=row.title,
        type=row.type,
        parent_id=row.parent_id or "",
        org_id=row.org_id or "",
        school_year=row.school_year,
        etag=str(row.version),
    )
    date_to_proto(s.start_date, row.start_date)
    date_to_proto(s.end_date, row.end_date)
    set_time(s.create_time, row.create_time)
    set_time(s.update_time, row.update_time)
    return s


def course_from_proto(c: pb.Course) -> d.CourseInput:
    return d.CourseInput(
        external_id=c.external_id,
        state=c.state,
        title=c.title,
        course_code=c.course_code,
        org_id=c.org_id,
        school_year_session_id=c.school_year_session_id,
        subjects=list(c.subjects),
        grades=list(c.grades),
        metadata=dict(c.metadata),
    )


def course_to_proto(row) -> pb.Course:
    c = pb.Course(
        id=row.id,
        external_id=row.external_id or "",
        state=row.state,
        title=row.title,
        course_code=row.course_code,
        org_id=row.org_id,
        school_year_session_id=row.school_year_session_id or "",
        subjects=list(row.subjects),
        grades=list(row.grades),
        metadata=dict(row.labels),
        etag=str(row.version),
    )
    set_time(c.create_time, row.create_time)
    set_time(c.update_time, row.update_time)
    return c


def class_from_proto(c: pb.Class) -> d.ClassInput:
    return d.ClassInput(
        external_id=c.external_id,
        state=c.state,
        course_id=c.course_id,
        title=c.title,
        class_code=c.class_code,
        subject=c.subject,
        level=c.level,
        time_zone=c.time_zone,
        org_id=c.org_id,
        academic_session_ids=list(c.academic_session_ids),
        capacity=c.capacity,
        metadata=dict(c.metadata),
    )


def class_to_proto(view: d.ClassView) -> pb.Class:
    row = view.row
    c = pb.Class(
        id=row.id,
        external_id=row.external_id or "",
        state=row.state,
        course_id=row.course_id,
        title=row.title,
        class_code=row.class_code,
        subject=row.subject,
        level=row.level,
        time_zone=row.time_zone,
        org_id=row.org_id,
        academic_session_ids=list(row.academic_session_ids),
        capacity=row.capacity,
        instructor_ids=view.instructor_ids,
        learner_count=view.learner_count,
        metadata=dict(row.labels),
        etag=str(row.version),
    )
    set_time(c.create_time, row.create_time)
    set_time(c.update_time, row.update_time)
    return c


# Enrollments ------------------------------------------------------------------------------------


def enrollment_from_proto(e: pb.Enrollment) -> d.EnrollmentInput:
    return d.EnrollmentInput(
        external_id=e.external_id,
        person_id=e.person_id,
        class_id=e.class_id,
        role=e.role,
        primary=e.primary,
        begin_time=time_or_none(e, "begin_time"),
        end_time=time_or_none(e, "end_time"),
    )


def enrollment_to_proto(row) -> pb.Enrollment:
    e = pb.Enrollment(
        id=row.id,
        external_id=row.external_id or "",
        person_id=row.person_id,
        class_id=row.class_id,
        role=row.role,
        primary=row.primary,
        state=row.state,
        end_reason=row.end_reason,
    )
    set_time(e.begin_time, row.begin_time)
    set_time(e.end_time, row.end_time)
    set_time(e.create_time, row.create_time)
    return e


# Imports ----------------------------------------------------------------------------------------


def _issue(data: dict) -> pb.ImportIssue:
    return pb.ImportIssue(
        file=data["file"],
        line=data["line"],
        field=data["field"],
        sourced_id=data["sourced_id"],
        code=data["code"],
        reason=data["reason"],
    )


def import_to_proto(row, *, with_issues: bool = True) -> pb.RosterImport:
    imp = pb.RosterImport(
        id=row.id,
        state=row.state,
        mode=row.mode,
        dry_run=row.dry_run,
        file_sizes={k: int(v) for k, v in row.file_sizes.items()},
        created_by_api_key_id=row.created_by_api_key_id,
    )
    for item in row.counts:
        imp.report.counts.add(**item)
    if with_issues:
        imp.report.errors.extend(_issue(i) for i in row.report.get("errors", []))
        imp.report.warnings.extend(_issue(i) for i in row.report.get("warnings", []))
    set_time(imp.create_time, row.create_time)
    set_time(imp.complete_time, row.complete_time)
    return imp
