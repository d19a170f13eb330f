"""ImportOneRoster over real gRPC: a generated district round-trips, a delta changes only its
rows, a malformed import changes nothing and reports every problem, dry runs apply nothing."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.roster.v1 import resources_pb2 as pb
from classwire.api.roster.v1 import service_pb2 as api
from classwire.api.roster.v1 import service_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from oneroster import District, district, to_csv, to_zip  # noqa: E402

E = pb.ImportEntity
CODE = pb.ImportIssueCode


def reason_of(exc) -> str:
    for detail in rpc_status.from_call(exc).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


@pytest.fixture(scope="module")
async def tenant(server):
    """A fresh tenant per module, so counts are exact whatever other tests created."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name="Lakeside"),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return created.admin_api_key_secret


def stub_call(server, key):
    async def call(method, request):
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = service_pb2_grpc.RosterServiceStub(channel)
            return await getattr(stub, method)(
                request, metadata=(("authorization", f"Bearer {key}"),)
            )

    return call


async def run_import(server, key, *, zip_bytes=None, files=None, dry_run=False, mode=0, rid=""):
    def messages():
        yield api.ImportOneRosterRequest(
            options=api.ImportOneRosterOptions(dry_run=dry_run, mode=mode, request_id=rid)
        )
        if zip_bytes is not None:
            for start in range(0, len(zip_bytes), 1 << 20):
                yield api.ImportOneRosterRequest(zip_chunk=zip_bytes[start : start + (1 << 20)])
        for name, data in (files or {}).items():
            for start in range(0, max(len(data), 1), 1 << 20):
                yield api.ImportOneRosterRequest(
                    file_chunk=api.FileChunk(name=name, data=data[start : start + (1 << 20)])
                )

    async with grpc.aio.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", 8 << 20)]
    ) as channel:
        stub = service_pb2_grpc.RosterServiceStub(channel)
        response = await stub.ImportOneRoster(
            messages(), metadata=(("authorization", f"Bearer {key}"),)
        )
    return response.roster_import


def counts(imp) -> dict[int, tuple[int, int, int, int, int]]:
    return {
        c.entity: (c.rows, c.created, c.updated, c.deactivated, c.unchanged)
        for c in imp.report.counts
    }


async def all_pages(call, method, request, field):
    items, token = [], ""
    while True:
        request.page_token = token
        request.page_size = 500
        page = await call(method, request)
        items.extend(getattr(page, field))
        token = page.next_page_token
        if not token:
            return items


