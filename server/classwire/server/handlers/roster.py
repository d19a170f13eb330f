"""RosterService: validate -> roster domain -> convert."""

from __future__ import annotations

import hashlib
import io
import zipfile

from classwire.api.roster.v1 import service_pb2 as api
from classwire.api.roster.v1 import service_pb2_grpc

from ..convert import roster as conv
from ..convert.common import mask_paths, time_or_none
from ..domain import roster as d
from ..domain.errors import FieldViolation, InvalidArgument, ResourceExhausted
from ..domain.idempotency import MAX_REQUEST_ID_LENGTH, IdempotencyKey
from ..rpc.context import principal
from .idempotency import key_for, respond
from .unimplemented import delegates, unimplemented_servicer

SERVICE = "classwire.api.roster.v1.RosterService"


def _key(method: str, request, response_type, convert):
    return key_for(
        f"{SERVICE}/{method}",
        request,
        response_type,
        to_response=convert,
        from_response=lambda m: m,
    )


def _mask(request, allowed: set[str]) -> list[str]:
    return mask_paths(request.update_mask, allowed)


def _archive_invalid(description: str) -> InvalidArgument:
    return InvalidArgument(
        FieldViolation("zip_chunk", description), reason="IMPORT_ARCHIVE_INVALID"
    )


