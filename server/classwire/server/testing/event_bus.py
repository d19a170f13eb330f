"""Conformance suite for event buses.

Subclass it under a name pytest collects and override ``event_bus``; a bus shared between
processes also overrides ``peer_bus`` to return a second, independent instance on the same
backing service, so that delivery between replicas is tested too::

    class TestMyBus(EventBusConformance):
        @pytest.fixture
        async def event_bus(self):
            async with MyBus(...) as bus:
                yield bus

Absence is checked with markers, not timeouts: "the marker published after X arrives first"
proves X was not delivered, without waiting for something that should not come.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import pytest

from classwire.server.plugins.types import (
    MAX_BUS_PAYLOAD_BYTES,
    EventBus,
    Subscription,
    validate_channel,
)

__all__ = ["EventBusConformance", "receive"]


async def receive(subscription: Subscription, timeout: float = 5.0) -> bytes:
    """The subscription's next payload, failing the test after ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(anext(subscription), timeout)
    except TimeoutError:
        pytest.fail(f"no payload within {timeout} s")


class EventBusConformance:
    """Behaviour every :class:`EventBus` must show."""

    receive_timeout = 5.0

    @pytest.fixture
    async def event_bus(self) -> AsyncIterator[EventBus]:
        raise NotImplementedError("override the event_bus fixture")
        yield  # pragma: no cover

    @pytest.fixture
    async def peer_bus(self, event_bus: EventBus) -> AsyncIterator[EventBus]:
        """Another replica's bus. In-process buses have no other replica: the same one."""
        yield event_bus

    @pytest.fixture
    def channel(self) -> str:
        return f"cw-{secrets.token_hex(6)}"

    async def _next(self, subscription: Subscription) -> bytes:
        return await receive(subscription, self.receive_timeout)

    async def test_is_an_event_bus(self, event_bus: EventBus) -> None:
        assert isinstance(event_bus, EventBus)

    async def test_publish_reaches_subscriber(self, event_bus: EventBus, channel: str) -> None:
        async with event_bus.subscribe(channel) as sub:
            await event_bus.publish(channel, b"hello")
            assert await self._next(sub) == b"hello"

    async def test_delivery_to_several_subscribers(self, event_bus: EventBus, channel: str) -> None:
        async with (
            event_bus.subscribe(channel) as a,
            event_bus.subscribe(channel) as b,
            event_bus.subscribe(channel) as c,
        ):
            await event_bus.publish(channel, b"one")
            await event_bus.publish(channel, b"two")
            for sub in (a, b, c):
                assert [await self._next(sub), await self._next(sub)] == [b"one", b"two"]

    async def test_order_per_channel(self, event_bus: EventBus, channel: str) -> None:
        sent = [f"{i:05d}".encode() for i in range(300)]
        async with event_bus.subscribe(channel) as sub:
            for payload in sent:
                await event_bus.publish(channel, payload)
            got = [await self._next(sub) for _ in sent]
        assert got == sent

    async def test_concurrent_publishers_all_delivered(
        self, event_bus: EventBus, channel: str
    ) -> None:
        sent = {f"p{p}-{i}".encode() for p in range(5) for i in range(20)}

        async def publisher(p: int) -> None:
            for i in range(20):
                await event_bus.publish(channel, f"p{p}-{i}".encode())

        async with event_bus.subscribe(channel) as sub:
            await asyncio.gather(*(publisher(p) for p in range(5)))
            got = [await self._next(sub) for _ in sent]
        assert sorted(got) == sorted(sent)
        # Each publisher's own payloads keep their order even when interleaved with others'.
        for p in range(5):
            mine = [g for g in got if g.startswith(f"p{p}-".encode())]
            assert mine == [f"p{p}-{i}".encode() for i in range(20)]

    async def test_channels_are_isolated(self, event_bus: EventBus, channel: str) -> None:
        other = channel + ".other"
        async with event_bus.subscribe(channel) as mine, event_bus.subscribe(other) as theirs:
            await event_bus.publish(other, b"for-other")
            await event_bus.publish(channel, b"for-me")
            assert await self._next(mine) == b"for-me"
            assert await self._next(theirs) == b"for-other"
            await event_bus.publish(other, b"marker")
            assert await self._next(theirs) == b"marker"

    async def test_channel_names_are_case_sensitive(
        self, event_bus: EventBus, channel: str
    ) -> None:
        upper = channel.upper()
        async with event_bus.subscribe(channel) as lower_sub:
            await event_bus.publish(upper, b"upper")
            await event_bus.publish(channel, b"lower")
            assert await self._next(lower_sub) == b"lower"

    async def test_nothing_before_subscribing(self, event_bus: EventBus, channel: str) -> None:
        await event_bus.publish(channel, b"too early")
        async with event_bus.subscribe(channel) as sub:
            await event_bus.publish(channel, b"in time")
            assert await self._next(sub) == b"in time"

    async def test_unsubscribe(self, event_bus: EventBus, channel: str) -> None:
        async with event_bus.subscribe(channel) as stays:
            leaves = event_bus.subscribe(channel)
            async with leaves:
                await event_bus.publish(channel, b"both")
                assert await self._next(leaves) == b"both"
                assert await self._next(stays) == b"both"
            await event_bus.publish(channel, b"after")
            assert await self._next(stays) == b"after"
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(leaves), self.receive_timeout)
            await leaves.close()  # idempotent

    async def test_resubscribe_after_last_subscriber_left(
        self, event_bus: EventBus, channel: str
    ) -> None:
        async with event_bus.subscribe(channel) as sub:
            await event_bus.publish(channel, b"first")
            assert await self._next(sub) == b"first"
        async with event_bus.subscribe(channel) as sub:
            await event_bus.publish(channel, b"second")
            assert await self._next(sub) == b"second"

    async def test_payload_limit(self, event_bus: EventBus, channel: str) -> None:
        assert MAX_BUS_PAYLOAD_BYTES == 7000
        biggest_binary = os.urandom(MAX_BUS_PAYLOAD_BYTES)
        biggest_text = b"x" * MAX_BUS_PAYLOAD_BYTES
        async with event_bus.subscribe(channel) as sub:
            await event_bus.publish(channel, biggest_binary)
            await event_bus.publish(channel, biggest_text)
            with pytest.raises(ValueError):
                await event_bus.publish(channel, b"x" * (MAX_BUS_PAYLOAD_BYTES + 1))
            assert await self._next(sub) == biggest_binary
            assert await self._next(sub) == biggest_text

    @pytest.mark.parametrize(
        "payload",
        [
            b"",
            b"\x00\x01\x02\xff",
            "ünïcødé ✓".encode(),
            b'{"type":"session.ended","seq":42}',
            b"t-looks-like-a-frame",
            b"\xc3(",  # invalid UTF-8
        ],
    )
    async def test_arbitrary_bytes_round_trip(
        self, event_bus: EventBus, channel: str, payload: bytes
    ) -> None:
        async with event_bus.subscribe(channel) as sub:
            await event_bus.publish(channel, payload)
            got = await self._next(sub)
        assert got == payload and isinstance(got, bytes)

    async def test_payload_must_be_bytes(self, event_bus: EventBus, channel: str) -> None:
        with pytest.raises(TypeError):
            await event_bus.publish(channel, "text")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "bad",
        ["", "has space", "x" * 64, "wild*", "wild>", "quote'", 'dquote"', "é", "-lead", "a;b"],
    )
    async def test_bad_channel_names_refused(self, event_bus: EventBus, bad: str) -> None:
        with pytest.raises(ValueError):
            validate_channel(bad)
        with pytest.raises(ValueError):
            await event_bus.publish(bad, b"x")
        with pytest.raises(ValueError):
            event_bus.subscribe(bad)

    async def test_longest_channel_name(self, event_bus: EventBus) -> None:
        channel = "L" + secrets.token_hex(31)[:62]
        assert len(channel) == 63
        async with event_bus.subscribe(channel) as sub:
            await event_bus.publish(channel, b"long")
            assert await self._next(sub) == b"long"

    async def test_delivery_between_replicas(
        self, event_bus: EventBus, peer_bus: EventBus, channel: str
    ) -> None:
        async with event_bus.subscribe(channel) as here, peer_bus.subscribe(channel) as there:
            # Sequential, awaited publishes: each is committed before the next one starts, so
            # every subscriber sees them in this order whichever replica published.
            await peer_bus.publish(channel, b"from peer")
            await event_bus.publish(channel, b"from here")
            for sub in (here, there):
                assert [await self._next(sub), await self._next(sub)] == [
                    b"from peer",
                    b"from here",
                ]

    async def test_close_ends_subscriptions(self, event_bus: EventBus, channel: str) -> None:
        sub = event_bus.subscribe(channel)
        await sub.__aenter__()
        waiter = asyncio.create_task(anext(sub))
        await asyncio.sleep(0.05)
        await event_bus.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiter, self.receive_timeout)
        await event_bus.close()  # idempotent: fixtures close again
        await sub.close()
