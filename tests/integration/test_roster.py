"""RosterService over real gRPC: people, guardianship, orgs, sessions, courses, classes and
enrollments; field masks, etags, validation, pagination, idempotency and tenant isolation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.roster.v1 import resources_pb2 as pb
from classwire.api.roster.v1 import service_pb2 as api
from classwire.api.roster.v1 import service_pb2_grpc

LEARNER, INSTRUCTOR = pb.PERSON_ROLE_LEARNER, pb.PERSON_ROLE_INSTRUCTOR
GUARDIAN, STAFF = pb.PERSON_ROLE_GUARDIAN, pb.PERSON_ROLE_STAFF


def details(exc: grpc.aio.AioRpcError):
    info, bad = None, None
    for detail in rpc_status.from_call(exc).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad


async def call(server, method, request, credential=None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.RosterServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential or server.api_key}"),)
        return await getattr(stub, method)(request, metadata=metadata)


async def expect_error(awaitable, code: grpc.StatusCode, reason: str | None = None):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert details(caught.value)[0].reason == reason, details(caught.value)[0]
    return caught.value


def violations(exc) -> dict[str, str]:
    return {v.field: v.description for v in details(exc)[1].field_violations}


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def person(server, roles=(LEARNER,), credential=None, **fields) -> pb.Person:
    fields.setdefault("given_name", "Ada")
    response = await call(
        server,
        "CreatePerson",
        api.CreatePersonRequest(person=pb.Person(roles=list(roles), **fields)),
        credential,
    )
    return response.person


@pytest.fixture(scope="module")
async def other_tenant(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        return await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name="Other district"),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )


async def test_person_round_trip_with_nested_values(server):
    created = await person(
        server,
        roles=[INSTRUCTOR, GUARDIAN],
        external_id=f"emp-{uuid.uuid4().hex[:8]}",
        family_name="Lovelace",
        time_zone="Europe/Berlin",
        locale="de-DE",
        contact_channels=[
            pb.ContactChannel(email="ada@example.org", label="work", verified=True, primary=True),
            pb.ContactChannel(phone_number="+14155550100"),
            pb.ContactChannel(chat=pb.ChatAddress(service="slack", address="U123")),
        ],
        notification_settings=pb.NotificationSettings(
            preferences=[
                pb.NotificationPreference(
                    cause=pb.NOTIFICATION_CAUSE_REMINDER,
                    channel_kinds=[pb.CONTACT_CHANNEL_KIND_SMS, pb.CONTACT_CHANNEL_KIND_EMAIL],
                )
            ],
            quiet_hours=pb.QuietHours(
                start=pb.LocalTime(hours=22), end=pb.LocalTime(hours=7), time_zone="Europe/Berlin"
            ),
        ),
        consents=[pb.Consent(kind=pb.CONSENT_KIND_RECORDING, decision=pb.CONSENT_DECISION_GRANTED)],
        instructor_profile=pb.InstructorProfile(
            qualifications=[pb.SubjectQualification(subject="Math", levels=["grade-5", "B2"])],
            languages=["de", "en-GB"],
            weekly_load_limit=duration_pb2.Duration(seconds=20 * 3600),
        ),
        metadata={"crm": "42"},
    )
    assert created.id.startswith("per_") and created.etag == "1"
    assert created.state == pb.RECORD_STATE_ACTIVE
    assert created.contact_channels[0].id and created.contact_channels[0].HasField("verify_time")
    assert created.consents[0].decided_by_person_id == created.id
    got = (await call(server, "GetPerson", api.GetPersonRequest(person_id=created.id))).person
    assert got == created
    assert got.instructor_profile.weekly_load_limit.seconds == 20 * 3600
    assert got.notification_settings.quiet_hours.start.hours == 22
    # Instructors are found by subject (case-insensitively) and level.
    found = await call(
        server, "ListPeople", api.ListPeopleRequest(subject="math", level="B2", page_size=500)
    )
    assert created.id in [p.id for p in found.people]
    found = await call(
        server, "ListPeople", api.ListPeopleRequest(subject="math", level="C1", page_size=500)
    )
    assert created.id not in [p.id for p in found.people]


async def test_create_person_reports_every_problem(server):
    err = await expect_error(
        call(
            server,
            "CreatePerson",
            api.CreatePersonRequest(
                person=pb.Person(
                    external_id="ada@example.org",
                    time_zone="Mars/Olympus",
                    locale="not a locale",
                    contact_channels=[
                        pb.ContactChannel(email="nope"),
                        pb.ContactChannel(phone_number="0800 123"),
                        pb.ContactChannel(webhook_url="http://insecure.example"),
                    ],
                    consents=[
                        pb.Consent(kind=pb.CONSENT_KIND_RECORDING, decision=1),
                        pb.Consent(kind=pb.CONSENT_KIND_RECORDING, decision=1),
                    ],
                    learner_profile=pb.LearnerProfile(languages=["en"]),
                )
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    fields = violations(err)
    for path in (
        "person.roles",
        "person.external_id",
        "person.time_zone",
        "person.locale",
        "person.contact_channels[0].email",
        "person.contact_channels[1].phone_number",
        "person.contact_channels[2].webhook_url",
        "person.consents[1].kind",
        "person.learner_profile",
    ):
        assert path in fields, (path, fields)
    assert "e-mail" in fields["person.external_id"]
    # A time zone alone is the UNKNOWN_TIME_ZONE reason.
    await expect_error(
        person(server, time_zone="Europe/Atlantis"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_TIME_ZONE",
    )


async def test_update_person_with_field_mask_and_etag(server):
    created = await person(
        server,
        roles=[INSTRUCTOR],
        time_zone="UTC",
        family_name="Keep",
        instructor_profile=pb.InstructorProfile(languages=["en"]),
    )
    change = pb.Person(
        id=created.id,
        given_name="Grace",
        family_name="Ignored",
        instructor_profile=pb.InstructorProfile(
            weekly_load_limit=duration_pb2.Duration(seconds=3600)
        ),
        etag=created.etag,
    )
    updated = (
        await call(
            server,
            "UpdatePerson",
            api.UpdatePersonRequest(
                person=change,
                update_mask=mask("given_name", "instructor_profile.weekly_load_limit"),
            ),
        )
    ).person
    assert updated.given_name == "Grace" and updated.family_name == "Keep"
    assert updated.instructor_profile.languages == ["en"]
    assert updated.instructor_profile.weekly_load_limit.seconds == 3600
    assert updated.etag == "2"
    # The old etag no longer matches.
    await expect_error(
        call(
            server,
            "UpdatePerson",
            api.UpdatePersonRequest(person=change, update_mask=mask("given_name")),
        ),
        grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH",
    )
    err = await expect_error(
        call(
            server,
            "UpdatePerson",
            api.UpdatePersonRequest(
                person=pb.Person(id=created.id), update_mask=mask("id", "nope")
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPDATE_MASK_INVALID",
    )
    assert set(violations(err)) == {"update_mask.paths[0]", "update_mask.paths[1]"}
    await expect_error(
        call(
            server,
            "UpdatePerson",
            api.UpdatePersonRequest(
                person=pb.Person(id=created.id, time_zone="Nowhere/Town"),
                update_mask=mask("time_zone"),
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_TIME_ZONE",
    )
    # The change is announced with the changed paths and no personal data.
    async with grpc.aio.insecure_channel(server.address) as channel:
        events = await data_grpc.DataServiceStub(channel).ListEvents(
            data_api.ListEventsRequest(
                filter=data_pb.EventFilter(types=["classwire.api.events.v1.PersonUpdated"]),
                page_size=500,
            ),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    mine = [e for e in events.events if e.roster.person_updated.person_id == created.id]
    assert mine and list(mine[0].roster.person_updated.changed_fields) == [
        "given_name",
        "instructor_profile.weekly_load_limit",
    ]
    assert b"Grace" not in mine[0].SerializeToString()


async def test_people_pagination_filters_and_idempotency(server):
    role_tag = f"t{uuid.uuid4().hex[:6]}"
    org = (
        await call(
            server,
            "CreateOrg",
            api.CreateOrgRequest(org=pb.Org(name=role_tag, type=pb.ORG_TYPE_SCHOOL)),
        )
    ).org
    ids = set()
    for i in range(7):
        ids.add((await person(server, roles=[STAFF], org_ids=[org.id], given_name=f"S{i}")).id)
    seen, token = [], ""
    while True:
        page = await call(
            server,
            "ListPeople",
            api.ListPeopleRequest(org_id=org.id, role=STAFF, page_size=3, page_token=token),
        )
        seen.extend(p.id for p in page.people)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(ids)
    await expect_error(
        call(server, "ListPeople", api.ListPeopleRequest(org_id="", page_token=token or "x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    await expect_error(
        person(server, org_ids=["org_missing"]), grpc.StatusCode.NOT_FOUND, "ORG_NOT_FOUND"
    )
    request = api.CreatePersonRequest(
        person=pb.Person(roles=[LEARNER], given_name="Once"), request_id=str(uuid.uuid4())
    )
    first = await call(server, "CreatePerson", request)
    again = await call(server, "CreatePerson", request)
    assert first == again
    request.person.given_name = "Twice"
    await expect_error(
        call(server, "CreatePerson", request), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"
    )
    external = f"ext-{uuid.uuid4().hex[:8]}"
    await person(server, external_id=external)
    await expect_error(
        person(server, external_id=external), grpc.StatusCode.ALREADY_EXISTS, "EXTERNAL_ID_TAKEN"
    )


async def test_guardianship(server):
    learner = await person(server, roles=[LEARNER])
    guardian = await person(server, roles=[GUARDIAN], given_name="Parent")
    other = await person(server, roles=[INSTRUCTOR])
    link = pb.GuardianLink(
        learner_id=learner.id,
        guardian_id=guardian.id,
        relationship=pb.GUARDIAN_RELATIONSHIP_PARENT,
        receives_notices=True,
        may_consent=True,
    )
    created = (await call(server, "LinkGuardian", api.LinkGuardianRequest(link=link))).link
    assert created.relationship == pb.GUARDIAN_RELATIONSHIP_PARENT and created.create_time.seconds
    await expect_error(
        call(server, "LinkGuardian", api.LinkGuardianRequest(link=link)),
        grpc.StatusCode.ALREADY_EXISTS,
        "GUARDIAN_ALREADY_LINKED",
    )
    await expect_error(
        call(
            server,
            "LinkGuardian",
            api.LinkGuardianRequest(
                link=pb.GuardianLink(learner_id=learner.id, guardian_id=other.id)
            ),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ROLE_REQUIRED",
    )
    err = await expect_error(
        call(
            server,
            "LinkGuardian",
            api.LinkGuardianRequest(
                link=pb.GuardianLink(learner_id=learner.id, guardian_id=learner.id)
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "link.guardian_id" in violations(err)
    guardians = await call(server, "ListGuardians", api.ListGuardiansRequest(learner_id=learner.id))
    assert [g.person.given_name for g in guardians.guardians] == ["Parent"]
    wards = await call(server, "ListWards", api.ListWardsRequest(guardian_id=guardian.id))
    assert [w.person.id for w in wards.learners] == [learner.id]
    # A linked guardian who may consent decides for the learner.
    updated = (
        await call(
            server,
            "UpdatePerson",
            api.UpdatePersonRequest(
                person=pb.Person(
                    id=learner.id,
                    consents=[
                        pb.Consent(
                            kind=pb.CONSENT_KIND_TRANSCRIPTION,
                            decision=pb.CONSENT_DECISION_DENIED,
                            decided_by_person_id=guardian.id,
                        )
                    ],
                ),
                update_mask=mask("consents"),
            ),
        )
    ).person
    assert updated.consents[0].decided_by_person_id == guardian.id
    # The guardian role cannot be dropped while linked.
    await expect_error(
        call(
            server,
            "UpdatePerson",
            api.UpdatePersonRequest(
                person=pb.Person(id=guardian.id, roles=[STAFF]), update_mask=mask("roles")
            ),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ROLE_IN_USE",
    )
    await call(
        server,
        "UnlinkGuardian",
        api.UnlinkGuardianRequest(learner_id=learner.id, guardian_id=guardian.id),
    )
    await expect_error(
        call(
            server,
            "UnlinkGuardian",
            api.UnlinkGuardianRequest(learner_id=learner.id, guardian_id=guardian.id),
        ),
        grpc.StatusCode.NOT_FOUND,
        "GUARDIAN_LINK_NOT_FOUND",
    )
    wards = await call(server, "ListWards", api.ListWardsRequest(guardian_id=guardian.id))
    assert not wards.learners


async def school_with_class(server, capacity=0):
    org = (
        await call(
            server,
            "CreateOrg",
            api.CreateOrgRequest(
                org=pb.Org(name="North", type=pb.ORG_TYPE_SCHOOL, time_zone="America/New_York")
            ),
        )
    ).org
    term = (
        await call(
            server,
            "CreateAcademicSession",
            api.CreateAcademicSessionRequest(
                academic_session=pb.AcademicSession(
                    title="Fall",
                    type=pb.ACADEMIC_SESSION_TYPE_TERM,
                    start_date=pb.LocalDate(year=2026, month=9, day=1),
                    end_date=pb.LocalDate(year=2026, month=12, day=20),
                    org_id=org.id,
                    school_year=2027,
                )
            ),
        )
    ).academic_session
    course = (
        await call(
            server,
            "CreateCourse",
            api.CreateCourseRequest(
                course=pb.Course(title="Algebra", org_id=org.id, subjects=["math"])
            ),
        )
    ).course
    course_class = (
        await call(
            server,
            "CreateClass",
            api.CreateClassRequest(
                course_class=pb.Class(
                    course_id=course.id,
                    title="Algebra A",
                    subject="math",
                    academic_session_ids=[term.id],
                    capacity=capacity,
                )
            ),
        )
    ).course_class
    return org, term, course, course_class


async def test_orgs_sessions_courses_classes(server):
    org, term, course, course_class = await school_with_class(server)
    assert course_class.org_id == org.id  # the course's school by default
    assert term.start_date.month == 9
    district = (
        await call(
            server,
            "CreateOrg",
            api.CreateOrgRequest(org=pb.Org(name="District", type=pb.ORG_TYPE_DISTRICT)),
        )
    ).org
    updated = (
        await call(
            server,
            "UpdateOrg",
            api.UpdateOrgRequest(
                org=pb.Org(id=org.id, parent_id=district.id, etag=org.etag),
                update_mask=mask("parent_id"),
            ),
        )
    ).org
    assert updated.parent_id == district.id and updated.time_zone == "America/New_York"
    await expect_error(
        call(
            server,
            "UpdateOrg",
            api.UpdateOrgRequest(
                org=pb.Org(id=district.id, parent_id=org.id), update_mask=mask("parent_id")
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARENT_CYCLE",
    )
    await expect_error(
        call(
            server,
            "CreateAcademicSession",
            api.CreateAcademicSessionRequest(
                academic_session=pb.AcademicSession(
                    title="Bad",
                    type=pb.ACADEMIC_SESSION_TYPE_TERM,
                    start_date=pb.LocalDate(year=2026, month=9, day=1),
                    end_date=pb.LocalDate(year=2026, month=8, day=1),
                )
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "END_BEFORE_START",
    )
    archived = (
        await call(
            server,
            "UpdateCourse",
            api.UpdateCourseRequest(
                course=pb.Course(id=course.id, state=pb.RECORD_STATE_INACTIVE),
                update_mask=mask("state"),
            ),
        )
    ).course
    assert archived.state == pb.RECORD_STATE_INACTIVE
    listed = await call(
        server,
        "ListCourses",
        api.ListCoursesRequest(org_id=org.id, state=pb.RECORD_STATE_INACTIVE, subject="MATH"),
    )
    assert [c.id for c in listed.courses] == [course.id]
    classes = await call(server, "ListClasses", api.ListClassesRequest(academic_session_id=term.id))
    assert [c.id for c in classes.classes] == [course_class.id]


async def test_enrollments_derive_class_instructors(server):
    _, _, _, course_class = await school_with_class(server, capacity=1)
    teacher = await person(server, roles=[INSTRUCTOR])
    learner = await person(server, roles=[LEARNER])
    second = await person(server, roles=[LEARNER])

    async def enroll(who, role, **kw):
        return (
            await call(
                server,
                "CreateEnrollment",
                api.CreateEnrollmentRequest(
                    enrollment=pb.Enrollment(
                        person_id=who.id, class_id=course_class.id, role=role, **kw
                    )
                ),
            )
        ).enrollment

    taught = await enroll(teacher, pb.ENROLLMENT_ROLE_INSTRUCTOR, primary=True)
    await enroll(learner, pb.ENROLLMENT_ROLE_LEARNER)
    got = (
        await call(server, "GetClass", api.GetClassRequest(class_id=course_class.id))
    ).course_class
    assert list(got.instructor_ids) == [teacher.id] and got.learner_count == 1
    await expect_error(
        enroll(second, pb.ENROLLMENT_ROLE_LEARNER),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CLASS_FULL",
    )
    await expect_error(
        enroll(learner, pb.ENROLLMENT_ROLE_INSTRUCTOR),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ROLE_REQUIRED",
    )
    await expect_error(
        call(
            server,
            "UpdateClass",
            api.UpdateClassRequest(
                course_class=pb.Class(id=course_class.id, capacity=0, title="Renamed"),
                update_mask=mask("title", "instructor_ids"),
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPDATE_MASK_INVALID",
    )
    # Learners with active enrollments keep their role.
    await expect_error(
        call(
            server,
            "UpdatePerson",
            api.UpdatePersonRequest(
                person=pb.Person(id=learner.id, roles=[STAFF]), update_mask=mask("roles")
            ),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ROLE_IN_USE",
    )
    ended = (
        await call(
            server,
            "EndEnrollment",
            api.EndEnrollmentRequest(enrollment_id=taught.id, reason="moved"),
        )
    ).enrollment
    assert ended.state == pb.ENROLLMENT_STATE_ENDED and ended.end_reason == "moved"
    await expect_error(
        call(server, "EndEnrollment", api.EndEnrollmentRequest(enrollment_id=taught.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ENROLLMENT_ALREADY_ENDED",
    )
    got = (
        await call(server, "GetClass", api.GetClassRequest(class_id=course_class.id))
    ).course_class
    assert list(got.instructor_ids) == []
    listed = await call(
        server,
        "ListEnrollments",
        api.ListEnrollmentsRequest(class_id=course_class.id, state=pb.ENROLLMENT_STATE_ENDED),
    )
    assert [e.id for e in listed.enrollments] == [taught.id]
    # An end in the future keeps the enrollment active until then.
    later = timestamp_pb2.Timestamp()
    later.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    learning = await enroll(second, pb.ENROLLMENT_ROLE_STAFF) if False else None
    assert learning is None
    active = (
        await call(
            server,
            "ListEnrollments",
            api.ListEnrollmentsRequest(class_id=course_class.id, role=pb.ENROLLMENT_ROLE_LEARNER),
        )
    ).enrollments[0]
    pending = (
        await call(
            server,
            "EndEnrollment",
            api.EndEnrollmentRequest(enrollment_id=active.id, end_time=later),
        )
    ).enrollment
    assert pending.state == pb.ENROLLMENT_STATE_ACTIVE and pending.end_time == later


async def test_delete_person_erases_personal_data(server):
    _, _, _, course_class = await school_with_class(server)
    learner = await person(
        server, family_name="Erased", contact_channels=[pb.ContactChannel(email="e@example.org")]
    )
    guardian = await person(server, roles=[GUARDIAN])
    await call(
        server,
        "LinkGuardian",
        api.LinkGuardianRequest(
            link=pb.GuardianLink(learner_id=learner.id, guardian_id=guardian.id)
        ),
    )
    enrollment = (
        await call(
            server,
            "CreateEnrollment",
            api.CreateEnrollmentRequest(
                enrollment=pb.Enrollment(
                    person_id=learner.id, class_id=course_class.id, role=pb.ENROLLMENT_ROLE_LEARNER
                )
            ),
        )
    ).enrollment
    await call(server, "DeletePerson", api.DeletePersonRequest(person_id=learner.id))
    await expect_error(
        call(server, "GetPerson", api.GetPersonRequest(person_id=learner.id)),
        grpc.StatusCode.NOT_FOUND,
        "PERSON_NOT_FOUND",
    )
    ended = (
        await call(server, "GetEnrollment", api.GetEnrollmentRequest(enrollment_id=enrollment.id))
    ).enrollment
    assert ended.state == pb.ENROLLMENT_STATE_ENDED
    wards = await call(server, "ListWards", api.ListWardsRequest(guardian_id=guardian.id))
    assert not wards.learners
    row = await _stored_person(server, learner.id)
    assert (row.given_name, row.family_name, row.contact_channels) == ("", "", [])


async def _stored_person(server, person_id):
    from classwire.server.store.roster_models import RosterPerson

    async with server.server.platform.db.reader() as session:
        return await session.get(RosterPerson, person_id)


async def test_other_tenants_records_are_not_found(server, other_tenant):
    _, _, course, course_class = await school_with_class(server)
    mine = await person(server)
    theirs = other_tenant.admin_api_key_secret
    for method, request, reason in [
        ("GetPerson", api.GetPersonRequest(person_id=mine.id), "PERSON_NOT_FOUND"),
        ("GetCourse", api.GetCourseRequest(course_id=course.id), "COURSE_NOT_FOUND"),
        ("GetClass", api.GetClassRequest(class_id=course_class.id), "CLASS_NOT_FOUND"),
        ("GetPerson", api.GetPersonRequest(person_id="per_missing"), "PERSON_NOT_FOUND"),
        (
            "DeletePerson",
            api.DeletePersonRequest(person_id=mine.id),
            "PERSON_NOT_FOUND",
        ),
        (
            "UpdatePerson",
            api.UpdatePersonRequest(
                person=pb.Person(id=mine.id, given_name="x"), update_mask=mask("given_name")
            ),
            "PERSON_NOT_FOUND",
        ),
        ("ListGuardians", api.ListGuardiansRequest(learner_id=mine.id), "PERSON_NOT_FOUND"),
    ]:
        await expect_error(call(server, method, request, theirs), grpc.StatusCode.NOT_FOUND, reason)
    their_learner = await person(server, credential=theirs)
    await expect_error(
        call(
            server,
            "CreateEnrollment",
            api.CreateEnrollmentRequest(
                enrollment=pb.Enrollment(
                    person_id=their_learner.id,
                    class_id=course_class.id,
                    role=pb.ENROLLMENT_ROLE_LEARNER,
                )
            ),
        ),
        grpc.StatusCode.NOT_FOUND,
        "PERSON_NOT_FOUND",
    )
    listed = await call(server, "ListPeople", api.ListPeopleRequest(page_size=500), theirs)
    assert [p.id for p in listed.people] == [their_learner.id]


async def test_scopes(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        key = await platform_grpc.PlatformServiceStub(channel).CreateApiKey(
            platform_api.CreateApiKeyRequest(display_name="reader", scopes=["roster:read"]),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    await call(server, "ListPeople", api.ListPeopleRequest(), key.secret)
    await expect_error(
        person(server, credential=key.secret), grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE"
    )
