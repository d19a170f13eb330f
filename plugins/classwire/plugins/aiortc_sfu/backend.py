"""The aiortc SFU: rooms, peers, signaling and statistics around :mod:`.forwarding`."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCSessionDescription
from aiortc import sdp as aiortc_sdp

from classwire.server.plugins.types import (
    AudioFrame,
    IceCandidate,
    InvalidSdpError,
    MediaBackend,
    MediaEvent,
    MediaEventSink,
    PeerNotFoundError,
    PeerSignal,
    PeerStateChanged,
    RecordingFormat,
    RoomInfo,
    RoomNotFoundError,
    RoomOptions,
    SessionDescription,
    TrackInfo,
    TrackMuted,
    TrackNotFoundError,
    TrackPublished,
    TrackStats,
    TrackUnpublished,
)

from .forwarding import (
    FORWARDED_CODECS,
    ForwardTrack,
    PublishedTrack,
    SfuPeerConnection,
    packer,
    supported_codecs,
)
from .media import AudioHub, record_tracks

__all__ = ["AiortcSfu"]

_MAX_SDP = 256 * 1024


@dataclass(eq=False)
class _Peer:
    peer_id: str
    publisher: SfuPeerConnection | None = None
    subscriber: SfuPeerConnection | None = None
    tracks: dict[str, PublishedTrack] = field(default_factory=dict)  # by track id
    by_mid: dict[str, PublishedTrack] = field(default_factory=dict)
    # track id -> (the subscriber's copy, its transceiver on the subscriber connection)
    subscriptions: dict[str, tuple[ForwardTrack, Any]] = field(default_factory=dict)
    dirty: bool = False
    renegotiation: asyncio.Task[None] | None = None
    publish_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    subscribe_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False


@dataclass(eq=False)
class _Room:
    room_id: str
    options: RoomOptions
    sink: MediaEventSink
    peers: dict[str, _Peer] = field(default_factory=dict)
    tracks: dict[str, PublishedTrack] = field(default_factory=dict)
    outbox: asyncio.Queue[MediaEvent | None] = field(default_factory=asyncio.Queue)
    dispatcher: asyncio.Task[None] | None = None


def _check_sdp(sdp: Any, *, offer: bool) -> Any:
    """Parse an SDP and check what aiortc would otherwise trip over half-way."""
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > _MAX_SDP:
        raise InvalidSdpError("not an SDP description (it must start with v=0)")
    try:
        parsed = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:  # the parser raises anything from ValueError to IndexError
        raise InvalidSdpError(f"malformed SDP: {exc}") from None
    media = [m for m in parsed.media if m.kind in ("audio", "video")]
    if offer and not media:
        raise InvalidSdpError("the offer has no audio or video section")
    for m in media:
        if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
            raise InvalidSdpError(f"{m.kind} section {m.rtp.muxId!r} lacks ICE credentials")
        if m.dtls is None or not m.dtls.fingerprints:
            raise InvalidSdpError(f"{m.kind} section {m.rtp.muxId!r} lacks a DTLS fingerprint")
        if offer and m.port != 0:
            wanted = FORWARDED_CODECS[m.kind].lower()
            if not any(c.name.lower() == wanted for c in m.rtp.codecs):
                raise InvalidSdpError(
                    f"{m.kind} section {m.rtp.muxId!r} offers no supported codec "
                    f"(this backend forwards {FORWARDED_CODECS[m.kind]})"
                )
    return parsed


class AiortcSfu(MediaBackend):
    """A passthrough SFU in the server process. See the package docstring."""

    def __init__(
        self,
        *,
        keyframe_interval: float = 0.3,
        renegotiation_delay: float = 0.02,
        stun_servers: Sequence[str] = (),
        logger: Any = None,
    ) -> None:
        self._rooms: dict[str, _Room] = {}
        self._keyframe_interval = keyframe_interval
        self._renegotiation_delay = renegotiation_delay
        # An explicit list: without one aiortc would ask a public STUN server.
        self._ice_servers = [RTCIceServer(url) for url in stun_servers]
        self._log = logger
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def close(self) -> None:
        for room_id in list(self._rooms):
            await self.close_room(room_id)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._log is not None:
            self._log.error("media task failed", exc_info=task.exception())

    # -- rooms ---------------------------------------------------------------------------------

    def _room(self, room_id: str) -> _Room:
        room = self._rooms.get(room_id)
        if room is None:
            raise RoomNotFoundError(f"no media room {room_id!r}")
        return room

    def _peer(self, room_id: str, peer_id: str) -> tuple[_Room, _Peer]:
        room = self._room(room_id)
        peer = room.peers.get(peer_id)
        if peer is None:
            raise PeerNotFoundError(f"no peer {peer_id!r} in room {room_id!r}")
        return room, peer

    def _track(self, room: _Room, track_id: str) -> PublishedTrack:
        track = room.tracks.get(track_id)
        if track is None:
            raise TrackNotFoundError(f"no track {track_id!r} in room {room.room_id!r}")
        return track

    async def create_room(
        self, room_id: str, options: RoomOptions, events: MediaEventSink
    ) -> RoomInfo:
        if room_id not in self._rooms:
            room = _Room(room_id, options, events)
            room.dispatcher = self._spawn(self._dispatch(room))
            self._rooms[room_id] = room
        return await self.room_info(room_id)

    async def _dispatch(self, room: _Room) -> None:
        # One task per room delivers events in order; a slow sink never stalls media.
        while (event := await room.outbox.get()) is not None:
            try:
                await room.sink(event)
            except Exception:
                if self._log is not None:
                    self._log.exception("media event sink failed", room_id=room.room_id)

    def _emit(self, room: _Room, event: MediaEvent) -> None:
        room.outbox.put_nowait(event)

    async def close_room(self, room_id: str) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            return
        for peer in room.peers.values():
            peer.closed = True  # no renegotiation for peers about to go
        for peer_id in list(room.peers):
            await self.close_peer(room_id, peer_id)
        self._rooms.pop(room_id, None)
        room.outbox.put_nowait(None)
        if room.dispatcher is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(room.dispatcher), 5)

    async def room_info(self, room_id: str) -> RoomInfo:
        room = self._room(room_id)
        return RoomInfo(
            room_id, tuple(room.peers), tuple(self._info(t) for t in room.tracks.values())
        )

    @staticmethod
    def _info(track: PublishedTrack) -> TrackInfo:
        return TrackInfo(
            track.track_id,
            track.peer_id,
            track.kind,  # type: ignore[arg-type]
            "unknown",
            track.codec,
            track.muted,
            track.client_track_id,
        )

    # -- peers ---------------------------------------------------------------------------------

    async def add_peer(self, room_id: str, peer_id: str) -> None:
        room = self._room(room_id)
        if not isinstance(peer_id, str) or not peer_id:
            raise PeerNotFoundError("a peer id must be a non-empty string")
        room.peers.setdefault(peer_id, _Peer(peer_id))

    def _new_connection(self, room: _Room, peer: _Peer, role: str) -> SfuPeerConnection:
        # max-bundle: aiortc's "balanced" policy loses a transceiver that is added next to
        # another of its kind before the first negotiation (it keeps a discarded transport).
        pc = SfuPeerConnection(
            RTCConfiguration(iceServers=self._ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if role == "publisher" and not peer.closed:
                self._emit(room, PeerStateChanged(room.room_id, peer.peer_id, pc.connectionState))
                if pc.connectionState == "failed":
                    # The publisher vanished: its tracks end for everyone.
                    for track in list(peer.tracks.values()):
                        self._end_track(room, track, "peer_failed")

        return pc

    async def close_peer(self, room_id: str, peer_id: str) -> None:
        room = self._room(room_id)
        peer = room.peers.pop(peer_id, None)
        if peer is None:
            return
        peer.closed = True
        for track in list(peer.tracks.values()):
            self._end_track(room, track, "peer_left")
        for track_id, (copy, _) in peer.subscriptions.items():
            source = room.tracks.get(track_id)
            if source is not None:
                source.subscribers.pop(peer_id, None)
            copy.end()
        peer.subscriptions.clear()
        if peer.renegotiation is not None:
            peer.renegotiation.cancel()
        for pc in (peer.publisher, peer.subscriber):
            if pc is not None:
                await pc.close()
        self._emit(room, PeerStateChanged(room_id, peer_id, "closed"))

    # -- publishing ----------------------------------------------------------------------------

    async def publish(
        self, room_id: str, peer_id: str, offer: SessionDescription
    ) -> SessionDescription:
        room, peer = self._peer(room_id, peer_id)
        if offer.type != "offer":
            raise InvalidSdpError("publish takes the publisher connection's offer")
        parsed = _check_sdp(offer.sdp, offer=True)
        async with peer.publish_lock:
            fresh = peer.publisher is None
            pc = peer.publisher or self._new_connection(room, peer, "publisher")
            try:
                await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:
                if fresh:
                    await pc.close()
                raise InvalidSdpError(f"cannot apply the offer: {exc}") from None
            if peer.closed:
                await pc.close()
                raise PeerNotFoundError(f"peer {peer_id!r} left")
            peer.publisher = pc
            self._update_published(room, peer, pc, parsed)
            return SessionDescription("answer", pc.localDescription.sdp)

    def _update_published(self, room: _Room, peer: _Peer, pc: Any, parsed: Any) -> None:
        transceivers = {t.mid: t for t in pc.getTransceivers()}
        for media in parsed.media:
            if media.kind not in ("audio", "video"):
                continue
            mid = media.rtp.muxId
            sending = media.port != 0 and media.direction in ("sendonly", "sendrecv")
            existing = peer.by_mid.get(mid)
            if sending and existing is None:
                transceiver = transceivers.get(mid)
                if transceiver is None:
                    continue
                track = PublishedTrack(
                    track_id=f"TR_{secrets.token_hex(6)}",
                    peer_id=peer.peer_id,
                    kind=media.kind,
                    client_track_id=parsed.webrtc_track_id(media) or "",
                    keyframe_interval=self._keyframe_interval,
                )
                track.receiver = transceiver.receiver
                track.mid = mid
                track.on_end = lambda room=room, track=track: self._end_track(room, track, "ended")
                transceiver._cw_hook.track = track
                peer.tracks[track.track_id] = track
                peer.by_mid[mid] = track
                room.tracks[track.track_id] = track
                self._emit(room, TrackPublished(room.room_id, self._info(track)))
            elif not sending and existing is not None:
                self._end_track(room, existing, "unpublished")

    def _end_track(self, room: _Room, track: PublishedTrack, reason: str) -> None:
        if room.tracks.pop(track.track_id, None) is None:
            return
        publisher = room.peers.get(track.peer_id)
        if publisher is not None:
            publisher.tracks.pop(track.track_id, None)
            if track.mid is not None:
                publisher.by_mid.pop(track.mid, None)
        subscriber_ids = list(track.subscribers)
        track.end()
        for peer_id in subscriber_ids:
            peer = room.peers.get(peer_id)
            if peer is not None and track.track_id in peer.subscriptions:
                self._detach(room, peer, track.track_id)
        self._emit(room, TrackUnpublished(room.room_id, track.track_id, track.peer_id, reason))

    # -- subscribing ---------------------------------------------------------------------------

    async def subscribe(self, room_id: str, peer_id: str, track_id: str) -> None:
        room, peer = self._peer(room_id, peer_id)
        track = self._track(room, track_id)
        if track_id in peer.subscriptions:
            return
        if peer.subscriber is None:
            peer.subscriber = self._new_connection(room, peer, "subscriber")
        copy = ForwardTrack(track)
        transceiver = peer.subscriber.addTransceiver(copy, direction="sendonly")
        transceiver.setCodecPreferences(supported_codecs(track.kind, track.codec))
        # Group the copies by publisher on the client (the msid stream id).
        transceiver.sender._stream_id = track.peer_id
        # A PLI/FIR from this subscriber goes to the publisher (throttled there); the sender
        # has no encoder of its own to refresh.
        transceiver.sender._send_keyframe = track.request_keyframe
        transceiver.sender._RTCRtpSender__encoder = packer(track.kind)
        track.subscribers[peer_id] = copy
        peer.subscriptions[track_id] = (copy, transceiver)
        self._renegotiate(room, peer)

    async def unsubscribe(self, room_id: str, peer_id: str, track_id: str) -> None:
        room, peer = self._peer(room_id, peer_id)
        if track_id not in peer.subscriptions:
            self._track(room, track_id)
            return
        source = room.tracks.get(track_id)
        if source is not None:
            source.subscribers.pop(peer_id, None)
        self._detach(room, peer, track_id)

    def _detach(self, room: _Room, peer: _Peer, track_id: str) -> None:
        copy, transceiver = peer.subscriptions.pop(track_id)
        copy.end()
        transceiver.direction = "inactive"
        # Stopping the sender sends RTCP BYE: the subscriber's track ends at once, before the
        # renegotiation that marks the section inactive.
        self._spawn(transceiver.sender.stop())
        self._renegotiate(room, peer)

    def _renegotiate(self, room: _Room, peer: _Peer) -> None:
        peer.dirty = True
        if peer.renegotiation is None or peer.renegotiation.done():
            peer.renegotiation = self._spawn(self._offer(room, peer))

    async def _offer(self, room: _Room, peer: _Peer) -> None:
        # Gather the changes of the next few milliseconds into one offer.
        await asyncio.sleep(self._renegotiation_delay)
        async with peer.subscribe_lock:
            pc = peer.subscriber
            if pc is None or peer.closed or pc.signalingState != "stable" or not peer.dirty:
                return  # an offer is out: the answer triggers the next one
            peer.dirty = False
            await pc.setLocalDescription(await pc.createOffer())
            if peer.closed:
                return
            description = SessionDescription("offer", pc.localDescription.sdp)
            self._emit(room, PeerSignal(room.room_id, peer.peer_id, description=description))

    async def set_remote_description(
        self, room_id: str, peer_id: str, description: SessionDescription
    ) -> None:
        room, peer = self._peer(room_id, peer_id)
        if description.type != "answer":
            raise InvalidSdpError("expected the answer to the subscriber connection's offer")
        _check_sdp(description.sdp, offer=False)
        async with peer.subscribe_lock:
            pc = peer.subscriber
            if pc is None or pc.signalingState != "have-local-offer":
                raise InvalidSdpError("no subscriber offer is waiting for an answer")
            try:
                await pc.setRemoteDescription(RTCSessionDescription(description.sdp, "answer"))
            except Exception as exc:
                raise InvalidSdpError(f"cannot apply the answer: {exc}") from None
        if peer.dirty:
            self._renegotiate(room, peer)

    async def add_ice_candidate(self, room_id: str, peer_id: str, candidate: IceCandidate) -> None:
        _, peer = self._peer(room_id, peer_id)
        if candidate.role not in ("publisher", "subscriber"):
            raise InvalidSdpError(f"unknown connection role {candidate.role!r}")
        pc = peer.publisher if candidate.role == "publisher" else peer.subscriber
        if pc is None or pc.remoteDescription is None:
            raise InvalidSdpError(f"the {candidate.role} connection has not been negotiated")
        if not candidate.candidate:
            return  # end of candidates: aiortc checks connectivity with what it has
        if candidate.sdp_mid is None and candidate.sdp_mline_index is None:
            raise InvalidSdpError("an ICE candidate needs sdp_mid or sdp_mline_index")
        try:
            parsed = aiortc_sdp.candidate_from_sdp(candidate.candidate.removeprefix("candidate:"))
        except Exception:
            raise InvalidSdpError("malformed ICE candidate") from None
        parsed.sdpMid = candidate.sdp_mid
        parsed.sdpMLineIndex = candidate.sdp_mline_index
        try:
            await pc.addIceCandidate(parsed)
        except Exception as exc:
            raise InvalidSdpError(f"ICE candidate refused: {exc}") from None

    # -- control -------------------------------------------------------------------------------

    async def set_track_muted(self, room_id: str, track_id: str, muted: bool) -> None:
        room = self._room(room_id)
        track = self._track(room, track_id)
        if track.muted == bool(muted):
            return
        track.muted = bool(muted)
        if not muted:
            for copy in track.subscribers.values():
                copy.need_keyframe()
            track.request_keyframe()
        self._emit(room, TrackMuted(room_id, track_id, track.muted))

    # -- samples -------------------------------------------------------------------------------

    async def audio_tap(
        self, room_id: str, track_id: str, *, sample_rate: int = 16000, channels: int = 1
    ) -> AsyncIterator[AudioFrame]:
        room = self._room(room_id)
        track = self._track(room, track_id)
        if track.kind != "audio":
            raise TrackNotFoundError(f"track {track_id!r} is not an audio track")
        if not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 48000:
            raise ValueError("sample_rate must be between 8000 and 48000")
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        if track.audio_hub is None:
            track.audio_hub = AudioHub(track)
        hub = track.audio_hub
        queue = hub.add_tap(sample_rate, channels)
        try:
            while (frame := await queue.get()) is not None:
                yield frame
        finally:
            hub.remove_tap(queue)

    async def record(
        self, room_id: str, track_ids: Sequence[str], *, format: RecordingFormat = "webm"
    ) -> AsyncIterator[bytes]:
        room = self._room(room_id)
        tracks = [self._track(room, track_id) for track_id in track_ids]
        if format not in ("webm", "ogg"):
            raise ValueError(f"unsupported recording format {format!r}")
        if not tracks:
            raise ValueError("record needs at least one track")
        if format == "ogg" and any(t.kind != "audio" for t in tracks):
            raise ValueError("an Ogg recording holds audio tracks only")
        async for chunk in record_tracks(tracks, format):
            yield chunk

    # -- statistics ----------------------------------------------------------------------------

    async def stats(self, room_id: str) -> Sequence[TrackStats]:
        room = self._room(room_id)
        now = datetime.now(UTC)
        samples: list[TrackStats] = []
        for peer in list(room.peers.values()):
            for track in list(peer.tracks.values()):
                samples.append(await self._inbound(peer, track, now))
            for track_id, (copy, transceiver) in list(peer.subscriptions.items()):
                samples.append(await self._outbound(peer, track_id, copy, transceiver, now))
        return samples

    @staticmethod
    def _rate(holder: Any, octets: int | None) -> float | None:
        if octets is None:
            return None
        t = time.monotonic()
        previous = getattr(holder, "_cw_octets", None)
        holder._cw_octets = (t, octets)
        if previous is None or t - previous[0] < 0.1:
            return None
        return max(0.0, (octets - previous[1]) * 8 / (t - previous[0]))

    async def _inbound(self, peer: _Peer, track: PublishedTrack, now: datetime) -> TrackStats:
        report = await track.receiver.getStats()
        inbound = next((s for s in report.values() if s.type == "inbound-rtp"), None)
        clock = 48000 if track.kind == "audio" else 90000
        lost = inbound.packetsLost if inbound else 0
        received = inbound.packetsReceived if inbound else 0
        return TrackStats(
            peer_id=peer.peer_id,
            track_id=track.track_id,
            direction="inbound",
            timestamp=now,
            packets_lost=lost,
            fraction_lost=lost / (lost + received) if lost + received > 0 else 0.0,
            jitter_ms=inbound.jitter * 1000 / clock if inbound else None,
            round_trip_time_ms=None,  # aiortc's receiver measures no RTT (no RTCP XR)
            bitrate_bps=self._rate(track, track.bytes_received),
        )

    async def _outbound(
        self, peer: _Peer, track_id: str, copy: ForwardTrack, transceiver: Any, now: datetime
    ) -> TrackStats:
        report = await transceiver.sender.getStats()
        outbound = next((s for s in report.values() if s.type == "outbound-rtp"), None)
        remote = next((s for s in report.values() if s.type == "remote-inbound-rtp"), None)
        clock = 48000 if copy.kind == "audio" else 90000
        return TrackStats(
            peer_id=peer.peer_id,
            track_id=track_id,
            direction="outbound",
            timestamp=now,
            packets_lost=remote.packetsLost if remote else 0,
            fraction_lost=remote.fractionLost / 256 if remote else 0.0,
            jitter_ms=remote.jitter * 1000 / clock if remote else None,
            round_trip_time_ms=(
                remote.roundTripTime * 1000 if remote and remote.roundTripTime is not None else None
            ),
            bitrate_bps=self._rate(copy, outbound.bytesSent if outbound else None),
        )
