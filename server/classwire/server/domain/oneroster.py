"""OneRoster 1.2 CSV: reading and validating a data set, row by row, before anything is applied.

Pure functions (no database, no I/O besides the bytes given), so they run on a worker thread.
Every problem becomes an issue with the file, the 1-based line (1 is the header), the column,
the row's sourcedId and a code; reasons never repeat a row's values (they may be personal data).

Files read: manifest.csv, orgs.csv, academicSessions.csv, courses.csv, classes.csv, users.csv,
roles.csv (OneRoster 1.2 moved a user's roles and organisations there) and enrollments.csv.
Other OneRoster files are ignored with a warning.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import date, datetime

from classwire.api.roster.v1 import resources_pb2 as pb

C = pb  # ImportIssueCode and ImportEntity values live on the module

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_ID = 255
MAX_TEXT = 200

BASE = ("sourcedId", "status", "dateLastModified")
# file -> (required columns, optional columns), per the OneRoster 1.2 CSV binding.
SPEC: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "orgs.csv": (BASE + ("name", "type"), ("identifier", "parentSourcedId")),
    "academicSessions.csv": (
        BASE + ("title", "type", "startDate", "endDate", "schoolYear"),
        ("parentSourcedId",),
    ),
    "courses.csv": (
        BASE + ("title", "orgSourcedId"),
        ("schoolYearSourcedId", "courseCode", "grades", "subjects", "subjectCodes"),
    ),
    "classes.csv": (
        BASE + ("title", "courseSourcedId", "classType", "schoolSourcedId", "termSourcedIds"),
        ("classCode", "grades", "location", "subjects", "subjectCodes", "periods"),
    ),
    "users.csv": (
        BASE + ("enabledUser", "username", "givenName", "familyName"),
        (
            "userIds",
            "middleName",
            "identifier",
            "email",
            "sms",
            "phone",
            "agentSourcedIds",
            "grades",
            "password",
            "userMasterIdentifier",
            "resourceSourcedIds",
            "preferredGivenName",
            "preferredMiddleName",
            "preferredFamilyName",
            "primaryOrgSourcedId",
            "pronouns",
        ),
    ),
    "roles.csv": (
        BASE + ("userSourcedId", "roleType", "role", "orgSourcedId"),
        ("beginDate", "endDate", "userProfileSourcedId"),
    ),
    "enrollments.csv": (
        BASE + ("classSourcedId", "schoolSourcedId", "userSourcedId", "role"),
        ("primary", "beginDate", "endDate"),
    ),
}
# Read in this order, so references always point at files already read.
ORDER = list(SPEC)
# OneRoster files classwire does not use: accepted, ignored with a warning.
IGNORED = {
    "demographics.csv",
    "lineItems.csv",
    "results.csv",
    "categories.csv",
    "resources.csv",
    "classResources.csv",
    "courseResources.csv",
    "userResources.csv",
    "scoreScales.csv",
    "userProfiles.csv",
    "lineItemLearningObjectiveIds.csv",
    "lineItemScoreScales.csv",
    "resultLearningObjectiveIds.csv",
    "resultScoreScales.csv",
}

ORG_TYPES = {
    "school": pb.ORG_TYPE_SCHOOL,
    "district": pb.ORG_TYPE_DISTRICT,
    "department": pb.ORG_TYPE_DEPARTMENT,
    "local": pb.ORG_TYPE_LOCAL,
    "state": pb.ORG_TYPE_STATE,
    "national": pb.ORG_TYPE_NATIONAL,
}
SESSION_TYPES = {
    "schoolYear": pb.ACADEMIC_SESSION_TYPE_SCHOOL_YEAR,
    "term": pb.ACADEMIC_SESSION_TYPE_TERM,
    "semester": pb.ACADEMIC_SESSION_TYPE_SEMESTER,
    "gradingPeriod": pb.ACADEMIC_SESSION_TYPE_GRADING_PERIOD,
}
LEARNER, INSTRUCTOR = pb.PERSON_ROLE_LEARNER, pb.PERSON_ROLE_INSTRUCTOR
GUARDIAN, STAFF = pb.PERSON_ROLE_GUARDIAN, pb.PERSON_ROLE_STAFF
USER_ROLES = {
    "student": LEARNER,
    "teacher": INSTRUCTOR,
    "parent": GUARDIAN,
    "guardian": GUARDIAN,
    "relative": GUARDIAN,
    "aide": STAFF,
    "counselor": STAFF,
    "principal": STAFF,
    "proctor": STAFF,
    "districtAdministrator": STAFF,
    "siteAdministrator": STAFF,
    "systemAdministrator": STAFF,
}
RELATIONSHIPS = {
    "parent": pb.GUARDIAN_RELATIONSHIP_PARENT,
    "guardian": pb.GUARDIAN_RELATIONSHIP_LEGAL_GUARDIAN,
    "relative": pb.GUARDIAN_RELATIONSHIP_RELATIVE,
}
ENROLLMENT_ROLES = {
    "student": pb.ENROLLMENT_ROLE_LEARNER,
    "teacher": pb.ENROLLMENT_ROLE_INSTRUCTOR,
    "administrator": pb.ENROLLMENT_ROLE_STAFF,
    "proctor": pb.ENROLLMENT_ROLE_STAFF,
    "aide": pb.ENROLLMENT_ROLE_STAFF,
}
ENROLLMENT_NEEDS = {
    pb.ENROLLMENT_ROLE_LEARNER: LEARNER,
    pb.ENROLLMENT_ROLE_INSTRUCTOR: INSTRUCTOR,
    pb.ENROLLMENT_ROLE_STAFF: STAFF,
}
ENTITY_OF = {
    "orgs.csv": pb.IMPORT_ENTITY_ORG,
    "academicSessions.csv": pb.IMPORT_ENTITY_ACADEMIC_SESSION,
    "courses.csv": pb.IMPORT_ENTITY_COURSE,
    "classes.csv": pb.IMPORT_ENTITY_CLASS,
    "users.csv": pb.IMPORT_ENTITY_PERSON,
    "enrollments.csv": pb.IMPORT_ENTITY_ENROLLMENT,
}
MANIFEST_FILES = {f"file.{name[:-4]}": name for name in list(SPEC) + sorted(IGNORED)}


@dataclass
class Issue:
    file: str
    line: int
    field: str
    sourced_id: str
    code: int
    reason: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Refs:
    """The tenant's existing records, by sourcedId: what a reference may name besides the
    import's own rows. Users map to their role numbers."""

    orgs: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    courses: set[str] = field(default_factory=set)
    classes: set[str] = field(default_factory=set)
    users: dict[str, set[int]] = field(default_factory=dict)


