"""A guardian receives the session report itself by e-mail (issue 7): a real session runs over the
API, ends, its report is built, and the session_report workflow mails each learner's guardian
their own learner's guardian view (HTML and plain text) through a real SMTP server on loopback,
with no other learner's name in it; a rebuilt report is a new revision and a new mail, a
replayed log is not. Only HTML the server built goes into a mail unescaped, and template
overrides cannot move it out of the HTML body."""

from __future__ import annotations

import uuid

import grpc
import pytest
import test_notifications
from google.protobuf import field_mask_pb2
from sqlalchemy import update
from test_classroom import details
from test_connect import INSTRUCTOR, LEARNER, Participant, open_session, rpc
from test_notifications import (
    SENT,
    data,
    eventually,
    guardian_of,
    notices,
    person,
    settled,
)

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.roster.v1 import resources_pb2 as roster_pb
from classwire.api.session.v1 import service_pb2 as api
from classwire.server.domain.notifications import BUILTIN_TEMPLATES, TrustedHtml, render
from classwire.server.store.notification_models import WorkflowCursor

# The server with a real SMTP sink behind its e-mail channel, one per module.
env = test_notifications.env
MARKUP = "<i>quiz</i>"


async def join(server, session_id: str, identity: str, name: str, role=LEARNER):
    issued = await rpc(
        server,
        "CreateJoinToken",
        api.CreateJoinTokenRequest(
            session_id=session_id, identity=identity, display_name=name, role=role
        ),
    )
    return await Participant(server.address, issued.token).connect()


async def report_of(env, session_id: str, revision: int) -> data_pb.SessionReport:
    async def ready():
        got = await data(
            env,
            "GetSessionReport",
            data_api.GetSessionReportRequest(session_id=session_id),
            main=True,
        )
        built = got.report.state == data_pb.SESSION_REPORT_STATE_READY
        return got.report if built and got.report.revision == revision else None

    return await eventually(ready, timeout=30)


def report_mails(env, address: str) -> list:
    return [m for m in env.sink.to(address) if m["Subject"].startswith("Session report")]


async def mails_for_revision(env, guardians, session_id: str, revision: int) -> dict:
    """Waits until each guardian's notice of this revision is SENT; their mails by guardian id."""
    cause = f"session_report:{session_id}:{revision}"

    async def sent():
        for g in guardians:
            rows = [r for r in await notices(env, recipient_id=g.id) if r.cause == cause]
            if not rows or rows[0].state != SENT:
                return None
        return True

    await eventually(sent, timeout=30)
    return {g.id: report_mails(env, g.contact_channels[0].email) for g in guardians}


def parts(mail) -> tuple[str, str]:
    return mail.get_body(("html",)).get_content(), mail.get_body(("plain",)).get_content()


def minutes(attendance) -> str:
    return f"{attendance.total_duration.ToTimedelta().total_seconds() / 60:.1f}"


