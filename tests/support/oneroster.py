"""A generated OneRoster 1.2 CSV school district, for import tests, scheduling tests and benches.

`district()` returns the rows of every file as dicts (so a test can change some and write a
delta), and `District.files()` / `District.zip()` serialise them as the CSV binding says.
Identifiers are opaque (`usr-000042`); names and addresses are synthetic.
"""

from __future__ import annotations

import csv
import io
import random
import zipfile
from dataclasses import dataclass, field

HEADERS = {
    "orgs.csv": [
        "sourcedId",
        "status",
        "dateLastModified",
        "name",
        "type",
        "identifier",
        "parentSourcedId",
    ],
    "academicSessions.csv": [
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "type",
        "startDate",
        "endDate",
        "parentSourcedId",
        "schoolYear",
    ],
    "courses.csv": [
        "sourcedId",
        "status",
        "dateLastModified",
        "schoolYearSourcedId",
        "title",
        "courseCode",
        "grades",
        "orgSourcedId",
        "subjects",
        "subjectCodes",
    ],
    "classes.csv": [
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "grades",
        "courseSourcedId",
        "classCode",
        "classType",
        "location",
        "schoolSourcedId",
        "termSourcedIds",
        "subjects",
        "subjectCodes",
        "periods",
    ],
    "users.csv": [
        "sourcedId",
        "status",
        "dateLastModified",
        "enabledUser",
        "username",
        "userIds",
        "givenName",
        "familyName",
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
    ],
    "roles.csv": [
        "sourcedId",
        "status",
        "dateLastModified",
        "userSourcedId",
        "roleType",
        "role",
        "beginDate",
        "endDate",
        "orgSourcedId",
        "userProfileSourcedId",
    ],
    "enrollments.csv": [
        "sourcedId",
        "status",
        "dateLastModified",
        "classSourcedId",
        "schoolSourcedId",
        "userSourcedId",
        "role",
        "primary",
        "beginDate",
        "endDate",
    ],
}
SUBJECTS = ["math", "english", "science", "history", "spanish"]
GIVEN = ["Ada", "Ben", "Cleo", "Dev", "Ema", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lea"]
FAMILY = ["Ito", "Novak", "Okafor", "Silva", "Berg", "Khan", "Moreau", "Park", "Rossi", "Weber"]


@dataclass
class District:
    rows: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)

    def count(self, name: str, **match: str) -> int:
        return sum(all(r.get(k) == v for k, v in match.items()) for r in self.rows[name])

    def manifest(self) -> bytes:
        lines = [
            ["propertyName", "value"],
            ["manifest.version", "1.0"],
            ["oneroster.version", "1.2"],
            ["source.systemName", "classwire-tests"],
        ]
        for name in HEADERS:
            lines.append([f"file.{name[:-4]}", self.modes.get(name, "absent")])
        return _csv(lines)

    def files(self) -> dict[str, bytes]:
        out = {"manifest.csv": self.manifest()}
        for name, rows in self.rows.items():
            if self.modes.get(name, "absent") != "absent":
                out[name] = to_csv(name, rows)
        return out

    def zip(self) -> bytes:
        return to_zip(self.files())


