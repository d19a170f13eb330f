"""Automated workflows over real gRPC: configuration per tenant (List/Get/UpdateWorkflow), the
built-in staff alerts and reminders, and a plugin's workflow and event handler fed from the
durable log (dispatched through the PluginManager)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import test_notifications
from google.protobuf import field_mask_pb2, struct_pb2
from test_notifications import (
    SENT,
    data,
    emit,
    eventually,
    guardian_of,
    notices,
    person,
    session_with_learner,
    settled,
)

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import scheduling_events_pb2 as scv
from classwire.api.events.v1 import session_events_pb2 as sev
from classwire.api.roster.v1 import resources_pb2 as roster_pb
from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import Event, Workflow, WorkflowContext
from classwire.server.testing import WorkflowConformance

# The same loopback server, SMTP sink and wiring as the notification tests (a module fixture).
env = test_notifications.env


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def update(env, name: str, *paths: str, enabled: bool = False, settings: dict | None = None):
    value = struct_pb2.Struct()
    value.update(settings or {})
    return await data(
        env,
        "UpdateWorkflow",
        data_api.UpdateWorkflowRequest(
            workflow=data_pb.Workflow(name=name, enabled=enabled, settings=value),
            update_mask=mask(*paths),
        ),
    )


async def test_list_get_and_update_workflows(env):
    listed = await data(env, "ListWorkflows", data_api.ListWorkflowsRequest())
    names = [w.name for w in listed.workflows]
    assert {
        "booking_reminder",
        "learner_absent",
        "session_report",
        "instructor_no_show",
        "low_engagement",
    } <= set(names)
    assert names == sorted(names)
    absent = await data(env, "GetWorkflow", data_api.GetWorkflowRequest(name="learner_absent"))
    assert absent.workflow.built_in and absent.workflow.enabled
    assert absent.workflow.trigger_event_types == [sev.AttendanceFinalized.DESCRIPTOR.full_name]
    assert "notify_learners" in absent.workflow.settings_schema["properties"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await data(env, "GetWorkflow", data_api.GetWorkflowRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(
            env, "learner_absent", "settings", settings={"colour": "x", "notify_learners": 3}
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "workflow.settings.colour" in caught.value.details()
    assert "workflow.settings.notify_learners" in caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await update(env, "learner_absent", "description")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Disabled, the workflow sends nothing for its trigger.
    updated = await update(env, "learner_absent", "enabled", enabled=False)
    assert not updated.workflow.enabled and updated.workflow.HasField("update_time")
    tag = uuid.uuid4().hex[:6]
    learner = await person(env, f"Dan{tag}", roster_pb.PERSON_ROLE_LEARNER)
    guardian = await guardian_of(env, learner.id, "Gil", f"gil-{tag}@example.org")
    session_id = await session_with_learner(env, learner.id, "Chemistry")
    await emit(env, sev.AttendanceFinalized(), session_id)
    await settled(env)
    assert await notices(env, recipient_id=guardian.id) == []
    await update(env, "learner_absent", "enabled", enabled=True)


async def test_instructor_no_show_alerts_staff_even_in_quiet_hours(env):
    tag = uuid.uuid4().hex[:6]
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    staff = await person(
        env,
        f"Sam{tag}",
        roster_pb.PERSON_ROLE_STAFF,
        email_address=f"sam-{tag}@example.org",
        notification_settings=roster_pb.NotificationSettings(
            quiet_hours=roster_pb.QuietHours(
                start=roster_pb.LocalTime(hours=start.hour, minutes=start.minute),
                end=roster_pb.LocalTime(hours=end.hour, minutes=end.minute),
                time_zone="UTC",
            )
        ),
    )
    instructor = await person(env, f"Ivy{tag}", roster_pb.PERSON_ROLE_INSTRUCTOR)
    await update(env, "instructor_no_show", "settings", settings={"staff_person_ids": [staff.id]})
    await emit(
        env,
        scv.InstructorNoShowDetected(
            booking_id=f"bkg_{tag}", instructor_id=instructor.id, action="NO_SHOW_ACTION_ALERT"
        ),
    )

    async def alerted():
        return env.sink.to(f"sam-{tag}@")

    [mail] = await eventually(alerted)
    assert mail["Subject"].startswith("Instructor no-show")
    assert f"Ivy{tag} Test" in mail.get_body(("plain",)).get_content()


async def test_booking_reminder_is_sent_and_a_late_one_expires(env):
    tag = uuid.uuid4().hex[:6]
    learner = await person(
        env, f"Rae{tag}", roster_pb.PERSON_ROLE_LEARNER, email_address=f"rae-{tag}@example.org"
    )
    soon, past = scv.ReminderDue(), scv.ReminderDue()
    for message, booking, start in (
        (soon, f"bkg_a{tag}", datetime.now(UTC) + timedelta(minutes=15)),
        (past, f"bkg_b{tag}", datetime.now(UTC) - timedelta(minutes=5)),
    ):
        message.booking_id = booking
        message.start_time.FromDatetime(start)
        message.offset.FromTimedelta(timedelta(minutes=15))
        message.recipient_person_ids.append(learner.id)
        await emit(env, message)

    async def both():
        rows = await notices(env, recipient_id=learner.id)
        return (
            rows
            if len(rows) == 2 and all(r.state != data_pb.NOTIFICATION_STATE_PENDING for r in rows)
            else None
        )

    rows = {r.cause.split(":")[1]: r for r in await eventually(both)}
    assert rows[f"bkg_a{tag}"].state == SENT
    assert rows[f"bkg_b{tag}"].suppression_reason == dev.NOTIFICATION_SUPPRESSION_REASON_EXPIRED
    assert len(env.sink.to(f"rae-{tag}@")) == 1


class FlagQuizFailures(Workflow):
    """A plugin workflow: a failed quiz (a custom event) raises an engagement flag."""

    name = "quiz_flags"
    event_types = (dev.CustomEvent.DESCRIPTOR.full_name,)

    async def handle(self, event: Event, context: WorkflowContext) -> None:
        if event.data.get("name") != "quiz.scored" or event.data["data"]["score"] >= 50:
            return
        await context.emit(
            dev.EngagementFlagRaised.DESCRIPTOR.full_name,
            {
                "flag_id": f"flag-{event.id}",
                "learner_identity": event.data["subject_identity"],
                "kind": "ENGAGEMENT_FLAG_KIND_CUSTOM",
                "rule": "quiz_flags",
                "observed_value": event.data["data"]["score"],
                "threshold": 50,
                "detail": "failed a quiz",
            },
            idempotency_key=f"flag:{event.id}",
        )


class QuizPlugin:
    def __init__(self, seen: Callable[[Event], None]) -> None:
        self.seen = seen

    @hookimpl
    def classwire_register_workflows(self, register) -> None:
        register("quiz_flags", lambda context: FlagQuizFailures(), description="quiz flags")

    @hookimpl
    def classwire_register_event_handlers(self, register) -> None:
        async def handler(event: Event) -> None:
            self.seen(event)

        register("quiz_audit", handler, event_types=["classwire.api.events.v1.CustomEvent"])


async def test_plugin_workflow_and_event_handler(env, tmp_path):
    seen: list[Event] = []
    plugins = env.platform.plugins
    if "quiz" not in [p.name for p in plugins.plugins]:
        plugins.register_plugin(QuizPlugin(seen.append), "quiz")
    provider = plugins.create("workflow", "quiz_flags", data_dir=tmp_path, database_url="")
    env.platform.workflow_runner.plugin_workflows["quiz_flags"] = ("quiz", provider)
    listed = await data(env, "GetWorkflow", data_api.GetWorkflowRequest(name="quiz_flags"))
    assert listed.workflow.plugin == "quiz" and not listed.workflow.enabled
    await update(env, "quiz_flags", "enabled", enabled=True)

    tag = uuid.uuid4().hex[:6]
    staff = await person(
        env, f"Sue{tag}", roster_pb.PERSON_ROLE_STAFF, email_address=f"sue-{tag}@example.org"
    )
    learner = await person(env, f"Kim{tag}", roster_pb.PERSON_ROLE_LEARNER)
    await update(env, "low_engagement", "settings", settings={"staff_person_ids": [staff.id]})
    score = struct_pb2.Struct()
    score.update({"score": 20})
    quiz = dev.CustomEvent(
        client_event_id=tag, name="quiz.scored", subject_identity=learner.id, data=score
    )
    await emit(env, quiz)

    async def flagged():
        return env.sink.to(f"sue-{tag}@")

    [mail] = await eventually(flagged)
    assert f"Kim{tag} Test was flagged: failed a quiz" in mail.get_body(("plain",)).get_content()
    assert any(
        e.type == dev.CustomEvent.DESCRIPTOR.full_name and e.data["name"] == "quiz.scored"
        for e in seen
    )
    # Handled again (at least once), the workflow emits its flag once.
    await settled(env)
    log = await data(
        env,
        "ListEvents",
        data_api.ListEventsRequest(
            filter=data_pb.EventFilter(types=[dev.EngagementFlagRaised.DESCRIPTOR.full_name])
        ),
        main=True,
    )
    assert (
        len([e for e in log.events if e.data.engagement_flag_raised.learner_identity == learner.id])
        == 1
    )


class TestQuizWorkflowConformance(WorkflowConformance):
    @pytest.fixture
    async def workflow(self):
        async with FlagQuizFailures() as workflow:
            yield workflow

    @pytest.fixture
    def sample_event(self) -> Event:
        return Event(
            id="evt-1",
            type=dev.CustomEvent.DESCRIPTOR.full_name,
            tenant_id="tenant-test",
            sequence=7,
            occurred_at=datetime.now(UTC),
            data={"name": "quiz.scored", "subject_identity": "p1", "data": {"score": 10}},
        )