async def test_each_guardian_receives_their_own_learners_report(env):
    server = env.running
    tag = uuid.uuid4().hex[:6]
    ana = await person(env, f"Ana{tag}", roster_pb.PERSON_ROLE_LEARNER)
    ben = await person(env, f"Ben{tag}", roster_pb.PERSON_ROLE_LEARNER)
    maria = await guardian_of(env, ana.id, "Maria", f"maria-{tag}@example.org")
    pedro = await guardian_of(env, ben.id, "Pedro", f"pedro-{tag}@example.org")
    ana_name, ben_name = f"Ana{tag} {MARKUP}", f"Ben{tag} Test"

    # A real session: the instructor and both learners join with their tokens; Ben leaves
    # early, then the session ends.
    session = await open_session(server, learners_join_before_instructor=True)
    teacher = await join(server, session.id, f"teacher-{tag}", "Mr Teacher", INSTRUCTOR)
    ana_client = await join(server, session.id, ana.id, ana_name)
    ben_client = await join(server, session.id, ben.id, ben_name)
    ben_client.send("bye", leave=api.ConnectRequest.Leave())
    await teacher.event("participant_left", lambda e: e.identity == ben.id)
    await ben_client.close()
    await rpc(server, "EndSession", api.EndSessionRequest(session_id=session.id))
    for client in (teacher, ana_client):
        await client.close()

    report = await report_of(env, session.id, 1)
    attendance = {a.identity: a for a in report.attendance}
    assert {ana.id, ben.id} <= set(attendance)
    mails = await mails_for_revision(env, [maria, pedro], session.id, 1)

    # Exactly one mail each, carrying their own learner's attendance and nobody else's name.
    for guardian, learner, other in ((maria, ana, ben), (pedro, ben, ana)):
        [mail] = mails[guardian.id]
        assert mail["Subject"] == f"Session report: {session.title}"
        assert mail.get_content_type() == "multipart/alternative"
        html_part, text_part = parts(mail)
        own = attendance[learner.id]
        for body in (html_part, text_part):
            assert f"Hello {guardian.given_name} Test" in body
            assert "revision 1" in body and "Attendance" in body
            assert learner.given_name in body
            assert other.given_name not in body and other.id not in body
        # The learner's attendance row, as the report has it.
        assert f"| {own.display_name} | learner | present | {minutes(own)} |" in text_part
        assert ">present</td>" in html_part and f">{minutes(own)}</td>" in html_part
        assert f"This report shows {own.display_name} only." in text_part
        assert "<html" not in html_part.split("</ul>", 1)[1]  # a fragment, not a document

    # The learner's own markup stays text in the HTML part (escaped) and in the text part.
    ana_html, ana_text = parts(mails[maria.id][0])
    assert MARKUP not in ana_html and "&lt;i&gt;quiz&lt;/i&gt;" in ana_html
    assert ana_name in ana_text
    assert "<table" in ana_html  # the report's own markup is HTML, not escaped text

    # A replayed log sends nothing twice; a rebuilt report is a new revision and a new mail.
    before = len(env.sink.messages)
    async with env.platform.db.writer() as db, db.begin():
        await db.execute(
            update(WorkflowCursor)
            .where(WorkflowCursor.tenant_id == server.tenant_id)
            .values(last_sequence=0)
        )
    env.platform.workflow_runner.wake()
    await settled(env)
    await env.platform.notifications.send_due()
    assert len(env.sink.messages) == before
    await data(
        env,
        "RebuildSessionReport",
        data_api.RebuildSessionReportRequest(session_id=session.id),
        main=True,
    )
    await report_of(env, session.id, 2)
    mails = await mails_for_revision(env, [maria, pedro], session.id, 2)
    for guardian, learner, other in ((maria, ana, ben), (pedro, ben, ana)):
        first, second = mails[guardian.id]
        html_part, text_part = parts(second)
        assert "revision 2" in text_part and learner.given_name in html_part
        assert other.given_name not in html_part and other.given_name not in text_part


async def test_report_html_stays_in_the_html_body_of_an_override(env):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await data(
            env,
            "UpdateNotificationTemplate",
            data_api.UpdateNotificationTemplateRequest(
                template=data_pb.NotificationTemplate(
                    name="session_report",
                    subject="Report ${report_html}",
                    text_body="${report_html}",
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["subject", "text_body"]),
            ),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, bad = details(caught.value)
    assert {v.field for v in bad.field_violations} == {"template.subject", "template.text_body"}
    allowed = await data(
        env,
        "UpdateNotificationTemplate",
        data_api.UpdateNotificationTemplateRequest(
            template=data_pb.NotificationTemplate(
                name="session_report", html_body="<p>${recipient_name}</p>${report_html}"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["html_body"]),
        ),
    )
    assert allowed.template.overridden
    assert {"report_html", "report_text"} <= set(allowed.template.variables)
    await data(
        env,
        "ResetNotificationTemplate",
        data_api.ResetNotificationTemplateRequest(name="session_report", locale="en"),
    )


def test_only_server_built_html_goes_in_unescaped():
    template = BUILTIN_TEMPLATES[("session_report", "en")]
    trusted = TrustedHtml("<table><tr><td>Ana</td></tr></table>")
    _, text, body = render(template, {"report_html": trusted, "report_text": "Ana <b>"})
    assert trusted.html in body and "<table" not in text and "Ana <b>" in text
    # A plain string in a `_html` variable, or TrustedHtml in another variable, is escaped.
    for variables in ({"report_html": MARKUP}, {"learner_name": TrustedHtml(MARKUP)}):
        _, _, body = render(template, variables)
        assert MARKUP not in body and "&lt;i&gt;quiz&lt;/i&gt;" in body
