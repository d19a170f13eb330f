"""The in-process bus, created through the plugin manager, passes the event-bus suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from classwire.plugins.memory_bus import MemoryBus
from classwire.server.plugins import PluginManager
from classwire.server.testing import EventBusConformance
from classwire.server.testing.event_bus import receive


class TestMemoryBusConformance(EventBusConformance):
    @pytest.fixture
    async def event_bus(self, tmp_path: Path):
        bus = (
            PluginManager()
            .load()
            .create("event_bus", "memory_bus", data_dir=tmp_path, database_url="")
        )
        async with bus:
            yield bus


async def test_slow_subscriber_loses_newest_not_others() -> None:
    async with (
        MemoryBus(max_queue=3) as bus,
        bus.subscribe("c") as slow,
        bus.subscribe("c") as fast,
    ):
        for i in range(5):
            await bus.publish("c", str(i).encode())
            assert await receive(fast) == str(i).encode()
        # At most once: the slow one keeps what fitted, in order, and counts the rest.
        assert [await receive(slow) for _ in range(3)] == [b"0", b"1", b"2"]
        assert slow.dropped == 2
        await bus.publish("c", b"5")
        assert await receive(slow) == b"5"


async def test_iterating_without_entering_is_an_error() -> None:
    async with MemoryBus() as bus:
        with pytest.raises(RuntimeError):
            await anext(bus.subscribe("c"))