def _csv(lines: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(lines)
    return buffer.getvalue().encode()


def to_csv(name: str, rows: list[dict[str, str]], header: list[str] | None = None) -> bytes:
    header = header or HEADERS[name]
    return _csv([header] + [[row.get(h, "") for h in header] for row in rows])


def to_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            # A fixed timestamp keeps the archive byte-identical for the same content, so a
            # retried import with the same request_id is recognised as the same request.
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def district(
    schools: int = 3,
    instructors: int = 150,
    learners: int = 3000,
    classes_per_instructor: int = 5,
    classes_per_learner: int = 5,
    seed: int = 7,
    prefix: str = "",
) -> District:
    """A district with `schools` schools, instructors and learners spread evenly, one guardian
    per learner (linked through the learner's agentSourcedIds), classes and enrollments."""
    rng = random.Random(seed)
    p = prefix
    d = District(modes={name: "bulk" for name in HEADERS})
    district_id = f"{p}org-district"
    orgs = [
        {
            "sourcedId": district_id,
            "name": "Lakeside District",
            "type": "district",
            "identifier": "D-1",
        }
    ]
    school_ids = [f"{p}org-school-{s + 1:02d}" for s in range(schools)]
    for s, sid in enumerate(school_ids):
        orgs.append(
            {
                "sourcedId": sid,
                "name": f"School {s + 1}",
                "type": "school",
                "identifier": f"S-{s + 1}",
                "parentSourcedId": district_id,
            }
        )
    year, fall, spring = f"{p}as-2026", f"{p}as-2026-fall", f"{p}as-2026-spring"
    sessions = [
        {
            "sourcedId": year,
            "title": "2025-2026",
            "type": "schoolYear",
            "startDate": "2025-08-25",
            "endDate": "2026-06-30",
            "schoolYear": "2026",
        },
        {
            "sourcedId": fall,
            "title": "Fall 2025",
            "type": "term",
            "startDate": "2025-08-25",
            "endDate": "2025-12-19",
            "parentSourcedId": year,
            "schoolYear": "2026",
        },
        {
            "sourcedId": spring,
            "title": "Spring 2026",
            "type": "term",
            "startDate": "2026-01-05",
            "endDate": "2026-06-30",
            "parentSourcedId": year,
            "schoolYear": "2026",
        },
    ]
    courses, classes, users, roles, enrollments = [], [], [], [], []
    per_school_instructors = [
        instructors // schools + (s < instructors % schools) for s in range(schools)
    ]
    per_school_learners = [learners // schools + (s < learners % schools) for s in range(schools)]
    teacher_n = learner_n = guardian_n = 0
    for s, school in enumerate(school_ids):
        for subject in SUBJECTS:
            courses.append(
                {
                    "sourcedId": f"{p}crs-{s + 1:02d}-{subject}",
                    "title": subject.title(),
                    "courseCode": f"{subject[:3].upper()}-{s + 1}",
                    "schoolYearSourcedId": year,
                    "orgSourcedId": school,
                    "subjects": subject,
                    "grades": "05",
                }
            )
        school_classes = []
        for _ in range(per_school_instructors[s]):
            teacher_n += 1
            tid = f"{p}usr-t{teacher_n:05d}"
            users.append(_user(tid, rng, school, "teacher", email=True))
            roles.append(
                {
                    "sourcedId": f"{p}rol-{tid}",
                    "userSourcedId": tid,
                    "roleType": "primary",
                    "role": "teacher",
                    "orgSourcedId": school,
                }
            )
            for k in range(classes_per_instructor):
                subject = SUBJECTS[(teacher_n + k) % len(SUBJECTS)]
                cid = f"{p}cls-{teacher_n:05d}-{k + 1}"
                classes.append(
                    {
                        "sourcedId": cid,
                        "title": f"{subject.title()} {teacher_n}-{k + 1}",
                        "grades": "05",
                        "courseSourcedId": f"{p}crs-{s + 1:02d}-{subject}",
                        "classCode": f"C{teacher_n}-{k + 1}",
                        "classType": "scheduled",
                        "schoolSourcedId": school,
                        "termSourcedIds": fall if k % 2 else f"{fall},{spring}",
                        "subjects": subject,
                    }
                )
                enrollments.append(
                    {
                        "sourcedId": f"{p}enr-{cid}-{tid}",
                        "classSourcedId": cid,
                        "schoolSourcedId": school,
                        "userSourcedId": tid,
                        "role": "teacher",
                        "primary": "true",
                        "beginDate": "2025-08-25",
                    }
                )
                school_classes.append(cid)
        for _ in range(per_school_learners[s]):
            learner_n += 1
            guardian_n += 1
            lid, gid = f"{p}usr-l{learner_n:05d}", f"{p}usr-g{guardian_n:05d}"
            learner = _user(lid, rng, school, "student")
            learner["agentSourcedIds"] = gid
            learner["grades"] = "05"
            users.append(learner)
            users.append(_user(gid, rng, school, "parent", email=True, sms=True))
            roles.append(
                {
                    "sourcedId": f"{p}rol-{lid}",
                    "userSourcedId": lid,
                    "roleType": "primary",
                    "role": "student",
                    "orgSourcedId": school,
                }
            )
            roles.append(
                {
                    "sourcedId": f"{p}rol-{gid}",
                    "userSourcedId": gid,
                    "roleType": "primary",
                    "role": "parent",
                    "orgSourcedId": school,
                }
            )
            for cid in rng.sample(school_classes, min(classes_per_learner, len(school_classes))):
                enrollments.append(
                    {
                        "sourcedId": f"{p}enr-{cid}-{lid}",
                        "classSourcedId": cid,
                        "schoolSourcedId": school,
                        "userSourcedId": lid,
                        "role": "student",
                        "primary": "false",
                    }
                )
    d.rows = {
        "orgs.csv": orgs,
        "academicSessions.csv": sessions,
        "courses.csv": courses,
        "classes.csv": classes,
        "users.csv": users,
        "roles.csv": roles,
        "enrollments.csv": enrollments,
    }
    return d


def _user(sid: str, rng: random.Random, school: str, role: str, email=False, sms=False) -> dict:
    given, family = rng.choice(GIVEN), rng.choice(FAMILY)
    number = sid.rsplit("-", 1)[-1]
    return {
        "sourcedId": sid,
        "enabledUser": "true",
        "username": f"{role}{number}",
        "givenName": given,
        "familyName": family,
        "email": f"{role}{number}@example.org" if email else "",
        "sms": f"+1415555{int(number[1:]) % 10000:04d}" if sms else "",
        "primaryOrgSourcedId": school,
    }
