"""Notifications end to end: a guardian receives an absence notice and a session report by e-mail
through a real SMTP server (aiosmtpd) on loopback; opt-outs and withdrawn consent are suppressed;
quiet hours defer through a durable timer; a redelivered event sends nothing twice. Templates and
the notification log are read and changed through DataService over real gRPC."""

from __future__ import annotations

import asyncio
import email
import socket
import uuid
from datetime import UTC, datetime, timedelta
from email import policy

import grpc
import pytest
from aiosmtpd.controller import Controller
from conftest import create_database, make_config, start_server
from google.protobuf import field_mask_pb2, timestamp_pb2
from sqlalchemy import update

import classwire.plugins.smtp as smtp_plugin
from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import session_events_pb2 as sev
from classwire.api.roster.v1 import resources_pb2 as roster_pb
from classwire.api.roster.v1 import service_pb2 as roster_api
from classwire.api.roster.v1 import service_pb2_grpc as roster_grpc
from classwire.api.session.v1 import resources_pb2 as session_pb
from classwire.api.session.v1 import service_pb2 as session_api
from classwire.api.session.v1 import service_pb2_grpc as session_grpc
from classwire.server.events.workflow_runner import start_notifications
from classwire.server.store.models import Timer
from classwire.server.store.notification_models import WorkflowCursor

S = data_pb
SUPPRESSED, SENT, DEFERRED = (
    S.NOTIFICATION_STATE_SUPPRESSED,
    S.NOTIFICATION_STATE_SENT,
    S.NOTIFICATION_STATE_DEFERRED,
)


class Sink:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        raw = envelope.original_content or envelope.content
        self.messages.append(email.message_from_bytes(raw, policy=policy.default))
        return "250 OK"

    def to(self, address: str) -> list:
        return [m for m in self.messages if address in str(m["To"])]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Env:
    pass


@pytest.fixture(scope="module")
async def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notify")
    url, drop = await create_database(tmp)
    running = await start_server(make_config(tmp, url))
    platform = running.server.platform
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    if getattr(platform, "notifications", None) is None:
        start_notifications(platform)  # until app.py calls it
    if "smtp" not in platform.plugins.names("notification_channel"):
        platform.plugins.register_plugin(smtp_plugin, "smtp")
    channel = platform.plugins.create(
        "notification_channel",
        "smtp",
        data_dir=tmp,
        database_url="",
        options={
            "host": "127.0.0.1",
            "port": controller.port,
            "security": "none",
            "from_address": "school@example.org",
        },
    )
    await channel.start()
    platform.notifications.add_channel("smtp", channel)
    e = Env()
    e.running, e.platform, e.sink = running, platform, sink
    e.address = running.address
    yield e
    await running.server.stop(grace=1)
    await channel.close()
    controller.stop()
    if drop:
        await drop()


def meta(env) -> tuple:
    return (("authorization", f"Bearer {env.running.api_key}"),)


async def data(env, method: str, request, *, main: bool = False):
    async with grpc.aio.insecure_channel(env.running.address if main else env.address) as channel:
        return await getattr(data_grpc.DataServiceStub(channel), method)(
            request, metadata=meta(env)
        )


async def roster(env, method: str, request):
    async with grpc.aio.insecure_channel(env.running.address) as channel:
        stub = roster_grpc.RosterServiceStub(channel)
        return await getattr(stub, method)(request, metadata=meta(env))


async def person(env, name: str, role: int, *, email_address: str = "", **fields):
    p = roster_pb.Person(roles=[role], given_name=name, family_name="Test", **fields)
    if email_address:
        p.contact_channels.add(email=email_address, verified=True, primary=True)
    return (await roster(env, "CreatePerson", roster_api.CreatePersonRequest(person=p))).person


async def guardian_of(env, learner_id: str, name: str, address: str, **fields):
    g = await person(env, name, roster_pb.PERSON_ROLE_GUARDIAN, email_address=address, **fields)
    await roster(
        env,
        "LinkGuardian",
        roster_api.LinkGuardianRequest(
            link=roster_pb.GuardianLink(
                learner_id=learner_id,
                guardian_id=g.id,
                relationship=roster_pb.GUARDIAN_RELATIONSHIP_PARENT,
                receives_notices=True,
            )
        ),
    )
    return g


