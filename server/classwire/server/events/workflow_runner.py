"""Runs the automated workflows from the durable event log, and wires notifications up.

Each tenant has a cursor row (`workflow_cursors`). A replica leases the cursors of tenants whose
log moved past them (SKIP LOCKED on PostgreSQL), and handles the events after the cursor in
order: first the plugins' event handlers (PluginManager.dispatch_event), then, in one unit of
work, the enabled built-in and plugin workflows, whose notices and events commit together with
the cursor's advance. A crash before that commit hands the event to the next pass: at least
once, and idempotent through the per-recipient-per-cause notice key and the effect keys.

Wakes on new events through Wakeups and polls every `poll_interval` in case a hint is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog
from google.protobuf import json_format, symbol_database

from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import event_pb2

from ..domain import workflows as wf
from ..domain.ids import new_id
from ..domain.notifications import NotificationsDomain
from ..plugins.types import (
    DeliveryResult,
    Event,
    NotificationMessage,
    ProviderKind,
    matches_event_type,
)
from ..store import notification_repositories as repo
from ..store.types import utcnow
from .catalogue import is_event_type, unwrap
from .log_follower import LogFollower
from .outbox import UnitOfWork, system_actor

log = structlog.get_logger(__name__)

EMIT_TIMER = "workflow.emit"
MAX_FAILURES = 5


def _message_for(event_type: str, data: Mapping[str, Any]):
    if not is_event_type(event_type):
        raise ValueError(f"{event_type!r} is not a classwire event type")
    cls = symbol_database.Default().GetSymbol(event_type)
    return json_format.ParseDict(dict(data), cls(), ignore_unknown_fields=False)


class PluginContext:
    """The WorkflowContext a plugin workflow acts through: every effect joins the unit of work
    of the event being handled, under its idempotency key."""

    def __init__(self, runner: WorkflowRunner, uow: UnitOfWork, workflow: str, settings) -> None:
        self._runner = runner
        self._uow = uow
        self._workflow = workflow
        self._settings = dict(settings or {})
        self._logger = log.bind(workflow=workflow, tenant_id=uow.tenant_id)

    @property
    def tenant_id(self) -> str:
        return self._uow.tenant_id

    @property
    def settings(self) -> Mapping[str, Any]:
        return self._settings

    @property
    def logger(self) -> Any:
        return self._logger

    async def _first(self, kind: str, key: str) -> bool:
        return await repo.add_effect(
            self._uow.session, self.tenant_id, f"{kind}:{self._workflow}:{key}"[:400], utcnow()
        )

    async def emit(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        idempotency_key: str,
        session_id: str | None = None,
    ) -> None:
        message = _message_for(event_type, data)
        if await self._first("emit", idempotency_key):
            self._uow.emit(message, session_id=session_id)

    async def notify(self, channel: str, message: NotificationMessage) -> DeliveryResult:
        return await self._runner.notifications.queue_message(
            self._uow, channel, message, self._workflow
        )

    async def schedule(
        self,
        at: datetime,
        event_type: str,
        data: Mapping[str, Any],
        *,
        idempotency_key: str,
    ) -> None:
        _message_for(event_type, data)  # refuse a bad event now, not when the timer fires
        await self._runner.timers.schedule(
            self._uow,
            EMIT_TIMER,
            f"{self._workflow}:{idempotency_key}"[:200],
            at,
            {"type": event_type, "data": dict(data)},
        )


class WorkflowRunner(LogFollower):
    label = "workflow runner"

    def __init__(
        self,
        platform,
        notifications: NotificationsDomain,
        workflows: wf.Workflows,
        *,
        poll_interval: float = 1.0,
        lease: timedelta = timedelta(seconds=60),
        batch: int = 200,
        max_trigger_age: timedelta = timedelta(days=1),
    ) -> None:
        self.db = platform.db
        self.uow = platform.uow
        self.wakeups = platform.wakeups
        self.plugins = platform.plugins
        self.timers = platform.timers
        self.notifications = notifications
        self.workflows = workflows
        self.poll_interval = poll_interval
        self.lease = lease
        self.batch = batch
        self.max_trigger_age = max_trigger_age
        self.owner = new_id("wfr")
        # Plugin workflows by name: (plugin, provider).
        self.plugin_workflows: dict[str, tuple[str, Any]] = {}
        self._failures: dict[tuple[str, int], int] = {}
        super().__init__()
        if self.timers is not None:
            self.timers.register(EMIT_TIMER, self._fire_emit)

    def plugin_infos(self) -> list[wf.PluginWorkflowInfo]:
        return [
            wf.PluginWorkflowInfo(name, "", plugin, list(provider.event_types))
            for name, (plugin, provider) in sorted(self.plugin_workflows.items())
        ]

    async def _fire_emit(self, timer, uow: UnitOfWork) -> None:
        uow.emit(_message_for(timer.payload["type"], timer.payload["data"]))

    # -- the loop ---------------------------------------------------------------------------

    async def release_all(self) -> None:
        async with self.db.writer() as session, session.begin():
            await repo.release_cursors(session, self.owner)

    async def run_once(self) -> dict[str, int]:
        """One pass over every tenant with new events; returns the log heads to wait on."""
        now = utcnow()
        async with self.db.writer() as session, session.begin():
            heads = await repo.tenant_heads(session)
            known = await repo.cursors(session)
            await repo.ensure_cursors(session, [t for t in heads if t not in known])
            claimed = await repo.claim_cursors(session, self.owner, now, now + self.lease, 16)
        for tenant_id in claimed:
            try:
                await self._work(tenant_id)
            finally:
                async with self.db.writer() as session, session.begin():
                    await repo.release_cursors(session, self.owner, tenant_id)
        return heads

    async def _work(self, tenant_id: str) -> None:
        while True:
            async with self.db.reader() as session:
                row = await session.get(repo.WorkflowCursor, tenant_id)
                cursor = row.last_sequence if row is not None else 0
                rows = await repo.events_after(session, tenant_id, cursor, self.batch)
            if not rows:
                return
            skipped = 0
            for row in rows:
                if not self._interested(row.type):
                    skipped = row.sequence
                    continue
                skipped = 0
                if not await self._handle(tenant_id, row.sequence, row.payload):
                    return
            if skipped:
                # Events no workflow or handler selects move the cursor in one write per batch,
                # not one unit of work each.
                async with self.db.writer() as session, session.begin():
                    cursor = await repo.owned_cursor(session, tenant_id, self.owner)
                    if cursor is None:
                        return
                    cursor.last_sequence = max(cursor.last_sequence, skipped)
                    cursor.lease_until = utcnow() + self.lease

    def _interested(self, event_type: str) -> bool:
        if any(event_type in w.trigger_types for w in wf.BUILTINS.values()):
            return True
        if any(
            matches_event_type(p.event_types, event_type) for _, p in self.plugin_workflows.values()
        ):
            return True
        return bool(self.plugins.event_handlers(event_type))

    async def _handle(self, tenant_id: str, sequence: int, payload: bytes) -> bool:
        """Handles one event and advances the cursor past it; False to stop this pass."""
        envelope = event_pb2.Event.FromString(payload)
        fresh = utcnow() - envelope.occur_time.ToDatetime().astimezone() <= self.max_trigger_age
        try:
            if fresh and self.plugins.event_handlers(envelope.type):
                await self.plugins.dispatch_event(self._plugin_event(envelope))
            async with self.uow(tenant_id, system_actor("workflows")) as uow:
                cursor = await repo.owned_cursor(uow.session, tenant_id, self.owner)
                if cursor is None or cursor.last_sequence >= sequence:
                    return False  # the lease was lost, or another pass got here first
                if fresh:
                    await self._run_workflows(uow, envelope)
                cursor.last_sequence = sequence
                cursor.lease_until = utcnow() + self.lease
            self._failures.pop((tenant_id, sequence), None)
            return True
        except asyncio.CancelledError:
            raise
        except Exception:
            key = (tenant_id, sequence)
            self._failures[key] = self._failures.get(key, 0) + 1
            log.exception(
                "workflow run failed",
                tenant_id=tenant_id,
                sequence=sequence,
                event_type=envelope.type,
                failures=self._failures[key],
            )
            if self._failures[key] >= MAX_FAILURES:
                # A poison event must not hold the tenant's workflows back for ever.
                async with self.db.writer() as session, session.begin():
                    await repo.set_cursor(session, tenant_id, sequence)
                self._failures.pop(key, None)
            return False

    @staticmethod
    def _plugin_event(envelope: event_pb2.Event) -> Event:
        return Event(
            id=envelope.id,
            type=envelope.type,
            tenant_id=envelope.tenant_id,
            sequence=envelope.sequence,
            occurred_at=envelope.occur_time.ToDatetime().astimezone(),
            data=wf.payload_dict(envelope),
            session_id=envelope.session_id or None,
        )

    async def _run_workflows(self, uow: UnitOfWork, envelope: event_pb2.Event) -> None:
        builtins = [w for w in wf.BUILTINS.values() if envelope.type in w.trigger_types]
        plugins = [
            (name, provider)
            for name, (_, provider) in self.plugin_workflows.items()
            if matches_event_type(provider.event_types, envelope.type)
        ]
        if not builtins and not plugins:
            return
        views = await self.workflows.effective(uow.session, uow.tenant_id)
        for workflow in builtins:
            view = views.get(workflow.name)
            if view is None or not view.enabled:
                continue
            run = wf.Run(uow, envelope, workflow, view.settings)
            notices = await workflow.handler(run, unwrap(envelope))
            if not notices:
                continue
            await self._triggered(uow, workflow.name, envelope)
            for notice in notices:
                await self.notifications.request(uow, notice)
        for name, provider in plugins:
            view = views.get(name)
            if view is None or not view.enabled:
                continue
            await self._triggered(uow, name, envelope)
            context = PluginContext(self, uow, name, view.settings)
            await provider.handle(self._plugin_event(envelope), context)

    @staticmethod
    async def _triggered(uow: UnitOfWork, workflow: str, envelope: event_pb2.Event) -> None:
        cause = f"{workflow}:{envelope.id}"
        if await repo.add_effect(uow.session, uow.tenant_id, f"run:{cause}", utcnow()):
            uow.emit(
                dev.WorkflowTriggered(
                    workflow=workflow,
                    run_id=new_id("wfrun"),
                    cause=cause,
                    trigger_event_id=envelope.id,
                    trigger_event_type=envelope.type,
                    trigger_sequence=envelope.sequence,
                    session_id=envelope.session_id,
                ),
                session_id=envelope.session_id or None,
            )


# -- wiring ----------------------------------------------------------------------------------------


def _configured_channels(platform) -> list[str]:
    value = platform.config.providers.get(ProviderKind.NOTIFICATION_CHANNEL.value, "") or ""
    return [name.strip() for name in value.split(",") if name.strip()]


def start_notifications(platform) -> NotificationsDomain:
    """Builds the notifications domain, the workflow configuration and the runner, and starts
    them as background tasks of `platform` (cancelled by Platform.close). Channels come from
    `providers.notification_channel` (one provider name, or several separated by commas, each
    with its options under `[providers.<name>]`); plugin workflows from every registered
    workflow provider. Sets `platform.notifications`, `platform.workflows` and
    `platform.workflow_runner`."""
    notifications = NotificationsDomain(platform.db, platform.uow, platform.timers)
    runner_ref: list[WorkflowRunner] = []
    workflows = wf.Workflows(platform.db, lambda: runner_ref[0].plugin_infos())
    runner = WorkflowRunner(platform, notifications, workflows)
    runner_ref.append(runner)
    platform.notifications = notifications
    platform.workflows = workflows
    platform.workflow_runner = runner
    config = platform.config
    started: list[Any] = []

    async def main() -> None:
        try:
            for name in _configured_channels(platform):
                channel = platform.plugins.create(
                    ProviderKind.NOTIFICATION_CHANNEL,
                    name,
                    data_dir=config.data_dir,
                    database_url=config.effective_database_url,
                    options=config.provider_options.get(name, {}),
                )
                await channel.start()
                started.append(channel)
                notifications.add_channel(name, channel)
            for name, registration in platform.plugins.registrations(ProviderKind.WORKFLOW).items():
                provider = platform.plugins.create(
                    ProviderKind.WORKFLOW,
                    name,
                    data_dir=config.data_dir,
                    database_url=config.effective_database_url,
                    options=config.provider_options.get(name, {}),
                )
                await provider.start()
                started.append(provider)
                runner.plugin_workflows[provider.name or name] = (registration.plugin, provider)
            sender = notifications.start()
            try:
                await runner.run()
            finally:
                sender.cancel()
                with contextlib.suppress(BaseException):
                    await sender
        finally:
            for provider in reversed(started):
                with contextlib.suppress(Exception):
                    await provider.close()

    platform.tasks.append(asyncio.create_task(main(), name="notifications"))
    return notifications