@dataclass
class Row:
    line: int
    sid: str
    status: str  # "active" or "tobedeleted"
    values: dict


@dataclass
class Result:
    modes: dict[str, str] = field(default_factory=dict)  # file -> bulk | delta
    rows: dict[str, dict[str, Row]] = field(default_factory=dict)  # file -> sid -> row
    # user sid -> (roles, guardian relationship or 0, org sids); from roles.csv
    user_roles: dict[str, tuple[set[int], int, list[str]]] = field(default_factory=dict)
    # (learner sid, guardian sid) -> relationship
    links: dict[tuple[str, str], int] = field(default_factory=dict)
    link_rows: int = 0
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    def error(self, file, line, column, sid, code, reason) -> None:
        self.errors.append(Issue(file, line, column, _shown(sid), code, reason))

    def warn(self, file, line, column, sid, code, reason) -> None:
        self.warnings.append(Issue(file, line, column, _shown(sid), code, reason))

    def of(self, name: str) -> dict[str, Row]:
        return self.rows.get(name, {})

    def row_counts(self) -> dict[int, dict[str, int]]:
        counts = {}
        for name, entity in ENTITY_OF.items():
            if name in self.modes:
                counts[entity] = _zero(len(self.of(name)))
        if "users.csv" in self.modes:
            counts[pb.IMPORT_ENTITY_GUARDIAN_LINK] = _zero(self.link_rows)
        return counts


