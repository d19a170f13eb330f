"""Provider conformance suites, for first-party and third-party plugins alike.

Each suite is a plain class of pytest tests (it needs pytest and pytest-asyncio with
``asyncio_mode = "auto"``). Subclass it under a name pytest collects and override its provider
fixture; the suite then runs against your provider::

    import pytest
    from classwire.server.testing import BlobStoreConformance

    class TestMyStore(BlobStoreConformance):
        @pytest.fixture
        async def blob_store(self, tmp_path):
            async with MyStore(tmp_path) as store:
                yield store

The submodules are imported lazily so that importing one suite does not import them all.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUITES = {
    "BlobStoreConformance": "blob_store",
    "EventBusConformance": "event_bus",
    "MediaBackendConformance": "media_backend",
    "TranscriptionEngineConformance": "transcription",
    "NotificationChannelConformance": "notification_channel",
    "MatcherConformance": "matcher",
    "SummarizerConformance": "summarizer",
    "WorkflowConformance": "workflow",
    "LearningRecordStoreConformance": "learning_record_store",
    "RecordingWorkflowContext": "workflow",
}

__all__ = [
    "BlobStoreConformance",
    "EventBusConformance",
    "LearningRecordStoreConformance",
    "MatcherConformance",
    "MediaBackendConformance",
    "NotificationChannelConformance",
    "RecordingWorkflowContext",
    "SummarizerConformance",
    "TranscriptionEngineConformance",
    "WorkflowConformance",
]


def __getattr__(name: str) -> Any:
    module = _SUITES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
