"""The Janus media backend: drives a Janus VideoRoom over the HTTP (long-poll) API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from aiortc.sdp import SessionDescription as ParsedSdp

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
    ProviderError,
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

from .client import JanusError, JanusHandle, JanusSession
from .media import AudioDecoder, RtpForward, TrackRecorder, mux_tracks

__all__ = ["JanusMediaBackend"]

VIDEOROOM = "janus.plugin.videoroom"
SUPPORTED = {"audio": {"opus"}, "video": {"vp8"}}

# Janus core and VideoRoom error codes (janus/apierror.h, plugins/janus_videoroom.c).
E_JSEP_UNKNOWN_TYPE, E_JSEP_INVALID_SDP = 464, 465
E_NO_SUCH_ROOM, E_ROOM_EXISTS, E_NO_SUCH_FEED = 426, 427, 428
E_INVALID_ELEMENT, E_INVALID_SDP_TYPE, E_INVALID_SDP = 430, 431, 437
E_WEBRTC_STATE = 490  # the core could not set up ICE/DTLS from the SDP (e.g. no fingerprint)
SDP_ERRORS = {
    E_JSEP_UNKNOWN_TYPE,
    E_JSEP_INVALID_SDP,
    E_INVALID_SDP_TYPE,
    E_INVALID_SDP,
    E_WEBRTC_STATE,
}


@dataclass
class _Track:
    info: TrackInfo
    feed: int
    mid: str
    forward: RtpForward | None = None
    decoder: AudioDecoder | None = None
    recorders: set[TrackRecorder] = field(default_factory=set)


@dataclass
class _Peer:
    peer_id: str
    publisher: JanusHandle
    feed: int
    subscriber: JanusHandle | None = None
    tracks: dict[str, str] = field(default_factory=dict)  # mid -> track id
    subscribed: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    up: dict[str, bool] = field(default_factory=lambda: {"publisher": False, "subscriber": False})
    publisher_up: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = "new"


@dataclass
class _Room:
    room_id: str
    janus_room: int
    events: MediaEventSink
    peers: dict[str, _Peer] = field(default_factory=dict)
    tracks: dict[str, _Track] = field(default_factory=dict)


def janus_room_number(room_id: str) -> int:
    """A stable numeric Janus room id for a classwire room (53 bits: safe in JSON numbers), so
    every replica talking to the same Janus finds the same room."""
    return int.from_bytes(hashlib.sha256(room_id.encode()).digest()[:7], "big") >> 3 or 1


def _parse_offer(description: SessionDescription) -> ParsedSdp:
    if description.type != "offer":
        raise InvalidSdpError(f"expected an SDP offer, got {description.type!r}")
    try:
        parsed = ParsedSdp.parse(description.sdp)
    except Exception as exc:  # the parser raises several types on garbage
        raise InvalidSdpError("malformed SDP") from exc
    if not description.sdp.startswith("v=0") or not parsed.media:
        raise InvalidSdpError("SDP has no media section")
    for media in parsed.media:
        if media.kind not in SUPPORTED:
            raise InvalidSdpError(f"unsupported media kind {media.kind!r}")
        if media.direction in ("sendrecv", "sendonly") and not any(
            codec.name.lower() in SUPPORTED[media.kind] for codec in media.rtp.codecs
        ):
            raise InvalidSdpError(f"no supported {media.kind} codec (opus and VP8 are)")
        if media.rtp.muxId is None or media.rtp.muxId == "":
            raise InvalidSdpError("every media section needs a mid")
    return parsed


def _sent_tracks(parsed: ParsedSdp) -> dict[str, tuple[str, str]]:
    """mid -> (kind, client track id) for the media sections the participant sends."""
    sent: dict[str, tuple[str, str]] = {}
    for media in parsed.media:
        if media.direction not in ("sendrecv", "sendonly") or media.port == 0:
            continue
        client_track = ""
        if media.msid:
            parts = media.msid.split()
            client_track = parts[1] if len(parts) > 1 else parts[0]
        sent[str(media.rtp.muxId)] = (media.kind, client_track)
    return sent


class JanusMediaBackend(MediaBackend):
    """One Janus session per provider; one VideoRoom room per classwire room; per peer a
    publisher handle and (once it subscribes to something) a multistream subscriber handle."""

    def __init__(
        self,
        url: str,
        *,
        api_secret: str | None = None,
        admin_url: str | None = None,
        admin_secret: str | None = None,
        room_admin_key: str | None = None,
        request_timeout: float = 10.0,
        forward_host: str = "127.0.0.1",
        logger: Any = None,
    ) -> None:
        self.url = url
        self.room_admin_key = room_admin_key
        self.forward_host = forward_host
        self.log = logger
        self._session = JanusSession(
            url,
            api_secret=api_secret,
            admin_url=admin_url,
            admin_secret=admin_secret,
            timeout=request_timeout,
            on_error=self._background_error,
        )
        self._control: JanusHandle | None = None
        self._rooms: dict[str, _Room] = {}
        self._handles: dict[int, tuple[str, str, str]] = {}  # handle -> room, peer, role
        self._started = False

    def _background_error(self, exc: BaseException) -> None:
        if self.log is not None:
            self.log.warning("janus_background_error", error=repr(exc))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        try:
            await self._session.start()
            self._control = await self._session.attach(VIDEOROOM)
        except Exception as exc:
            await self._session.close()
            raise ProviderError("media_backend", "janus", "start", str(exc)) from exc
        self._started = True

    async def close(self) -> None:
        if not self._started:
            return
        for room_id in list(self._rooms):
            with contextlib.suppress(Exception):
                await self.close_room(room_id)
        await self._session.close()
        self._started = False

    # -- helpers ------------------------------------------------------------------------------

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

    def _track(self, room_id: str, track_id: str) -> tuple[_Room, _Track]:
        room = self._room(room_id)
        track = room.tracks.get(track_id)
        if track is None:
            raise TrackNotFoundError(f"no track {track_id!r} in room {room_id!r}")
        return room, track

    def _admin(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.room_admin_key:
            body["admin_key"] = self.room_admin_key
        return body

    async def _emit(self, room: _Room, event: MediaEvent) -> None:
        try:
            await room.events(event)
        except Exception as exc:  # the sink's failure must not break Janus event handling
            self._background_error(exc)

    # -- rooms --------------------------------------------------------------------------------

    async def create_room(
        self, room_id: str, options: RoomOptions, events: MediaEventSink
    ) -> RoomInfo:
        if room_id in self._rooms:
            return await self.room_info(room_id)
        assert self._control is not None, "start() the backend first"
        number = janus_room_number(room_id)
        audio = ",".join(c.lower() for c in options.audio_codecs if c.lower() in SUPPORTED["audio"])
        video = ",".join(c.lower() for c in options.video_codecs if c.lower() in SUPPORTED["video"])
        body: dict[str, Any] = {
            "request": "create",
            "room": number,
            "description": room_id[:100],
            "permanent": False,
            "is_private": True,
            "publishers": options.max_participants or 100,
            "audiocodec": audio or "opus",
            "videocodec": video or "vp8",
            "notify_joining": False,
            "audiolevel_ext": True,
            "fir_freq": int(options.extra.get("fir_freq", 0)),
        }
        try:
            await self._control.request(self._admin(body))
        except JanusError as exc:
            if exc.code != E_ROOM_EXISTS:
                raise
        if room_id not in self._rooms:  # a concurrent create may have won
            self._rooms[room_id] = _Room(room_id, number, events)
        return await self.room_info(room_id)

    async def close_room(self, room_id: str) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            return
        for peer_id in list(room.peers):
            await self.close_peer(room_id, peer_id)
        self._rooms.pop(room_id, None)
        assert self._control is not None
        with contextlib.suppress(JanusError):
            await self._control.request(
                self._admin({"request": "destroy", "room": room.janus_room, "permanent": False})
            )

    async def room_info(self, room_id: str) -> RoomInfo:
        room = self._room(room_id)
        return RoomInfo(
            room_id=room_id,
            peer_ids=tuple(room.peers),
            tracks=tuple(track.info for track in room.tracks.values()),
        )

    # -- peers --------------------------------------------------------------------------------

    async def add_peer(self, room_id: str, peer_id: str) -> None:
        room = self._room(room_id)
        if peer_id in room.peers:
            return
        handle = await self._session.attach(VIDEOROOM)
        try:
            data, _ = await handle.message(
                {
                    "request": "join",
                    "ptype": "publisher",
                    "room": room.janus_room,
                    "display": peer_id[:100],
                }
            )
        except JanusError as exc:
            await handle.detach()
            if exc.code == E_NO_SUCH_ROOM:
                raise RoomNotFoundError(f"no media room {room_id!r}") from exc
            raise
        if room_id not in self._rooms or peer_id in room.peers:  # closed or raced meanwhile
            await handle.detach()
            if room_id not in self._rooms:
                raise RoomNotFoundError(f"no media room {room_id!r}")
            return
        peer = _Peer(peer_id, handle, int(data["id"]))
        room.peers[peer_id] = peer
        self._handles[handle.id] = (room_id, peer_id, "publisher")
        handle.on_event = lambda event: self._on_event(room_id, peer_id, "publisher", event)

    async def publish(
        self, room_id: str, peer_id: str, offer: SessionDescription
    ) -> SessionDescription:
        room, peer = self._peer(room_id, peer_id)
        parsed = _parse_offer(offer)
        sent = _sent_tracks(parsed)
        async with peer.lock:
            try:
                data, jsep = await peer.publisher.message(
                    {"request": "configure", "audio": True, "video": True},
                    {"type": "offer", "sdp": offer.sdp},
                )
            except JanusError as exc:
                if exc.code in SDP_ERRORS or exc.code == E_INVALID_ELEMENT:
                    if not peer.tracks:
                        # Janus's handle may be half set up now; a peer with nothing published
                        # yet starts again on a fresh one, as if the offer never came.
                        await self._renew_publisher(room, peer)
                    raise InvalidSdpError(f"Janus refused the offer: {exc.reason}") from exc
                raise
            if not jsep or jsep.get("type") != "answer":
                raise InvalidSdpError("Janus returned no answer for the offer")
            codecs = {
                str(s.get("mid")): str(s.get("codec", ""))
                for s in data.get("streams", [])
                if not s.get("disabled")
            }
            added, removed = self._update_tracks(room, peer, sent, codecs)
        for track in removed:
            await self._end_track(room, track, "unpublished")
        for track in added:
            await self._emit(room, TrackPublished(room_id, track.info))
        return SessionDescription("answer", jsep["sdp"])

    async def _renew_publisher(self, room: _Room, peer: _Peer) -> None:
        old = peer.publisher
        self._handles.pop(old.id, None)
        await old.detach()
        handle = await self._session.attach(VIDEOROOM)
        data, _ = await handle.message(
            {
                "request": "join",
                "ptype": "publisher",
                "room": room.janus_room,
                "display": peer.peer_id[:100],
            }
        )
        peer.publisher, peer.feed = handle, int(data["id"])
        room_id, peer_id = room.room_id, peer.peer_id
        self._handles[handle.id] = (room_id, peer_id, "publisher")
        handle.on_event = lambda event: self._on_event(room_id, peer_id, "publisher", event)

    def _update_tracks(
        self,
        room: _Room,
        peer: _Peer,
        sent: dict[str, tuple[str, str]],
        codecs: dict[str, str],
    ) -> tuple[list[_Track], list[_Track]]:
        added: list[_Track] = []
        removed: list[_Track] = []
        for mid, track_id in list(peer.tracks.items()):
            track = room.tracks.get(track_id)
            if mid not in sent or track is None or track.info.client_track_id != sent[mid][1]:
                peer.tracks.pop(mid)
                if track is not None:
                    removed.append(track)
        for mid, (kind, client_track) in sent.items():
            if mid in peer.tracks:
                continue
            codec = codecs.get(mid, "opus" if kind == "audio" else "vp8")
            info = TrackInfo(
                track_id=f"TR_{secrets.token_hex(6)}",
                peer_id=peer.peer_id,
                kind=kind,  # type: ignore[arg-type]
                codec="opus" if codec == "opus" else codec.upper(),
                client_track_id=client_track,
            )
            track = _Track(info, peer.feed, mid)
            room.tracks[info.track_id] = track
            peer.tracks[mid] = info.track_id
            added.append(track)
        return added, removed

    async def _end_track(self, room: _Room, track: _Track, reason: str) -> None:
        room.tracks.pop(track.info.track_id, None)
        for other in room.peers.values():
            other.subscribed.discard(track.info.track_id)
        self._stop_forward(room, track)
        await self._emit(
            room, TrackUnpublished(room.room_id, track.info.track_id, track.info.peer_id, reason)
        )

    async def set_remote_description(
        self, room_id: str, peer_id: str, answer: SessionDescription
    ) -> None:
        _, peer = self._peer(room_id, peer_id)
        if answer.type != "answer":
            raise InvalidSdpError(f"expected an SDP answer, got {answer.type!r}")
        if peer.subscriber is None:
            raise InvalidSdpError("no server offer is waiting for an answer")
        try:
            ParsedSdp.parse(answer.sdp)
        except Exception as exc:
            raise InvalidSdpError("malformed SDP") from exc
        if not answer.sdp.startswith("v=0"):
            raise InvalidSdpError("malformed SDP")
        async with peer.lock:
            try:
                await peer.subscriber.message(
                    {"request": "start"}, {"type": "answer", "sdp": answer.sdp}
                )
            except JanusError as exc:
                if exc.code in SDP_ERRORS or exc.code == E_INVALID_ELEMENT:
                    raise InvalidSdpError(f"Janus refused the answer: {exc.reason}") from exc
                raise

    async def add_ice_candidate(self, room_id: str, peer_id: str, candidate: IceCandidate) -> None:
        _, peer = self._peer(room_id, peer_id)
        role = getattr(candidate, "role", "publisher")
        handle = peer.publisher if role == "publisher" else peer.subscriber
        if handle is None:
            raise InvalidSdpError("the subscriber connection does not exist yet")
        if candidate.candidate == "":
            payload: dict[str, Any] = {"completed": True}
        else:
            text = candidate.candidate.removeprefix("a=")
            if not text.startswith("candidate:") or len(text.split()) < 8 or "\n" in text:
                raise InvalidSdpError("malformed ICE candidate")
            payload = {"candidate": text}
            if candidate.sdp_mid is not None:
                payload["sdpMid"] = candidate.sdp_mid
            if candidate.sdp_mline_index is not None:
                payload["sdpMLineIndex"] = candidate.sdp_mline_index
            if "sdpMid" not in payload and "sdpMLineIndex" not in payload:
                payload["sdpMLineIndex"] = 0
        try:
            await handle.trickle(payload)
        except JanusError as exc:
            raise InvalidSdpError(f"Janus refused the candidate: {exc.reason}") from exc

    async def subscribe(self, room_id: str, peer_id: str, track_id: str) -> None:
        room, peer = self._peer(room_id, peer_id)
        _, track = self._track(room_id, track_id)
        if track_id in peer.subscribed:
            return
        owner = next((p for p in room.peers.values() if p.feed == track.feed), None)
        if owner is not None and not owner.publisher_up.is_set():
            # Janus offers a feed's streams once its publisher's PeerConnection is up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(owner.publisher_up.wait(), self._session.timeout)
        stream = {"feed": track.feed, "mid": track.mid}
        async with peer.lock:
            try:
                if peer.subscriber is None:
                    handle = await self._session.attach(VIDEOROOM)
                    self._handles[handle.id] = (room_id, peer_id, "subscriber")
                    handle.on_event = lambda event: self._on_event(
                        room_id, peer_id, "subscriber", event
                    )
                    try:
                        await handle.message(
                            {
                                "request": "join",
                                "ptype": "subscriber",
                                "room": room.janus_room,
                                "streams": [stream],
                                "use_msid": False,
                            }
                        )
                    except JanusError:
                        self._handles.pop(handle.id, None)
                        await handle.detach()
                        raise
                    peer.subscriber = handle
                else:
                    await peer.subscriber.message({"request": "subscribe", "streams": [stream]})
            except JanusError as exc:
                if exc.code == E_NO_SUCH_FEED:
                    raise TrackNotFoundError(f"track {track_id!r} is not available") from exc
                raise
            peer.subscribed.add(track_id)

    async def unsubscribe(self, room_id: str, peer_id: str, track_id: str) -> None:
        room, peer = self._peer(room_id, peer_id)
        _, track = self._track(room_id, track_id)
        if track_id not in peer.subscribed or peer.subscriber is None:
            return
        async with peer.lock:
            with contextlib.suppress(JanusError):  # a feed that left is already gone
                await peer.subscriber.message(
                    {"request": "unsubscribe", "streams": [{"feed": track.feed, "mid": track.mid}]}
                )
            peer.subscribed.discard(track_id)

    async def set_track_muted(self, room_id: str, track_id: str, muted: bool) -> None:
        room, track = self._track(room_id, track_id)
        assert self._control is not None
        await self._control.request(
            self._admin(
                {
                    "request": "moderate",
                    "room": room.janus_room,
                    "id": track.feed,
                    "mid": track.mid,
                    "mute": muted,
                }
            )
        )
        if track.info.muted != muted:
            track.info = replace(track.info, muted=muted)
            await self._emit(room, TrackMuted(room_id, track_id, muted))

    async def close_peer(self, room_id: str, peer_id: str) -> None:
        room = self._rooms.get(room_id)
        peer = room.peers.pop(peer_id, None) if room else None
        if room is None or peer is None:
            return
        for track_id in list(peer.tracks.values()):
            track = room.tracks.get(track_id)
            if track is not None:
                await self._end_track(room, track, "peer_left")
        for handle in (peer.subscriber, peer.publisher):
            if handle is not None:
                self._handles.pop(handle.id, None)
                if handle is peer.publisher:
                    # "unpublish" first: Janus re-offers to subscribers only while the publisher
                    # is still in the room (their sections turn inactive, ending the tracks);
                    # after "leave" it skips that update and subscribers keep dead tracks.
                    for request in ("unpublish", "leave"):
                        if request == "unpublish" and not peer.tracks:
                            continue
                        with contextlib.suppress(JanusError, TimeoutError, ConnectionError):
                            await handle.message({"request": request})
                await handle.detach()
        if peer.state != "closed":
            peer.state = "closed"
            await self._emit(room, PeerStateChanged(room_id, peer_id, "closed"))

    # -- Janus events -------------------------------------------------------------------------

    async def _on_event(self, room_id: str, peer_id: str, role: str, event: dict[str, Any]) -> None:
        room = self._rooms.get(room_id)
        peer = room.peers.get(peer_id) if room else None
        if room is None or peer is None:
            return
        kind = event.get("janus")
        if kind == "trickle":
            candidate = event.get("candidate", {})
            if candidate.get("completed"):
                ice = IceCandidate("", None, None, role=role)  # type: ignore[call-arg]
            else:
                ice = IceCandidate(
                    str(candidate.get("candidate", "")),
                    candidate.get("sdpMid"),
                    candidate.get("sdpMLineIndex"),
                    role=role,  # type: ignore[call-arg]
                )
            await self._emit(room, PeerSignal(room_id, peer_id, candidate=ice))
        elif kind == "webrtcup":
            peer.up[role] = True
            if role == "publisher":
                peer.publisher_up.set()
            await self._set_state(room, peer)
        elif kind == "hangup":
            peer.up[role] = False
            if role == "publisher":
                peer.publisher_up.clear()
                for track_id in list(peer.tracks.values()):
                    track = room.tracks.get(track_id)
                    if track is not None:
                        await self._end_track(room, track, "publisher_gone")
                peer.tracks.clear()
            await self._set_state(room, peer)
        elif kind == "event" and role == "subscriber":
            jsep = event.get("jsep")
            if jsep and jsep.get("type") == "offer":
                streams = event.get("plugindata", {}).get("data", {}).get("streams") or []
                offer = SessionDescription("offer", _label_tracks(room, jsep["sdp"], streams))
                await self._emit(room, PeerSignal(room_id, peer_id, description=offer))

    async def _set_state(self, room: _Room, peer: _Peer) -> None:
        state = "connected" if any(peer.up.values()) else "disconnected"
        if state != peer.state:
            peer.state = state
            await self._emit(room, PeerStateChanged(room.room_id, peer.peer_id, state))

    # -- forwarded media ----------------------------------------------------------------------

    async def _ensure_forward(self, room: _Room, track: _Track) -> RtpForward:
        if track.forward is not None:
            return track.forward
        forward = RtpForward(track.info.kind)
        port = await forward.open(self.forward_host)
        assert self._control is not None
        try:
            data = await self._control.request(
                self._admin(
                    {
                        "request": "rtp_forward",
                        "room": room.janus_room,
                        "publisher_id": track.feed,
                        "host": self.forward_host,
                        "host_family": "ipv4",
                        "streams": [{"mid": track.mid, "port": port}],
                    }
                )
            )
        except JanusError:
            forward.close()
            raise
        streams = data.get("forwarders") or data.get("streams") or []
        if streams:
            forward.stream_id = int(streams[0].get("stream_id", 0)) or None
        track.forward = forward
        # A recording or tap starts on a keyframe: ask the publisher for one.
        owner = next((p for p in room.peers.values() if p.feed == track.feed), None)
        if owner is not None and track.info.kind == "video":
            with contextlib.suppress(JanusError, TimeoutError):
                await owner.publisher.message({"request": "configure", "keyframe": True})
        return forward

    def _stop_forward(self, room: _Room, track: _Track) -> None:
        forward, track.forward = track.forward, None
        if track.decoder is not None:
            track.decoder.end()
            track.decoder = None
        for recorder in list(track.recorders):
            recorder.end()
        track.recorders.clear()
        if forward is None:
            return
        forward.close()
        if forward.stream_id is not None and self._control is not None:
            body = self._admin(
                {
                    "request": "stop_rtp_forward",
                    "room": room.janus_room,
                    "publisher_id": track.feed,
                    "stream_id": forward.stream_id,
                }
            )
            task = asyncio.create_task(self._control.request(body))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _maybe_stop_forward(self, room: _Room, track: _Track) -> None:
        if track.decoder is None and not track.recorders and track.forward is not None:
            self._stop_forward(room, track)

    async def audio_tap(
        self, room_id: str, track_id: str, *, sample_rate: int = 16000, channels: int = 1
    ) -> AsyncIterator[AudioFrame]:
        room, track = self._track(room_id, track_id)
        if track.info.kind != "audio":
            raise TrackNotFoundError(f"track {track_id!r} is not an audio track")
        if channels not in (1, 2) or not 8000 <= sample_rate <= 48000:
            raise ValueError("channels must be 1 or 2 and sample_rate 8000..48000")
        if track.decoder is None:
            forward = await self._ensure_forward(room, track)
            track.decoder = AudioDecoder()
            forward.listeners.add(track.decoder.on_packet)
        decoder = track.decoder
        try:
            async for timestamp, pcm, _ in decoder.frames(sample_rate, channels):
                yield AudioFrame(pcm, sample_rate, channels, timestamp)
        finally:
            if not decoder.queues and track.decoder is decoder:
                if track.forward is not None:
                    track.forward.listeners.discard(decoder.on_packet)
                track.decoder = None
                self._maybe_stop_forward(room, track)

    async def record(
        self, room_id: str, track_ids: Sequence[str], *, format: RecordingFormat = "webm"
    ) -> AsyncIterator[bytes]:
        if format not in ("webm", "ogg"):
            raise ValueError(f"unsupported recording format {format!r}")
        room = self._room(room_id)
        tracks = [self._track(room_id, track_id)[1] for track_id in track_ids]
        if not tracks:
            raise TrackNotFoundError("no tracks to record")
        if format == "ogg" and any(t.info.kind == "video" for t in tracks):
            raise ValueError("ogg recordings hold audio only; use webm for video")
        recorders: list[tuple[_Track, TrackRecorder]] = []
        try:
            for track in tracks:
                recorder = TrackRecorder(track.info.kind, track.info.codec)
                forward = await self._ensure_forward(room, track)
                forward.listeners.add(recorder.on_packet)
                track.recorders.add(recorder)
                recorders.append((track, recorder))
            async for chunk in mux_tracks([r for _, r in recorders], format):
                yield chunk
        finally:
            for track, recorder in recorders:
                if track.forward is not None:
                    track.forward.listeners.discard(recorder.on_packet)
                track.recorders.discard(recorder)
                if room.tracks.get(track.info.track_id) is track:
                    self._maybe_stop_forward(room, track)

    # -- statistics ---------------------------------------------------------------------------

    async def stats(self, room_id: str) -> Sequence[TrackStats]:
        room = self._room(room_id)
        now = datetime.now(UTC)
        samples: list[TrackStats] = []
        for peer in list(room.peers.values()):
            media = await self._handle_media(peer.publisher)
            for mid, track_id in list(peer.tracks.items()):
                samples.append(_track_stats(peer.peer_id, track_id, "inbound", media.get(mid), now))
            if peer.subscriber is not None and peer.subscribed:
                sub_media = await self._handle_media(peer.subscriber)
                by_source = {
                    (m.get("feed_id"), str(m.get("feed_mid"))): m for m in sub_media.values()
                }
                for track_id in list(peer.subscribed):
                    track = room.tracks.get(track_id)
                    if track is None:
                        continue
                    entry = by_source.get((track.feed, track.mid))
                    samples.append(_track_stats(peer.peer_id, track_id, "outbound", entry, now))
        return samples

    async def _handle_media(self, handle: JanusHandle) -> dict[str, dict[str, Any]]:
        """mid -> the handle's media entry from the Admin API ``handle_info`` (with the
        VideoRoom's own view of the stream merged in), or {} without an Admin API."""
        try:
            info = (await self._session.admin("handle_info", handle.id)).get("info", {})
        except (JanusError, OSError, TimeoutError, ValueError):
            return {}
        media: dict[str, dict[str, Any]] = {}
        for entry in (
            info.get("webrtc", {}).get("media", {}).values()
            if isinstance(info.get("webrtc", {}).get("media"), dict)
            else info.get("webrtc", {}).get("media", [])
        ):
            media[str(entry.get("mid"))] = dict(entry)
        plugin = info.get("plugin_specific", {})
        for stream in plugin.get("streams", []) or plugin.get("media", []) or []:
            mid = str(stream.get("mid"))
            media.setdefault(mid, {})
            media[mid]["feed_id"] = stream.get("feed_id")
            media[mid]["feed_mid"] = stream.get("feed_mid")
        return media


