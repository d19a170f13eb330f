"""Conformance suite for workflows, and a recording WorkflowContext for tests.

Override ``workflow`` and ``sample_event`` (an event of a type the workflow reacts to, with the
data it needs). The central check: handling the same event twice (delivery is at least once)
asks for the same effects under the same idempotency keys, so the platform performs them once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import structlog

from classwire.server.plugins.types import (
    DeliveryResult,
    DeliveryStatus,
    Event,
    NotificationMessage,
    Workflow,
    WorkflowContext,
    matches_event_type,
)

__all__ = ["RecordingWorkflowContext", "WorkflowConformance"]


@dataclass
class RecordingWorkflowContext:
    """A WorkflowContext that records what a workflow asks for instead of doing it."""

    tenant_id: str = "tenant-test"
    settings: Mapping[str, Any] = field(default_factory=dict)
    logger: Any = field(default_factory=lambda: structlog.get_logger("workflow-test"))
    effects: list[tuple[str, str, Any]] = field(default_factory=list)

    async def emit(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        idempotency_key: str,
        session_id: str | None = None,
    ) -> None:
        self.effects.append(("emit", idempotency_key, (event_type, dict(data), session_id)))

    async def notify(self, channel: str, message: NotificationMessage) -> DeliveryResult:
        self.effects.append(("notify", message.idempotency_key, (channel, message)))
        return DeliveryResult(DeliveryStatus.SENT, provider_message_id=message.idempotency_key)

    async def schedule(
        self,
        at: datetime,
        event_type: str,
        data: Mapping[str, Any],
        *,
        idempotency_key: str,
    ) -> None:
        self.effects.append(("schedule", idempotency_key, (at, event_type, dict(data))))

    @property
    def keys(self) -> list[tuple[str, str]]:
        return [(kind, key) for kind, key, _ in self.effects]


class WorkflowConformance:
    """Behaviour every :class:`Workflow` must show."""

    @pytest.fixture
    async def workflow(self) -> AsyncIterator[Workflow]:
        raise NotImplementedError("override the workflow fixture")
        yield  # pragma: no cover

    @pytest.fixture
    def sample_event(self) -> Event:
        raise NotImplementedError("override sample_event with an event the workflow handles")

    @pytest.fixture
    def workflow_settings(self) -> Mapping[str, Any]:
        return {}

    async def test_is_a_workflow(self, workflow: Workflow) -> None:
        assert isinstance(workflow, Workflow)
        assert isinstance(workflow.name, str) and workflow.name
        assert workflow.event_types and all(isinstance(t, str) and t for t in workflow.event_types)

    async def test_sample_event_is_selected(self, workflow: Workflow, sample_event: Event) -> None:
        assert matches_event_type(workflow.event_types, sample_event.type)

    async def test_context_protocol(self) -> None:
        assert isinstance(RecordingWorkflowContext(), WorkflowContext)

    async def test_handles_event_with_effects(
        self, workflow: Workflow, sample_event: Event, workflow_settings: Mapping[str, Any]
    ) -> None:
        context = RecordingWorkflowContext(
            tenant_id=sample_event.tenant_id, settings=workflow_settings
        )
        await workflow.handle(sample_event, context)
        assert context.effects, "the sample event should make the workflow do something"
        assert all(key for _, key, _ in context.effects), "every effect needs a key"
        assert len(set(context.keys)) == len(context.keys), "two effects share a key"

    async def test_redelivery_is_idempotent(
        self, workflow: Workflow, sample_event: Event, workflow_settings: Mapping[str, Any]
    ) -> None:
        first = RecordingWorkflowContext(
            tenant_id=sample_event.tenant_id, settings=workflow_settings
        )
        second = RecordingWorkflowContext(
            tenant_id=sample_event.tenant_id, settings=workflow_settings
        )
        await workflow.handle(sample_event, first)
        await workflow.handle(sample_event, second)
        assert sorted(first.keys) == sorted(second.keys)