async def session_with_learner(env, learner_id: str, title: str) -> str:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    stamp, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    stamp.FromDatetime(start)
    end.FromDatetime(start + timedelta(hours=1))
    async with grpc.aio.insecure_channel(env.running.address) as channel:
        stub = session_grpc.SessionServiceStub(channel)
        created = await stub.CreateSession(
            session_api.CreateSessionRequest(
                session=session_pb.Session(
                    title=title, scheduled_start_time=stamp, scheduled_end_time=end
                )
            ),
            metadata=meta(env),
        )
        # The learner is invited (a join token) but never joins.
        await stub.CreateJoinToken(
            session_api.CreateJoinTokenRequest(
                session_id=created.session.id,
                identity=learner_id,
                display_name="Learner",
                role=common_pb2.PARTICIPANT_ROLE_LEARNER,
            ),
            metadata=meta(env),
        )
    return created.session.id


async def emit(env, payload, session_id: str | None = None) -> None:
    async with env.platform.uow(env.running.tenant_id) as uow:
        uow.emit(payload, session_id=session_id)


async def notices(env, **filters) -> list:
    response = await data(env, "ListNotifications", data_api.ListNotificationsRequest(**filters))
    return list(response.notifications)


async def eventually(check, timeout: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def settled(env) -> None:
    """Waits until the workflow runner has read the tenant's whole log."""
    from classwire.server.store import events as event_store

    async def caught_up():
        async with env.platform.db.reader() as session:
            head = await event_store.last_sequence(session, env.running.tenant_id, "")
            cursor = await session.get(WorkflowCursor, env.running.tenant_id)
        return cursor is not None and cursor.last_sequence >= head

    await eventually(caught_up)


async def test_absence_notice_and_session_report_reach_the_guardian(env):
    tag = uuid.uuid4().hex[:6]
    learner = await person(env, f"Ana{tag}", roster_pb.PERSON_ROLE_LEARNER)
    guardian = await guardian_of(env, learner.id, "Maria", f"maria-{tag}@example.org")
    opted_out = await guardian_of(
        env,
        learner.id,
        "Olga",
        f"olga-{tag}@example.org",
        notification_settings=roster_pb.NotificationSettings(
            preferences=[
                roster_pb.NotificationPreference(
                    cause=roster_pb.NOTIFICATION_CAUSE_ABSENCE_NOTICE, channel_kinds=[]
                )
            ]
        ),
    )
    no_consent = await guardian_of(
        env,
        learner.id,
        "Nina",
        f"nina-{tag}@example.org",
        consents=[
            roster_pb.Consent(
                kind=roster_pb.CONSENT_KIND_NOTIFICATIONS,
                decision=roster_pb.CONSENT_DECISION_DENIED,
            )
        ],
    )
    session_id = await session_with_learner(env, learner.id, f"Algebra {tag}")

    await emit(env, sev.AttendanceFinalized(participant_count=0), session_id)

    async def absence_sent():
        rows = await notices(env, session_id=session_id, recipient_id=guardian.id)
        return rows if rows and rows[0].state == SENT else None

    [sent] = await absence_sent() or await eventually(absence_sent)
    assert sent.template == "absence_notice"
    assert sent.cause == f"absence_notice:{session_id}:{learner.id}"
    assert sent.workflow == "learner_absent"
    [mail] = env.sink.to(f"maria-{tag}@example.org")
    assert mail["Subject"] == f"Ana{tag} Test missed Algebra {tag}"
    assert f"Ana{tag} Test did not attend Algebra {tag}" in mail.get_body(("plain",)).get_content()
    assert "<b>Algebra" in mail.get_body(("html",)).get_content()

    [olga] = await notices(env, recipient_id=opted_out.id)
    assert olga.state == SUPPRESSED
    assert olga.suppression_reason == dev.NOTIFICATION_SUPPRESSION_REASON_OPTED_OUT
    [nina] = await notices(env, recipient_id=no_consent.id)
    assert nina.suppression_reason == dev.NOTIFICATION_SUPPRESSION_REASON_NO_CONSENT
    assert not env.sink.to(f"olga-{tag}@example.org") and not env.sink.to(f"nina-{tag}@")

    # The events say the same, in the log.
    log = await data(
        env,
        "ListEvents",
        data_api.ListEventsRequest(
            filter=data_pb.EventFilter(
                session_ids=[session_id],
                types=[
                    dev.NotificationSent.DESCRIPTOR.full_name,
                    dev.NotificationSuppressed.DESCRIPTOR.full_name,
                ],
            )
        ),
        main=True,
    )
    assert len(log.events) == 3

    # The session report goes to the guardian who did not opt out of reports.
    await emit(
        env,
        dev.SessionReportReady(
            session_id=session_id, revision=1, participant_count=1, has_transcript=True
        ),
        session_id,
    )

    async def report_mails():
        return [m for m in env.sink.to(f"maria-{tag}@") if "Session report" in m["Subject"]]

    [report] = await eventually(report_mails)
    assert report["Subject"] == f"Session report: Algebra {tag}"
    body = report.get_body(("plain",)).get_content()
    assert "revision 1" in body and "Transcript: included" in body
    # The session never ended, so no report was built: the notice carries none.
    assert "Attendance" not in body and "Attendance" not in report.get_body(("html",)).get_content()
    assert report.get_content_type() == "multipart/alternative"
    assert len(await eventually(lambda: _mails_to(env, f"olga-{tag}@"))) == 1  # not opted out

    # A retry (the same event delivered again, and the whole log replayed) sends nothing twice.
    before = len(env.sink.messages)
    await emit(env, sev.AttendanceFinalized(participant_count=0), session_id)
    async with env.platform.db.writer() as session, session.begin():
        await session.execute(
            update(WorkflowCursor)
            .where(WorkflowCursor.tenant_id == env.running.tenant_id)
            .values(last_sequence=0)
        )
    env.platform.workflow_runner.wake()
    await settled(env)
    await env.platform.notifications.send_due()
    assert len(env.sink.messages) == before
    assert len(await notices(env, recipient_id=guardian.id)) == 2  # absence + report


async def _mails_to(env, prefix: str):
    return env.sink.to(prefix)


async def test_quiet_hours_defer_until_a_durable_timer_releases(env):
    tag = uuid.uuid4().hex[:6]
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    learner = await person(env, f"Leo{tag}", roster_pb.PERSON_ROLE_LEARNER)
    guardian = await guardian_of(
        env,
        learner.id,
        "Quinn",
        f"quinn-{tag}@example.org",
        notification_settings=roster_pb.NotificationSettings(
            quiet_hours=roster_pb.QuietHours(
                start=roster_pb.LocalTime(hours=start.hour, minutes=start.minute),
                end=roster_pb.LocalTime(hours=end.hour, minutes=end.minute),
                time_zone="UTC",
            )
        ),
    )
    session_id = await session_with_learner(env, learner.id, f"Physics {tag}")
    await emit(env, sev.AttendanceFinalized(), session_id)

    async def deferred():
        return await notices(env, recipient_id=guardian.id, state=DEFERRED)

    [held] = await eventually(deferred)
    due = held.next_attempt_time.ToDatetime(tzinfo=UTC)
    assert abs((due - end.replace(second=0, microsecond=0)).total_seconds()) < 1
    await env.platform.notifications.send_due()
    assert not env.sink.to(f"quinn-{tag}@")

    # Quiet hours end: bring the durable timer's due time forward instead of waiting.
    async with env.platform.db.writer() as session, session.begin():
        await session.execute(
            update(Timer)
            .where(Timer.kind == "notification.release", Timer.key == held.notification_id)
            .values(due_time=datetime.now(UTC))
        )
    env.platform.timers._wake.set()

    async def sent():
        rows = await notices(env, recipient_id=guardian.id, state=SENT)
        return rows and env.sink.to(f"quinn-{tag}@")

    await eventually(sent)
    assert len(env.sink.to(f"quinn-{tag}@")) == 1


async def test_templates_override_validate_and_reset(env):
    got = await data(
        env,
        "GetNotificationTemplate",
        data_api.GetNotificationTemplateRequest(name="absence_notice"),
    )
    assert got.template.locale == "en" and not got.template.overridden
    assert "learner_name" in got.template.variables
    listed = await data(
        env, "ListNotificationTemplates", data_api.ListNotificationTemplatesRequest()
    )
    assert {t.name for t in listed.templates} >= {
        "reminder",
        "schedule_change",
        "absence_notice",
        "session_report",
    }
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await data(
            env,
            "UpdateNotificationTemplate",
            data_api.UpdateNotificationTemplateRequest(
                template=data_pb.NotificationTemplate(
                    name="absence_notice", subject="${nope} missed", text_body="$"
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["subject", "text_body"]),
            ),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "template.subject" in caught.value.details()
    assert "template.text_body" in caught.value.details()
    updated = await data(
        env,
        "UpdateNotificationTemplate",
        data_api.UpdateNotificationTemplateRequest(
            template=data_pb.NotificationTemplate(
                name="absence_notice", subject="Absent: ${learner_name}"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["subject"]),
        ),
    )
    assert updated.template.overridden and updated.template.subject == "Absent: ${learner_name}"
    reset = await data(
        env,
        "ResetNotificationTemplate",
        data_api.ResetNotificationTemplateRequest(name="absence_notice", locale="en"),
    )
    assert not reset.template.overridden
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await data(
            env, "GetNotificationTemplate", data_api.GetNotificationTemplateRequest(name="nope")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await data(env, "GetNotification", data_api.GetNotificationRequest(notification_id="x"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