class RosterHandler:
    IMPLEMENTED = tuple(
        name for name in vars(service_pb2_grpc.RosterServiceServicer) if not name.startswith("_")
    )

    def __init__(self, domain: d.RosterDomain) -> None:
        self.domain = domain

    # People --------------------------------------------------------------------------------------

    async def CreatePerson(self, request, context):
        caller = principal()
        caller.require(d.WRITE)

        def convert(row):
            return api.CreatePersonResponse(person=conv.person_to_proto(row))

        key = _key("CreatePerson", request, api.CreatePersonResponse, convert)
        result = await self.domain.create_person(
            caller, conv.person_from_proto(request.person), key
        )
        return respond(result, api.CreatePersonResponse, convert)

    async def GetPerson(self, request, context):
        row = await self.domain.get_person(principal(), request.person_id)
        return api.GetPersonResponse(person=conv.person_to_proto(row))

    async def ListPeople(self, request, context):
        rows, token = await self.domain.list_people(
            principal(),
            role=request.role,
            org_id=request.org_id,
            external_ids=list(request.external_ids),
            state=request.state,
            subject=request.subject,
            level=request.level,
            size=request.page_size,
            token=request.page_token,
        )
        return api.ListPeopleResponse(
            people=[conv.person_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdatePerson(self, request, context):
        principal().require(d.WRITE)
        paths = _mask(request, d.PERSON_PATHS | {"*"})
        row = await self.domain.update_person(
            principal(),
            request.person.id,
            conv.person_from_proto(request.person),
            paths,
            request.person.etag,
        )
        return api.UpdatePersonResponse(person=conv.person_to_proto(row))

    async def DeletePerson(self, request, context):
        await self.domain.delete_person(principal(), request.person_id, request.force, request.etag)
        return api.DeletePersonResponse()

    # Guardianship --------------------------------------------------------------------------------

    async def LinkGuardian(self, request, context):
        caller = principal()
        caller.require(d.WRITE)

        def convert(row):
            return api.LinkGuardianResponse(link=conv.link_to_proto(row))

        key = _key("LinkGuardian", request, api.LinkGuardianResponse, convert)
        result = await self.domain.link_guardian(caller, conv.link_from_proto(request.link), key)
        return respond(result, api.LinkGuardianResponse, convert)

    async def UnlinkGuardian(self, request, context):
        await self.domain.unlink_guardian(principal(), request.learner_id, request.guardian_id)
        return api.UnlinkGuardianResponse()

    async def ListGuardians(self, request, context):
        views, token = await self.domain.list_linked(
            principal(), request.learner_id, False, request.page_size, request.page_token
        )
        return api.ListGuardiansResponse(
            guardians=[conv.linked_to_proto(v) for v in views], next_page_token=token
        )

    async def ListWards(self, request, context):
        views, token = await self.domain.list_linked(
            principal(), request.guardian_id, True, request.page_size, request.page_token
        )
        return api.ListWardsResponse(
            learners=[conv.linked_to_proto(v) for v in views], next_page_token=token
        )

    # Organisations -------------------------------------------------------------------------------

    async def CreateOrg(self, request, context):
        caller = principal()
        caller.require(d.WRITE)

        def convert(row):
            return api.CreateOrgResponse(org=conv.org_to_proto(row))

        key = _key("CreateOrg", request, api.CreateOrgResponse, convert)
        result = await self.domain.create_org(caller, conv.org_from_proto(request.org), key)
        return respond(result, api.CreateOrgResponse, convert)

    async def GetOrg(self, request, context):
        row = await self.domain.get_org(principal(), request.org_id)
        return api.GetOrgResponse(org=conv.org_to_proto(row))

    async def ListOrgs(self, request, context):
        rows, token = await self.domain.list_orgs(
            principal(),
            request.parent_id,
            request.type,
            request.state,
            request.page_size,
            request.page_token,
        )
        return api.ListOrgsResponse(
            orgs=[conv.org_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateOrg(self, request, context):
        principal().require(d.WRITE)
        paths = _mask(request, d.ORG_PATHS)
        row = await self.domain.update_org(
            principal(), request.org.id, conv.org_from_proto(request.org), paths, request.org.etag
        )
        return api.UpdateOrgResponse(org=conv.org_to_proto(row))

    # Academic sessions ---------------------------------------------------------------------------

    async def CreateAcademicSession(self, request, context):
        caller = principal()
        caller.require(d.WRITE)

        def convert(row):
            return api.CreateAcademicSessionResponse(academic_session=conv.session_to_proto(row))

        key = _key("CreateAcademicSession", request, api.CreateAcademicSessionResponse, convert)
        result = await self.domain.create_academic_session(
            caller, conv.session_from_proto(request.academic_session), key
        )
        return respond(result, api.CreateAcademicSessionResponse, convert)

    async def GetAcademicSession(self, request, context):
        row = await self.domain.get_academic_session(principal(), request.academic_session_id)
        return api.GetAcademicSessionResponse(academic_session=conv.session_to_proto(row))

    async def ListAcademicSessions(self, request, context):
        rows, token = await self.domain.list_academic_sessions(
            principal(),
            request.org_id,
            request.type,
            request.school_year,
            request.page_size,
            request.page_token,
        )
        return api.ListAcademicSessionsResponse(
            academic_sessions=[conv.session_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateAcademicSession(self, request, context):
        principal().require(d.WRITE)
        paths = _mask(request, d.SESSION_PATHS)
        s = request.academic_session
        row = await self.domain.update_academic_session(
            principal(), s.id, conv.session_from_proto(s), paths, s.etag
        )
        return api.UpdateAcademicSessionResponse(academic_session=conv.session_to_proto(row))

    # Courses -------------------------------------------------------------------------------------

    async def CreateCourse(self, request, context):
        caller = principal()
        caller.require(d.WRITE)

        def convert(row):
            return api.CreateCourseResponse(course=conv.course_to_proto(row))

        key = _key("CreateCourse", request, api.CreateCourseResponse, convert)
        result = await self.domain.create_course(
            caller, conv.course_from_proto(request.course), key
        )
        return respond(result, api.CreateCourseResponse, convert)

    async def GetCourse(self, request, context):
        row = await self.domain.get_course(principal(), request.course_id)
        return api.GetCourseResponse(course=conv.course_to_proto(row))

    async def ListCourses(self, request, context):
        rows, token = await self.domain.list_courses(
            principal(),
            request.org_id,
            request.subject,
            request.state,
            request.page_size,
            request.page_token,
        )
        return api.ListCoursesResponse(
            courses=[conv.course_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateCourse(self, request, context):
        principal().require(d.WRITE)
        paths = _mask(request, d.COURSE_PATHS)
        c = request.course
        row = await self.domain.update_course(
            principal(), c.id, conv.course_from_proto(c), paths, c.etag
        )
        return api.UpdateCourseResponse(course=conv.course_to_proto(row))

    # Classes -------------------------------------------------------------------------------------

    async def CreateClass(self, request, context):
        caller = principal()
        caller.require(d.WRITE)

        def convert(view):
            return api.CreateClassResponse(course_class=conv.class_to_proto(view))

        key = _key("CreateClass", request, api.CreateClassResponse, convert)
        result = await self.domain.create_class(
            caller, conv.class_from_proto(request.course_class), key
        )
        return respond(result, api.CreateClassResponse, convert)

    async def GetClass(self, request, context):
        view = await self.domain.get_class(principal(), request.class_id)
        return api.GetClassResponse(course_class=conv.class_to_proto(view))

    async def ListClasses(self, request, context):
        views, token = await self.domain.list_classes(
            principal(),
            course_id=request.course_id,
            org_id=request.org_id,
            person_id=request.person_id,
            academic_session_id=request.academic_session_id,
            state=request.state,
            size=request.page_size,
            token=request.page_token,
        )
        return api.ListClassesResponse(
            classes=[conv.class_to_proto(v) for v in views], next_page_token=token
        )

    async def UpdateClass(self, request, context):
        principal().require(d.WRITE)
        paths = _mask(request, d.CLASS_PATHS)
        c = request.course_class
        view = await self.domain.update_class(
            principal(), c.id, conv.class_from_proto(c), paths, c.etag
        )
        return api.UpdateClassResponse(course_class=conv.class_to_proto(view))

    # Enrollments ---------------------------------------------------------------------------------

    async def CreateEnrollment(self, request, context):
        caller = principal()
        caller.require(d.WRITE)

        def convert(row):
            return api.CreateEnrollmentResponse(enrollment=conv.enrollment_to_proto(row))

        key = _key("CreateEnrollment", request, api.CreateEnrollmentResponse, convert)
        result = await self.domain.create_enrollment(
            caller, conv.enrollment_from_proto(request.enrollment), key
        )
        return respond(result, api.CreateEnrollmentResponse, convert)

    async def GetEnrollment(self, request, context):
        row = await self.domain.get_enrollment(principal(), request.enrollment_id)
        return api.GetEnrollmentResponse(enrollment=conv.enrollment_to_proto(row))

    async def EndEnrollment(self, request, context):
        row = await self.domain.end_enrollment(
            principal(),
            request.enrollment_id,
            time_or_none(request, "end_time"),
            request.reason,
        )
        return api.EndEnrollmentResponse(enrollment=conv.enrollment_to_proto(row))

    async def ListEnrollments(self, request, context):
        rows, token = await self.domain.list_enrollments(
            principal(),
            class_id=request.class_id,
            person_id=request.person_id,
            role=request.role,
            state=request.state,
            size=request.page_size,
            token=request.page_token,
        )
        return api.ListEnrollmentsResponse(
            enrollments=[conv.enrollment_to_proto(r) for r in rows], next_page_token=token
        )

    # Imports -------------------------------------------------------------------------------------

    async def ImportOneRoster(self, request_iterator, context):
        caller = principal()
        caller.require(d.WRITE)
        options = None
        zip_data = io.BytesIO()
        files: dict[str, bytearray] = {}
        last_file = ""
        total = 0
        digest = hashlib.sha256()
        async for message in request_iterator:
            part = message.WhichOneof("part")
            if options is None:
                if part != "options":
                    raise InvalidArgument(
                        FieldViolation("options", "the first message must carry the options"),
                        reason="IMPORT_OPTIONS_MISSING",
                    )
                options = message.options
                digest.update(options.SerializeToString(deterministic=True))
                continue
            if part == "options":
                raise InvalidArgument(
                    FieldViolation("options", "must be sent once, in the first message"),
                    reason="IMPORT_OPTIONS_MISSING",
                )
            if part == "zip_chunk":
                if files:
                    raise _archive_invalid("zip and file chunks cannot be mixed")
                data = message.zip_chunk
                zip_data.write(data)
                digest.update(b"z" + data)
            elif part == "file_chunk":
                if zip_data.tell():
                    raise _archive_invalid("zip and file chunks cannot be mixed")
                chunk = message.file_chunk
                name = chunk.name
                if not name or "/" in name or "\\" in name:
                    raise InvalidArgument(
                        FieldViolation("file_chunk.name", "must be a plain file name")
                    )
                if name in files and name != last_file:
                    raise InvalidArgument(
                        FieldViolation("file_chunk.name", "chunks of one file must be consecutive")
                    )
                files.setdefault(name, bytearray()).extend(chunk.data)
                last_file = name
                data = chunk.data
                digest.update(name.encode() + b"\0" + data)
            else:
                continue
            total += len(data)
            if total > d.MAX_IMPORT_BYTES:
                raise ResourceExhausted(
                    "the import is over the size limit", reason="IMPORT_TOO_LARGE"
                )
        if options is None:
            raise InvalidArgument(
                FieldViolation("options", "the stream carried no options"),
                reason="IMPORT_OPTIONS_MISSING",
            )
        problems = []
        if options.mode not in (0, 1, 2):
            problems.append(FieldViolation("options.mode", "is not an import mode"))
        if len(options.request_id) > MAX_REQUEST_ID_LENGTH:
            problems.append(FieldViolation("options.request_id", "is too long"))
        if problems:
            raise InvalidArgument(problems)
        if zip_data.tell():
            contents, sizes = _unzip(zip_data)
        else:
            contents = {name: bytes(data) for name, data in files.items()}
            sizes = {name: len(data) for name, data in contents.items()}
        key = None
        if options.request_id:
            key = IdempotencyKey(
                f"{SERVICE}/ImportOneRoster",
                options.request_id,
                digest.hexdigest(),
                lambda import_id: import_id.encode(),
                lambda data: data.decode(),
            )
        row = await self.domain.import_oneroster(
            caller,
            d.ImportOptions(mode=options.mode, dry_run=options.dry_run),
            contents,
            sizes,
            key,
        )
        return api.ImportOneRosterResponse(roster_import=conv.import_to_proto(row))

    async def GetRosterImport(self, request, context):
        row = await self.domain.get_import(principal(), request.roster_import_id)
        return api.GetRosterImportResponse(roster_import=conv.import_to_proto(row))

    async def ListRosterImports(self, request, context):
        rows, token = await self.domain.list_imports(
            principal(), request.state, request.page_size, request.page_token
        )
        return api.ListRosterImportsResponse(
            roster_imports=[conv.import_to_proto(r, with_issues=False) for r in rows],
            next_page_token=token,
        )


def _unzip(buffer: io.BytesIO) -> tuple[dict[str, bytes], dict[str, int]]:
    try:
        archive = zipfile.ZipFile(buffer)
        entries = [i for i in archive.infolist() if not i.is_dir()]
        # Sizes are checked from the directory first, so a small archive that inflates to
        # gigabytes is refused before it is inflated.
        if sum(i.file_size for i in entries) > d.MAX_IMPORT_BYTES:
            raise ResourceExhausted(
                "the archive inflates over the size limit", reason="IMPORT_TOO_LARGE"
            )
        contents = {}
        for info in entries:
            # CSV files sit at the archive's root; anything in a folder is not part of the set.
            if "/" in info.filename.rstrip("/"):
                continue
            contents[info.filename] = archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError):
        raise _archive_invalid("the chunks are not a readable zip archive") from None
    return contents, {name: len(data) for name, data in contents.items()}


def roster_servicer(platform) -> object:
    """The servicer, built from the composition root's Platform (db, uow, timers, ...)."""
    domain = d.RosterDomain(platform.db, platform.uow, getattr(platform, "timers", None))
    handler = RosterHandler(domain)
    return unimplemented_servicer(
        service_pb2_grpc.RosterServiceServicer,
        SERVICE,
        implemented=delegates(handler, RosterHandler.IMPLEMENTED),
    )