async def test_district_round_trips_and_delta(server, tenant):
    call = stub_call(server, tenant)
    data = district()
    # A dry run validates and counts, and applies nothing.
    dry = await run_import(server, tenant, zip_bytes=data.zip(), dry_run=True)
    assert dry.state == pb.ROSTER_IMPORT_STATE_VALIDATED, list(dry.report.errors)[:5]
    assert counts(dry)[E.Value("IMPORT_ENTITY_PERSON")] == (6150, 6150, 0, 0, 0)
    assert not (await call("ListPeople", api.ListPeopleRequest())).people

    rid = str(uuid.uuid4())
    done = await run_import(server, tenant, zip_bytes=data.zip(), rid=rid)
    assert done.state == pb.ROSTER_IMPORT_STATE_SUCCEEDED, list(done.report.errors)[:5]
    c = counts(done)
    assert c[E.Value("IMPORT_ENTITY_ORG")] == (4, 4, 0, 0, 0)
    assert c[E.Value("IMPORT_ENTITY_ACADEMIC_SESSION")] == (3, 3, 0, 0, 0)
    assert c[E.Value("IMPORT_ENTITY_COURSE")] == (15, 15, 0, 0, 0)
    assert c[E.Value("IMPORT_ENTITY_CLASS")] == (750, 750, 0, 0, 0)
    assert c[E.Value("IMPORT_ENTITY_PERSON")] == (6150, 6150, 0, 0, 0)
    assert c[E.Value("IMPORT_ENTITY_GUARDIAN_LINK")] == (3000, 3000, 0, 0, 0)
    assert c[E.Value("IMPORT_ENTITY_ENROLLMENT")] == (15750, 15750, 0, 0, 0)

    # Read back through the API: counts per role, and spot checks.
    learners = await all_pages(
        call, "ListPeople", api.ListPeopleRequest(role=pb.PERSON_ROLE_LEARNER), "people"
    )
    instructors = await all_pages(
        call, "ListPeople", api.ListPeopleRequest(role=pb.PERSON_ROLE_INSTRUCTOR), "people"
    )
    guardians = await all_pages(
        call, "ListPeople", api.ListPeopleRequest(role=pb.PERSON_ROLE_GUARDIAN), "people"
    )
    assert (len(learners), len(instructors), len(guardians)) == (3000, 150, 3000)
    schools = await call("ListOrgs", api.ListOrgsRequest(type=pb.ORG_TYPE_SCHOOL))
    assert len(schools.orgs) == 3 and all(o.parent_id for o in schools.orgs)

    found = await call("ListPeople", api.ListPeopleRequest(external_ids=["usr-l00042"]))
    learner = found.people[0]
    source = next(u for u in data.rows["users.csv"] if u["sourcedId"] == "usr-l00042")
    assert (learner.given_name, learner.family_name) == (source["givenName"], source["familyName"])
    assert learner.roles == [pb.PERSON_ROLE_LEARNER] and learner.grades == ["05"]
    school = next(o for o in schools.orgs if o.external_id == source["primaryOrgSourcedId"])
    assert list(learner.org_ids) == [school.id]
    links = await call("ListGuardians", api.ListGuardiansRequest(learner_id=learner.id))
    assert [g.person.external_id for g in links.guardians] == [source["agentSourcedIds"]]
    assert links.guardians[0].link.relationship == pb.GUARDIAN_RELATIONSHIP_PARENT
    guardian = links.guardians[0].person
    assert guardian.contact_channels[0].email.endswith("@example.org")
    assert guardian.contact_channels[1].phone_number.startswith("+1415555")
    # Every learner has exactly one guardian (checked from the guardians' side, in pages).
    sample = guardians[::300]
    for g in sample:
        wards = await call("ListWards", api.ListWardsRequest(guardian_id=g.id))
        assert len(wards.learners) == 1

    classes = await call("ListClasses", api.ListClassesRequest(person_id=learner.id))
    assert len(classes.classes) == 5
    for course_class in classes.classes:
        assert len(course_class.instructor_ids) == 1 and course_class.learner_count >= 1
        assert course_class.academic_session_ids
    enrollment_rows = [
        e
        for e in data.rows["enrollments.csv"]
        if e["classSourcedId"] == classes.classes[0].external_id
    ]
    assert classes.classes[0].learner_count == len(enrollment_rows) - 1

    # The same request id returns the first import, without importing again.
    again = await run_import(server, tenant, zip_bytes=data.zip(), rid=rid)
    assert again == done

    # A delta: one learner renamed, one guardian removed, one enrollment ended, a new learner.
    delta = District(modes={"users.csv": "delta", "roles.csv": "delta", "enrollments.csv": "delta"})
    renamed = dict(
        source, givenName="Renamed", status="active", dateLastModified="2026-01-10T00:00:00Z"
    )
    gone_guardian = next(u for u in data.rows["users.csv"] if u["sourcedId"] == "usr-g00007")
    gone = dict(gone_guardian, status="tobedeleted", dateLastModified="2026-01-10T00:00:00Z")
    newcomer = {
        "sourcedId": "usr-l99999",
        "status": "active",
        "dateLastModified": "2026-01-10T00:00:00Z",
        "enabledUser": "true",
        "username": "new",
        "givenName": "Nova",
        "familyName": "Lind",
        "agentSourcedIds": "usr-g00001",
        "primaryOrgSourcedId": "org-school-01",
    }
    ended_row = next(e for e in data.rows["enrollments.csv"] if e["userSourcedId"] == "usr-l00042")
    delta.rows = {
        "users.csv": [renamed, gone, newcomer],
        "roles.csv": [
            {
                "sourcedId": "rol-usr-l99999",
                "status": "active",
                "dateLastModified": "2026-01-10T00:00:00Z",
                "userSourcedId": "usr-l99999",
                "roleType": "primary",
                "role": "student",
                "orgSourcedId": "org-school-01",
            }
        ],
        "enrollments.csv": [
            dict(ended_row, status="tobedeleted", dateLastModified="2026-01-10T00:00:00Z")
        ],
    }
    applied = await run_import(server, tenant, files=delta.files())
    assert applied.state == pb.ROSTER_IMPORT_STATE_SUCCEEDED, list(applied.report.errors)
    c = counts(applied)
    assert c[E.Value("IMPORT_ENTITY_PERSON")] == (3, 1, 1, 1, 0)
    assert c[E.Value("IMPORT_ENTITY_ENROLLMENT")] == (1, 0, 0, 1, 0)
    assert c[E.Value("IMPORT_ENTITY_GUARDIAN_LINK")][1] == 1
    got = (await call("GetPerson", api.GetPersonRequest(person_id=learner.id))).person
    assert got.given_name == "Renamed" and got.etag == "2"
    inactive = await call(
        "ListPeople",
        api.ListPeopleRequest(external_ids=["usr-g00007"], state=pb.RECORD_STATE_INACTIVE),
    )
    assert len(inactive.people) == 1
    classes = await call("ListClasses", api.ListClassesRequest(person_id=learner.id))
    assert len(classes.classes) == 4
    # Untouched records stay as they were.
    still = await call("ListPeople", api.ListPeopleRequest(external_ids=["usr-l00043"]))
    assert still.people[0].etag == "1"
    listed = await call("ListRosterImports", api.ListRosterImportsRequest())
    assert listed.roster_imports[0].id == applied.id and not listed.roster_imports[0].report.errors


