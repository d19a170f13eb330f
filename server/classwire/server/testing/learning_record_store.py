"""Conformance suite for Learning Record Stores.

Override ``learning_record_store`` with a started provider connected to a real LRS (the
first-party suite runs ralph on loopback).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from classwire.server.plugins.types import (
    LearningRecordStore,
    StatementOutcome,
    StatementResult,
)

__all__ = ["LearningRecordStoreConformance", "sample_statement"]


def sample_statement(**overrides: object) -> dict:
    """A valid xAPI 1.0.3 statement with a fresh id and an `account` actor."""
    statement: dict = {
        "id": str(uuid.uuid4()),
        "actor": {
            "objectType": "Agent",
            "account": {"homePage": "https://classwire.dev/tenants/t1", "name": "learner-1"},
        },
        "verb": {"id": "http://activitystrea.ms/join", "display": {"en-US": "joined"}},
        "object": {
            "objectType": "Activity",
            "id": "https://classwire.dev/tenants/t1/sessions/s1",
            "definition": {
                "type": "https://w3id.org/xapi/virtual-classroom/activity-types/virtual-classroom"
            },
        },
        "timestamp": "2026-01-05T10:00:00.000Z",
        "version": "1.0.3",
    }
    statement.update(overrides)
    return statement


class LearningRecordStoreConformance:
    """Behaviour every :class:`LearningRecordStore` must show."""

    @pytest.fixture
    async def learning_record_store(self) -> AsyncIterator[LearningRecordStore]:
        raise NotImplementedError("override the learning_record_store fixture")
        yield  # pragma: no cover

    async def test_is_a_learning_record_store(
        self, learning_record_store: LearningRecordStore
    ) -> None:
        assert isinstance(learning_record_store, LearningRecordStore)
        assert learning_record_store.max_batch >= 1

    async def test_store_then_get(self, learning_record_store: LearningRecordStore) -> None:
        statement = sample_statement()
        results = await learning_record_store.store([statement])
        assert [type(r) for r in results] == [StatementResult]
        assert results[0].statement_id == statement["id"]
        assert results[0].outcome is StatementOutcome.STORED, results
        stored = await learning_record_store.get(statement["id"])
        assert stored is not None
        assert stored["id"] == statement["id"]
        assert stored["actor"]["account"] == statement["actor"]["account"]
        assert stored["verb"]["id"] == statement["verb"]["id"]

    async def test_missing_statement_is_none(
        self, learning_record_store: LearningRecordStore
    ) -> None:
        assert await learning_record_store.get(str(uuid.uuid4())) is None

    async def test_resend_is_already_stored(
        self, learning_record_store: LearningRecordStore
    ) -> None:
        statements = [sample_statement() for _ in range(3)]
        first = await learning_record_store.store(statements)
        assert {r.outcome for r in first} == {StatementOutcome.STORED}
        # A retry after a lost answer: the same ids, the same content.
        second = await learning_record_store.store(statements)
        assert [r.statement_id for r in second] == [s["id"] for s in statements]
        assert {r.outcome for r in second} == {StatementOutcome.ALREADY_STORED}

    async def test_mixed_batch_keeps_order(
        self, learning_record_store: LearningRecordStore
    ) -> None:
        old = sample_statement()
        await learning_record_store.store([old])
        new = sample_statement()
        results = await learning_record_store.store([old, new])
        assert [r.statement_id for r in results] == [old["id"], new["id"]]
        assert [r.outcome for r in results] == [
            StatementOutcome.ALREADY_STORED,
            StatementOutcome.STORED,
        ]

    async def test_conflicting_statement_is_rejected_alone(
        self, learning_record_store: LearningRecordStore
    ) -> None:
        held = sample_statement()
        await learning_record_store.store([held])
        different = {**held, "timestamp": "2026-01-06T10:00:00.000Z"}
        fresh = sample_statement()
        results = await learning_record_store.store([different, fresh])
        assert results[0].outcome is StatementOutcome.REJECTED, results
        assert results[0].reason
        assert results[1].outcome is StatementOutcome.STORED, results
        stored = await learning_record_store.get(held["id"])
        assert stored["timestamp"].startswith("2026-01-05")