def _label_tracks(room: _Room, sdp: str, streams: list[dict[str, Any]]) -> str:
    """Name each forwarded stream in Janus's offer after its classwire track: the section's
    ``a=msid`` becomes ``<publisher peer id> <track id>``, so the participant sees the same
    track ids as TrackPublished announced."""
    by_source = {(t.feed, t.mid): t for t in room.tracks.values()}
    labels: dict[str, str] = {}
    for stream in streams:
        track = by_source.get((stream.get("feed_id"), str(stream.get("feed_mid"))))
        if track is not None:
            labels[str(stream.get("mid"))] = f"{track.info.peer_id} {track.info.track_id}"
    lines = sdp.split("\r\n")
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out: list[str] = list(sections[0])
    for section in sections[1:]:
        mid = next((line[6:] for line in section if line.startswith("a=mid:")), None)
        label = labels.get(mid or "")
        if label is None:
            out.extend(section)
            continue
        kept = [line for line in section if not line.startswith("a=msid:")]
        kept = [line for line in kept if not (line.startswith("a=ssrc:") and " msid:" in line)]
        at = next((i for i, line in enumerate(kept) if line.startswith("a=mid:")), len(kept) - 1)
        kept.insert(at + 1, f"a=msid:{label}")
        out.extend(kept)
    return "\r\n".join(out)


def _track_stats(
    peer_id: str, track_id: str, direction: str, media: dict[str, Any] | None, now: datetime
) -> TrackStats:
    if not media:
        return TrackStats(peer_id, track_id, direction, now)  # type: ignore[arg-type]
    rtcp = (media.get("rtcp") or {}).get("main") or {}
    stats = (media.get("stats") or {}).get("in" if direction == "inbound" else "out") or {}
    bytes_lastsec = stats.get("bytes_lastsec")
    lost = rtcp.get("lost" if direction == "inbound" else "lost-by-remote", 0) or 0
    packets = stats.get("packets", 0) or 0
    jitter = rtcp.get("jitter-local" if direction == "inbound" else "jitter-remote")
    rtt = rtcp.get("rtt")
    return TrackStats(
        peer_id=peer_id,
        track_id=track_id,
        direction=direction,  # type: ignore[arg-type]
        timestamp=now,
        packets_lost=int(lost),
        fraction_lost=(lost / (packets + lost)) if packets + lost else 0.0,
        jitter_ms=float(jitter) if jitter is not None else None,
        round_trip_time_ms=float(rtt) if rtt is not None else None,
        bitrate_bps=float(bytes_lastsec) * 8 if bytes_lastsec is not None else None,
    )
