"""A participant that speaks the participant connection (SessionService.Connect) and real
WebRTC with aiortc: it joins, publishes tracks on its publisher peer connection (it offers,
the server answers), answers the server's offers on its subscriber peer connection, and keeps
what it receives.

    async with WebRtcParticipant(server.address, token) as alice:
        track = await alice.publish(MediaPlayer("speech.wav").audio, MICROPHONE)
        await bob.wait_for_tracks(kinds=("audio",))
        frames = await bob.received("audio").collect(seconds=5)

aiortc gathers every ICE candidate before it offers or answers, so candidates travel inside the
SDP; server candidates (a trickling backend) are added to the matching connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.session.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2_grpc

PUBLISHER = media_pb.PEER_CONNECTION_ROLE_PUBLISHER
SUBSCRIBER = media_pb.PEER_CONNECTION_ROLE_SUBSCRIBER
OFFER = media_pb.SessionDescription.TYPE_OFFER
ANSWER = media_pb.SessionDescription.TYPE_ANSWER


class ActionFailedError(Exception):
    """The server answered an action with ActionError."""

    def __init__(self, error: api.ConnectResponse.ActionError) -> None:
        super().__init__(f"{error.reason}: {error.message}")
        self.error = error
        self.reason = error.reason
        self.code = error.code


@dataclass
class ReceivedTrack:
    """A remote track arriving on the subscriber connection, and the frames read from it."""

    track: MediaStreamTrack
    frames: list = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None

    @property
    def kind(self) -> str:
        return self.track.kind

    async def _read(self) -> None:
        try:
            while True:
                self.frames.append(await self.track.recv())
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            self.ended.set()


class WebRtcParticipant:
    """One participant connection with its two peer connections."""

    def __init__(
        self,
        address: str,
        token: str,
        *,
        manual_subscription: bool = False,
        keep_frames: bool = True,
    ) -> None:
        self.address = address
        self.token = token
        self.manual_subscription = manual_subscription
        self.keep_frames = keep_frames
        self.publisher = RTCPeerConnection()
        self.subscriber = RTCPeerConnection()
        self.joined: api.ConnectResponse.Joined | None = None
        self.events: list = []  # events.v1.Event pushes, in order
        self.messages: list[api.ConnectResponse] = []
        self.tracks: list[ReceivedTrack] = []
        self.offers_answered = 0
        self._channel: grpc.aio.Channel | None = None
        self._requests: asyncio.Queue = asyncio.Queue()
        self._waiters: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task | None = None
        self._changed = asyncio.Condition()
        self._subscriber_lock = asyncio.Lock()
        self.subscriber.on("track", self._on_track)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> WebRtcParticipant:
        await self.join()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def join(self) -> api.ConnectResponse.Joined:
        self._channel = grpc.aio.insecure_channel(self.address)
        stub = service_pb2_grpc.SessionServiceStub(self._channel)

        async def requests():
            while True:
                item = await self._requests.get()
                if item is None:
                    return
                yield item

        self._call = stub.Connect(requests(), metadata=(("authorization", f"Bearer {self.token}"),))
        joined = asyncio.get_running_loop().create_future()
        self._waiters["__join__"] = joined
        self._requests.put_nowait(
            api.ConnectRequest(
                join=api.ConnectRequest.Join(manual_subscription=self.manual_subscription)
            )
        )
        self._reader = asyncio.ensure_future(self._read())
        self.joined = await asyncio.wait_for(joined, 15)
        return self.joined

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._requests.put_nowait(api.ConnectRequest(leave=api.ConnectRequest.Leave()))
            await asyncio.sleep(0.1)
        self._requests.put_nowait(None)
        for received in self.tracks:
            if received.task is not None:
                received.task.cancel()
        await self.publisher.close()
        await self.subscriber.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._channel is not None:
            await self._channel.close()

    # -- actions ---------------------------------------------------------------------------

    async def act(self, timeout: float = 15.0, **action) -> api.ConnectResponse:
        """Sends one action and returns the server's answer (ack, a session description, a
        publish result); raises ActionFailedError for an ActionError."""
        action_id = f"a{next(self._ids)}"
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[action_id] = waiter
        self._requests.put_nowait(api.ConnectRequest(action_id=action_id, **action))
        try:
            response = await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiters.pop(action_id, None)
        if response.WhichOneof("message") == "error":
            raise ActionFailedError(response.error)
        return response

    async def publish(
        self,
        track: MediaStreamTrack,
        source: int,
        *,
        name: str = "",
        muted: bool = False,
        width: int = 0,
        height: int = 0,
        preferred_mime_types: tuple[str, ...] = (),
    ) -> media_pb.Track:
        """Announces `track`, adds it to the publisher connection, renegotiates, and returns
        the track as the server registered it."""
        self.publisher.addTrack(track)
        # The server answers the announcement once the track arrives in an offer, so the offer
        # goes out before that answer is awaited; actions are handled in order, so a refused
        # announcement is answered before the offer.
        announced = asyncio.ensure_future(
            self.act(
                timeout=30,
                publish_track=media_pb.TrackPublication(
                    client_track_id=track.id,
                    source=source,
                    name=name,
                    muted=muted,
                    width=width,
                    height=height,
                    preferred_mime_types=list(preferred_mime_types),
                ),
            )
        )
        await asyncio.sleep(0)
        try:
            await self.negotiate()
        except BaseException:
            if announced.done():
                announced.result()  # the announcement's own error explains the failure
            announced.cancel()
            raise
        response = await announced
        return response.publish_track_result.track

    async def negotiate(self) -> None:
        """Offers the publisher connection's current tracks and applies the server's answer."""
        offer = await self.publisher.createOffer()
        await self.publisher.setLocalDescription(offer)
        response = await self.act(
            session_description=media_pb.SessionDescription(
                target=PUBLISHER, type=OFFER, sdp=self.publisher.localDescription.sdp
            )
        )
        answer = response.session_description
        await self.publisher.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))

    async def send_offer_sdp(self, sdp: str) -> api.ConnectResponse:
        """Sends a raw publisher offer (for malformed-SDP tests)."""
        return await self.act(
            session_description=media_pb.SessionDescription(target=PUBLISHER, type=OFFER, sdp=sdp)
        )

    # -- what arrives ------------------------------------------------------------------------

    def received(self, kind: str) -> list[ReceivedTrack]:
        return [t for t in self.tracks if t.kind == kind]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout)

    async def wait_for_tracks(self, audio: int = 0, video: int = 0, timeout: float = 20) -> None:
        await self.wait_for(
            lambda: len(self.received("audio")) >= audio and len(self.received("video")) >= video,
            timeout,
        )

    async def wait_for_event(self, type_suffix: str, timeout: float = 15.0, where=None):
        """The first pushed event whose type ends with `type_suffix` (and satisfies `where`)."""

        def find():
            for event in self.events:
                if event.type.endswith(type_suffix) and (where is None or where(event)):
                    return event
            return None

        await self.wait_for(lambda: find() is not None, timeout)
        return find()

    def _on_track(self, track: MediaStreamTrack) -> None:
        received = ReceivedTrack(track)
        if self.keep_frames:
            received.task = asyncio.ensure_future(received._read())
        self.tracks.append(received)
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self.messages.append(response)
                await self._handle(response)
                await self._notify()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass

    async def _handle(self, response: api.ConnectResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "joined":
            waiter = self._waiters.pop("__join__", None)
            if waiter is not None and not waiter.done():
                waiter.set_result(response.joined)
            return
        if kind == "event":
            self.events.append(response.event)
        if kind == "session_description" and response.session_description.target == SUBSCRIBER:
            asyncio.ensure_future(self._answer_offer(response.session_description.sdp))
        if kind == "ice_candidate" and response.ice_candidate.candidate:
            c = response.ice_candidate
            connection = self.subscriber if c.target == SUBSCRIBER else self.publisher
            candidate = candidate_from_sdp(c.candidate.removeprefix("candidate:"))
            candidate.sdpMid = c.sdp_mid
            candidate.sdpMLineIndex = c.sdp_mline_index
            with contextlib.suppress(Exception):
                await connection.addIceCandidate(candidate)
        if response.action_id:
            waiter = self._waiters.get(response.action_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(response)

    async def _answer_offer(self, sdp: str) -> None:
        # Offers are answered one at a time, in the order they came.
        async with self._subscriber_lock:
            await self.subscriber.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            answer = await self.subscriber.createAnswer()
            await self.subscriber.setLocalDescription(answer)
            await self.act(
                session_description=media_pb.SessionDescription(
                    target=SUBSCRIBER, type=ANSWER, sdp=self.subscriber.localDescription.sdp
                )
            )
            self.offers_answered += 1