async def test_malformed_import_changes_nothing_and_reports_every_row(server):
    key = await _tenant_key(server)
    call = stub_call(server, key)
    data = district(
        schools=1,
        instructors=2,
        learners=4,
        classes_per_instructor=1,
        classes_per_learner=1,
        prefix="m-",
    )
    rows = data.rows
    rows["orgs.csv"][1]["type"] = "campus"  # line 3
    rows["users.csv"][0]["sourcedId"] = "teacher@example.org"  # line 2
    rows["users.csv"][3]["agentSourcedIds"] = "m-usr-g09999"  # line 5
    rows["enrollments.csv"][0]["classSourcedId"] = "m-cls-missing"  # line 2
    rows["academicSessions.csv"][1]["endDate"] = "2025-01-01"  # line 3
    files = data.files()
    # A row with the wrong column count in courses.csv (line 3).
    lines = files["courses.csv"].decode().splitlines()
    lines[2] = lines[2] + ",extra"
    files["courses.csv"] = ("\r\n".join(lines) + "\r\n").encode()
    # roles.csv loses a required column.
    files["roles.csv"] = to_csv(
        "roles.csv",
        rows["roles.csv"],
        header=[
            "sourcedId",
            "status",
            "dateLastModified",
            "userSourcedId",
            "roleType",
            "orgSourcedId",
        ],
    )
    files["demographics.csv"] = b"sourcedId\r\n"
    result = await run_import(server, key, zip_bytes=to_zip(files))
    assert result.state == pb.ROSTER_IMPORT_STATE_FAILED
    errors = {(e.file, e.line, e.field, e.code) for e in result.report.errors}
    expected = {
        ("orgs.csv", 3, "type", CODE.Value("IMPORT_ISSUE_CODE_INVALID_VALUE")),
        ("users.csv", 2, "sourcedId", CODE.Value("IMPORT_ISSUE_CODE_PERSONAL_DATA_IN_IDENTIFIER")),
        ("users.csv", 5, "agentSourcedIds", CODE.Value("IMPORT_ISSUE_CODE_UNKNOWN_REFERENCE")),
        ("enrollments.csv", 2, "classSourcedId", CODE.Value("IMPORT_ISSUE_CODE_UNKNOWN_REFERENCE")),
        ("academicSessions.csv", 3, "endDate", CODE.Value("IMPORT_ISSUE_CODE_INCONSISTENT_ROW")),
        ("courses.csv", 3, "", CODE.Value("IMPORT_ISSUE_CODE_MALFORMED_CSV")),
        ("roles.csv", 1, "role", CODE.Value("IMPORT_ISSUE_CODE_MISSING_COLUMN")),
    }
    assert expected <= errors, errors - expected
    for issue in result.report.errors:
        assert issue.reason and "example.org" not in issue.reason + issue.sourced_id
    assert any(
        w.file == "demographics.csv" and w.code == CODE.Value("IMPORT_ISSUE_CODE_IGNORED_FILE")
        for w in result.report.warnings
    )
    # Nothing was applied.
    assert not (await call("ListPeople", api.ListPeopleRequest())).people
    assert not (await call("ListOrgs", api.ListOrgsRequest())).orgs
    stored = await call("GetRosterImport", api.GetRosterImportRequest(roster_import_id=result.id))
    assert len(stored.roster_import.report.errors) == len(result.report.errors)


async def _tenant_key(server) -> str:
    async with grpc.aio.insecure_channel(server.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name=f"t-{uuid.uuid4().hex[:6]}"),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return created.admin_api_key_secret


async def test_request_errors(server):
    key = await _tenant_key(server)

    async def stream(*messages):
        async def gen():
            for m in messages:
                yield m

        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = service_pb2_grpc.RosterServiceStub(channel)
            return await stub.ImportOneRoster(gen(), metadata=(("authorization", f"Bearer {key}"),))

    options = api.ImportOneRosterRequest(options=api.ImportOneRosterOptions())
    for messages, code, reason in [
        (
            (api.ImportOneRosterRequest(zip_chunk=b"PK"),),
            "INVALID_ARGUMENT",
            "IMPORT_OPTIONS_MISSING",
        ),
        ((options, options), "INVALID_ARGUMENT", "IMPORT_OPTIONS_MISSING"),
        (
            (options, api.ImportOneRosterRequest(zip_chunk=b"not a zip")),
            "INVALID_ARGUMENT",
            "IMPORT_ARCHIVE_INVALID",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stream(*messages)
        assert caught.value.code().name == code
        assert reason_of(caught.value) == reason
    # No manifest: a FAILED import naming the missing file, not an RPC error.
    result = await run_import(server, key, files={"orgs.csv": b"sourcedId\r\n"})
    assert result.state == pb.ROSTER_IMPORT_STATE_FAILED
    assert (result.report.errors[0].file, result.report.errors[0].code) == (
        "manifest.csv",
        CODE.Value("IMPORT_ISSUE_CODE_MISSING_FILE"),
    )
    # The request's mode must agree with the manifest.
    data = district(
        schools=1,
        instructors=1,
        learners=1,
        classes_per_instructor=1,
        classes_per_learner=1,
        prefix="c-",
    )
    result = await run_import(server, key, files=data.files(), mode=pb.IMPORT_MODE_DELTA)
    assert result.state == pb.ROSTER_IMPORT_STATE_FAILED
    assert {e.code for e in result.report.errors} == {
        CODE.Value("IMPORT_ISSUE_CODE_CONFLICTING_MODE")
    }