def _shown(sid: str) -> str:
    """A sourcedId as a report may repeat it: never one that carries personal data."""
    return "" if EMAIL.search(sid) else sid[:MAX_ID]


def _zero(rows: int) -> dict[str, int]:
    return {"rows": rows, "created": 0, "updated": 0, "deactivated": 0, "unchanged": 0}


# Reading ----------------------------------------------------------------------------------------


def _decode(result: Result, name: str, data: bytes) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        result.error(name, line, "", "", C.IMPORT_ISSUE_CODE_MALFORMED_CSV, "not UTF-8 text")
        return None


def _records(result: Result, name: str, text: str) -> tuple[list[str], list[tuple[int, list]]]:
    """The header and (line, cells) records; malformed records are reported and skipped."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] = []
    records: list[tuple[int, list]] = []
    previous_end = 0
    try:
        for cells in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if not cells or cells == [""]:
                continue
            if not header:
                header = [c.strip() for c in cells]
                if start != 1:
                    result.error(
                        name,
                        start,
                        "",
                        "",
                        C.IMPORT_ISSUE_CODE_MALFORMED_CSV,
                        "the header must be the first line",
                    )
                continue
            if len(cells) != len(header):
                result.error(
                    name,
                    start,
                    "",
                    _sid_guess(header, cells),
                    C.IMPORT_ISSUE_CODE_MALFORMED_CSV,
                    f"the row has {len(cells)} columns, the header {len(header)}",
                )
                continue
            records.append((start, cells))
    except csv.Error as exc:
        result.error(
            name,
            previous_end + 1,
            "",
            "",
            C.IMPORT_ISSUE_CODE_MALFORMED_CSV,
            f"not valid CSV ({str(exc).split(':')[0]})",
        )
    return header, records


def _sid_guess(header: list[str], cells: list[str]) -> str:
    if "sourcedId" in header and header.index("sourcedId") < len(cells):
        value = cells[header.index("sourcedId")]
        return "" if EMAIL.search(value) else value[:MAX_ID]
    return ""


def _manifest(result: Result, files: dict[str, bytes], mode: int) -> None:
    name = "manifest.csv"
    if name not in files:
        result.error(name, 0, "", "", C.IMPORT_ISSUE_CODE_MISSING_FILE, "manifest.csv is required")
        return
    text = _decode(result, name, files[name])
    if text is None:
        return
    header, records = _records(result, name, text)
    if header[:2] != ["propertyName", "value"]:
        result.error(
            name,
            1,
            "",
            "",
            C.IMPORT_ISSUE_CODE_INVALID_MANIFEST,
            "the header must be propertyName,value",
        )
        return
    props: dict[str, tuple[int, str]] = {}
    for line, cells in records:
        props[cells[0].strip()] = (line, cells[1].strip())
    version = props.get("oneroster.version")
    if version is None:
        result.error(
            name,
            0,
            "oneroster.version",
            "",
            C.IMPORT_ISSUE_CODE_INVALID_MANIFEST,
            "oneroster.version is required",
        )
    elif version[1] != "1.2":
        result.error(
            name,
            version[0],
            "oneroster.version",
            "",
            C.IMPORT_ISSUE_CODE_INVALID_MANIFEST,
            "only OneRoster 1.2 is supported",
        )
    if "manifest.version" not in props:
        result.error(
            name,
            0,
            "manifest.version",
            "",
            C.IMPORT_ISSUE_CODE_INVALID_MANIFEST,
            "manifest.version is required",
        )
    wanted = {pb.IMPORT_MODE_BULK: "bulk", pb.IMPORT_MODE_DELTA: "delta"}.get(mode)
    for key, (line, value) in props.items():
        if not key.startswith("file."):
            continue
        file_name = MANIFEST_FILES.get(key)
        if file_name is None:
            result.warn(
                name, line, key, "", C.IMPORT_ISSUE_CODE_IGNORED_FILE, "not a OneRoster file"
            )
            continue
        if value not in ("bulk", "delta", "absent"):
            result.error(
                name,
                line,
                key,
                "",
                C.IMPORT_ISSUE_CODE_INVALID_MANIFEST,
                "must be bulk, delta or absent",
            )
            continue
        if value == "absent":
            if file_name in files:
                result.warn(
                    file_name,
                    0,
                    "",
                    "",
                    C.IMPORT_ISSUE_CODE_IGNORED_FILE,
                    "the manifest declares this file absent",
                )
            continue
        if file_name not in files:
            result.error(
                file_name,
                0,
                "",
                "",
                C.IMPORT_ISSUE_CODE_MISSING_FILE,
                f"the manifest declares it {value} but the import does not contain it",
            )
            continue
        if file_name in IGNORED:
            result.warn(
                file_name, 0, "", "", C.IMPORT_ISSUE_CODE_IGNORED_FILE, "not used by classwire"
            )
            continue
        if wanted and value != wanted:
            result.error(
                name,
                line,
                key,
                "",
                C.IMPORT_ISSUE_CODE_CONFLICTING_MODE,
                f"the request asks for {wanted} but the manifest declares {value}",
            )
            continue
        result.modes[file_name] = value
    declared = {MANIFEST_FILES[k] for k in props if k in MANIFEST_FILES}
    for file_name in files:
        if file_name != name and file_name not in declared:
            result.warn(
                file_name,
                0,
                "",
                "",
                C.IMPORT_ISSUE_CODE_IGNORED_FILE,
                "not declared in manifest.csv",
            )


def parse_and_validate(files: dict[str, bytes], mode: int, refs: Refs) -> Result:
    """Every file read and every row checked; `result.errors` empty means it can be applied."""
    result = Result()
    _manifest(result, files, mode)
    for name in ORDER:
        if name not in result.modes:
            continue
        text = _decode(result, name, files[name])
        if text is None:
            continue
        header, records = _records(result, name, text)
        required, _ = SPEC[name]
        missing = [c for c in required if c not in header]
        for column in missing:
            result.error(
                name,
                1,
                column,
                "",
                C.IMPORT_ISSUE_CODE_MISSING_COLUMN,
                "a required column is missing from the header",
            )
        duplicates = {c for c in header if header.count(c) > 1}
        for column in sorted(duplicates):
            result.error(
                name,
                1,
                column,
                "",
                C.IMPORT_ISSUE_CODE_MALFORMED_CSV,
                "the column appears twice in the header",
            )
        if missing or duplicates:
            continue
        rows: dict[str, Row] = {}
        delta = result.modes[name] == "delta"
        for line, cells in records:
            values = {h: c.strip() for h, c in zip(header, cells, strict=True)}
            row = _row(result, name, line, values, delta, required)
            if row is None:
                continue
            if row.sid in rows:
                result.error(
                    name,
                    line,
                    "sourcedId",
                    row.sid,
                    C.IMPORT_ISSUE_CODE_DUPLICATE_SOURCED_ID,
                    f"the sourcedId is also on line {rows[row.sid].line}",
                )
                continue
            rows[row.sid] = row
        result.rows[name] = rows
    _check_fields(result)
    _check_references(result, refs)
    return result


def _row(result: Result, name, line, values, delta, required) -> Row | None:
    sid = values["sourcedId"]
    shown = "" if EMAIL.search(sid) else sid[:MAX_ID]
    ok = True
    for column in required:
        if column in ("status", "dateLastModified") and not delta:
            continue
        if not values.get(column):
            result.error(
                name, line, column, shown, C.IMPORT_ISSUE_CODE_MISSING_VALUE, "a value is required"
            )
            ok = False
    if sid and EMAIL.search(sid):
        result.error(
            name,
            line,
            "sourcedId",
            "",
            C.IMPORT_ISSUE_CODE_PERSONAL_DATA_IN_IDENTIFIER,
            "identifiers must carry no personal data; this one looks like an e-mail address",
        )
        ok = False
    elif len(sid) > MAX_ID:
        result.error(
            name,
            line,
            "sourcedId",
            "",
            C.IMPORT_ISSUE_CODE_INVALID_VALUE,
            f"must be at most {MAX_ID} characters",
        )
        ok = False
    status = values.get("status", "")
    if status not in ("", "active", "tobedeleted"):
        result.error(
            name,
            line,
            "status",
            shown,
            C.IMPORT_ISSUE_CODE_INVALID_VALUE,
            "must be active or tobedeleted",
        )
        ok = False
    stamp = values.get("dateLastModified", "")
    if stamp and _datetime(stamp) is None:
        result.error(
            name,
            line,
            "dateLastModified",
            shown,
            C.IMPORT_ISSUE_CODE_INVALID_VALUE,
            "must be an ISO 8601 date and time",
        )
        ok = False
    if not sid:
        return None
    row = Row(line, sid, status or "active", values)
    return row if ok else _mark_bad(row)


def _mark_bad(row: Row) -> Row:
    # Kept (so references to it do not add noise) but never applied: errors stop the import.
    row.values["__bad__"] = "1"
    return row


def _datetime(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else None
    except ValueError:
        return None


def split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _bool(value: str) -> bool | None:
    return {"true": True, "false": False}.get(value.lower())


def _check_fields(result: Result) -> None:
    def bad(name, row, column, code, reason):
        result.error(name, row.line, column, row.sid, code, reason)

    invalid = C.IMPORT_ISSUE_CODE_INVALID_VALUE
    for row in result.of("orgs.csv").values():
        v = row.values
        if v["type"] and v["type"] not in ORG_TYPES:
            bad("orgs.csv", row, "type", invalid, "must be one of " + ", ".join(ORG_TYPES))
        if len(v["name"]) > MAX_TEXT:
            bad("orgs.csv", row, "name", invalid, f"must be at most {MAX_TEXT} characters")
        if v.get("parentSourcedId") == row.sid:
            bad(
                "orgs.csv",
                row,
                "parentSourcedId",
                C.IMPORT_ISSUE_CODE_INCONSISTENT_ROW,
                "an organisation cannot be its own parent",
            )
    for row in result.of("academicSessions.csv").values():
        v = row.values
        if v["type"] and v["type"] not in SESSION_TYPES:
            bad(
                "academicSessions.csv",
                row,
                "type",
                invalid,
                "must be one of " + ", ".join(SESSION_TYPES),
            )
        start, end = _date(v["startDate"]), _date(v["endDate"])
        for column, parsed in (("startDate", start), ("endDate", end)):
            if v[column] and parsed is None:
                bad("academicSessions.csv", row, column, invalid, "must be a date (YYYY-MM-DD)")
        if start and end and end < start:
            bad(
                "academicSessions.csv",
                row,
                "endDate",
                C.IMPORT_ISSUE_CODE_INCONSISTENT_ROW,
                "the end date is before the start date",
            )
        if v["schoolYear"] and not re.fullmatch(r"\d{4}", v["schoolYear"]):
            bad("academicSessions.csv", row, "schoolYear", invalid, "must be a year (YYYY)")
    for row in result.of("classes.csv").values():
        if row.values["classType"] and row.values["classType"] not in ("homeroom", "scheduled"):
            bad("classes.csv", row, "classType", invalid, "must be homeroom or scheduled")
    for row in result.of("users.csv").values():
        v = row.values
        if v["enabledUser"] and _bool(v["enabledUser"]) is None:
            bad("users.csv", row, "enabledUser", invalid, "must be true or false")
        master = v.get("userMasterIdentifier", "")
        if master and EMAIL.search(master):
            bad(
                "users.csv",
                row,
                "userMasterIdentifier",
                C.IMPORT_ISSUE_CODE_PERSONAL_DATA_IN_IDENTIFIER,
                "identifiers must carry no personal data; this one looks like an e-mail address",
            )
        if _has_name(row.sid, v.get("givenName", ""), v.get("familyName", "")):
            bad(
                "users.csv",
                row,
                "sourcedId",
                C.IMPORT_ISSUE_CODE_PERSONAL_DATA_IN_IDENTIFIER,
                "identifiers must carry no personal data; this one contains the user's name",
            )
        email = v.get("email", "")
        if email and not re.fullmatch(EMAIL.pattern, email):
            bad("users.csv", row, "email", invalid, "is not a well-formed e-mail address")
        sms = v.get("sms", "")
        if sms and not re.fullmatch(r"\+[1-9]\d{6,14}", sms):
            bad("users.csv", row, "sms", invalid, "must be an E.164 number such as +14155550100")
        for column in ("givenName", "familyName", "preferredGivenName", "preferredFamilyName"):
            if len(v.get(column, "")) > MAX_TEXT:
                bad("users.csv", row, column, invalid, f"must be at most {MAX_TEXT} characters")
    for row in result.of("roles.csv").values():
        v = row.values
        if v["roleType"] and v["roleType"] not in ("primary", "secondary"):
            bad("roles.csv", row, "roleType", invalid, "must be primary or secondary")
        if v["role"] and v["role"] not in USER_ROLES:
            bad("roles.csv", row, "role", invalid, "must be a OneRoster 1.2 role")
        for column in ("beginDate", "endDate"):
            if v.get(column) and _date(v[column]) is None:
                bad("roles.csv", row, column, invalid, "must be a date (YYYY-MM-DD)")
    for row in result.of("enrollments.csv").values():
        v = row.values
        if v["role"] and v["role"] not in ENROLLMENT_ROLES:
            bad(
                "enrollments.csv",
                row,
                "role",
                invalid,
                "must be one of " + ", ".join(ENROLLMENT_ROLES),
            )
        if v.get("primary") and _bool(v["primary"]) is None:
            bad("enrollments.csv", row, "primary", invalid, "must be true or false")
        begin, end = _date(v.get("beginDate", "")), _date(v.get("endDate", ""))
        for column, parsed in (("beginDate", begin), ("endDate", end)):
            if v.get(column) and parsed is None:
                bad("enrollments.csv", row, column, invalid, "must be a date (YYYY-MM-DD)")
        if begin and end and end < begin:
            bad(
                "enrollments.csv",
                row,
                "endDate",
                C.IMPORT_ISSUE_CODE_INCONSISTENT_ROW,
                "the end date is before the begin date",
            )


def _has_name(sid: str, given: str, family: str) -> bool:
    def norm(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower())

    s, g, f = norm(sid), norm(given), norm(family)
    return len(g) >= 2 and len(f) >= 2 and g in s and f in s


def _check_references(result: Result, refs: Refs) -> None:
    unknown = C.IMPORT_ISSUE_CODE_UNKNOWN_REFERENCE
    inconsistent = C.IMPORT_ISSUE_CODE_INCONSISTENT_ROW
    orgs = set(result.of("orgs.csv")) | refs.orgs
    sessions = set(result.of("academicSessions.csv")) | refs.sessions
    courses = set(result.of("courses.csv")) | refs.courses
    classes = set(result.of("classes.csv")) | refs.classes
    users = set(result.of("users.csv")) | set(refs.users)

    def need(name, row, column, pool, what, many=False):
        value = row.values.get(column, "")
        for item in split(value) if many else ([value] if value else []):
            if item not in pool:
                result.error(
                    name,
                    row.line,
                    column,
                    row.sid,
                    unknown,
                    f"names no {what} in the import or the tenant",
                )

    for row in result.of("orgs.csv").values():
        need("orgs.csv", row, "parentSourcedId", orgs, "organisation")
    for row in result.of("academicSessions.csv").values():
        need("academicSessions.csv", row, "parentSourcedId", sessions, "academic session")
    for row in result.of("courses.csv").values():
        need("courses.csv", row, "orgSourcedId", orgs, "organisation")
        need("courses.csv", row, "schoolYearSourcedId", sessions, "academic session")
    for row in result.of("classes.csv").values():
        need("classes.csv", row, "courseSourcedId", courses, "course")
        need("classes.csv", row, "schoolSourcedId", orgs, "organisation")
        need("classes.csv", row, "termSourcedIds", sessions, "academic session", many=True)
    for row in result.of("roles.csv").values():
        need("roles.csv", row, "userSourcedId", users, "user")
        need("roles.csv", row, "orgSourcedId", orgs, "organisation")

    # A user's roles: from roles.csv when it is part of the import, else as stored.
    for row in sorted(result.of("roles.csv").values(), key=lambda r: r.line):
        if row.status == "tobedeleted" or "__bad__" in row.values:
            continue
        roles, relationship, org_ids = result.user_roles.setdefault(
            row.values["userSourcedId"], (set(), 0, [])
        )
        role = USER_ROLES.get(row.values["role"])
        if role is None:
            continue
        roles.add(role)
        if role == GUARDIAN and not relationship:
            relationship = RELATIONSHIPS[row.values["role"]]
        org = row.values["orgSourcedId"]
        if row.values["roleType"] == "primary":
            org_ids.insert(0, org)
        elif org not in org_ids:
            org_ids.append(org)
        result.user_roles[row.values["userSourcedId"]] = (roles, relationship, org_ids)

    # A bulk roles.csv is complete: a user it does not name has no role. A delta one changes
    # only the users it names; the others keep their stored roles.
    roles_complete = result.modes.get("roles.csv") == "bulk"

    def roles_of(sid: str) -> set[int]:
        if sid in result.user_roles:
            return result.user_roles[sid][0]
        if roles_complete and sid in result.of("users.csv"):
            return set()
        return refs.users.get(sid, set())

    for row in result.of("users.csv").values():
        need("users.csv", row, "primaryOrgSourcedId", orgs, "organisation")
        need("users.csv", row, "agentSourcedIds", users, "user", many=True)
        if row.status != "tobedeleted" and not roles_of(row.sid):
            result.error(
                "users.csv",
                row.line,
                "",
                row.sid,
                inconsistent,
                "the user has no role: roles.csv has no row for this user",
            )
        mine = roles_of(row.sid)
        for agent in split(row.values.get("agentSourcedIds", "")):
            if agent not in users:
                continue
            theirs = roles_of(agent)
            if LEARNER in mine and GUARDIAN in theirs:
                key = (row.sid, agent)
                relationship = result.user_roles.get(agent, (set(), 0, []))[1]
            elif GUARDIAN in mine and LEARNER in theirs:
                key = (agent, row.sid)
                relationship = result.user_roles.get(row.sid, (set(), 0, []))[1]
            else:
                result.error(
                    "users.csv",
                    row.line,
                    "agentSourcedIds",
                    row.sid,
                    inconsistent,
                    "an agent link must join a learner (student) and a guardian "
                    "(parent, guardian or relative)",
                )
                continue
            result.link_rows += 1
            result.links[key] = relationship or pb.GUARDIAN_RELATIONSHIP_OTHER

    for row in result.of("enrollments.csv").values():
        need("enrollments.csv", row, "classSourcedId", classes, "class")
        need("enrollments.csv", row, "schoolSourcedId", orgs, "organisation")
        need("enrollments.csv", row, "userSourcedId", users, "user")
        role = ENROLLMENT_ROLES.get(row.values["role"])
        user = row.values["userSourcedId"]
        if role and user in users and row.status != "tobedeleted":
            if ENROLLMENT_NEEDS[role] not in roles_of(user):
                result.error(
                    "enrollments.csv",
                    row.line,
                    "role",
                    row.sid,
                    inconsistent,
                    "the user does not hold the person role this enrollment role needs",
                )
