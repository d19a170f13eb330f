"""Provider interfaces and the value types a provider may know.

This module is the whole world a provider sees: it must stay free of gRPC, SQLAlchemy and server
internals, so that a plugin written against it keeps working while the server changes. Every
provider method that may wait is ``async``; construction (the factory a plugin registers) is
synchronous because pluggy does not await coroutines, and network set-up belongs in ``start()``.

Errors that are part of a contract (a missing blob, a malformed key, unknown room, bad SDP) derive
from :class:`ContractError`; the host passes them through unchanged. Anything else escaping a
provider is a provider fault and is reported as :class:`ProviderError`.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, Self, runtime_checkable

import structlog

__all__ = [
    "MAX_BUS_PAYLOAD_BYTES",
    "TRANSCRIPTION_SAMPLE_RATE",
    "AudioFrame",
    "BlobInfo",
    "BlobNotFoundError",
    "BlobStore",
    "ConfigError",
    "ContractError",
    "DeliveryResult",
    "DeliveryStatus",
    "Event",
    "EventBus",
    "EventHandler",
    "IceCandidate",
    "InstructorCandidate",
    "InvalidBlobKeyError",
    "InvalidChannelError",
    "InvalidSdpError",
    "LearningRecordStore",
    "LessonRequest",
    "MatchAssignment",
    "MatchExplanation",
    "MatchPlan",
    "MatchProblem",
    "Matcher",
    "MatchCandidate",
    "MatchStatus",
    "ConstraintCheck",
    "ScoreTerm",
    "StatementOutcome",
    "StatementResult",
    "DEFAULT_MATCH_WEIGHTS",
    "MATCH_TERMS",
    "MediaBackend",
    "MediaEvent",
    "MediaEventSink",
    "NotificationChannel",
    "NotificationMessage",
    "PeerNotFoundError",
    "PeerRole",
    "PeerSignal",
    "PeerStateChanged",
    "Provider",
    "ProviderContext",
    "ProviderError",
    "ProviderFactory",
    "ProviderKind",
    "RecordingFormat",
    "Register",
    "RegisterEventHandler",
    "RoomInfo",
    "RoomNotFoundError",
    "RoomOptions",
    "SessionDescription",
    "Subscription",
    "Summarizer",
    "Summary",
    "TimeInterval",
    "TrackInfo",
    "TrackMuted",
    "TrackNotFoundError",
    "TrackPublished",
    "TrackStats",
    "TrackUnpublished",
    "TranscriptSegment",
    "TranscriptionEngine",
    "TranscriptionStream",
    "UnsupportedLanguageError",
    "Workflow",
    "WorkflowContext",
    "matches_event_type",
    "validate_blob_key",
    "validate_bus_payload",
    "validate_channel",
]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ContractError(Exception):
    """Base of the errors a provider raises on purpose, as its interface documents.

    The host re-raises these unchanged; callers map them to API errors (NOT_FOUND,
    INVALID_ARGUMENT, ...). Any other exception from a provider is a fault.
    """


class ConfigError(ValueError):
    """A configuration value is wrong. ``key`` names it, dotted, as the config file spells it.

    It is a ValueError so that the server's configuration loader, which stops with exit status 2
    and names the key, treats plugin and provider configuration like any other setting.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class ProviderError(Exception):
    """A provider failed unexpectedly. The original exception is chained as ``__cause__``."""

    def __init__(self, kind: str, name: str, operation: str, message: str = "") -> None:
        detail = f": {message}" if message else ""
        super().__init__(f"{kind} provider {name!r} failed in {operation}{detail}")
        self.kind = kind
        self.name = name
        self.operation = operation


class BlobNotFoundError(ContractError, LookupError):
    """No blob is stored under ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no blob under key {key!r}")
        self.key = key


class InvalidBlobKeyError(ContractError, ValueError):
    """A blob key is not a safe relative path."""


class InvalidChannelError(ContractError, ValueError):
    """An event-bus channel name is not portable across buses."""


class RoomNotFoundError(ContractError, LookupError):
    """The media backend has no room with this id."""


class PeerNotFoundError(ContractError, LookupError):
    """The room has no peer with this id."""


class TrackNotFoundError(ContractError, LookupError):
    """The room has no track with this id."""


class InvalidSdpError(ContractError, ValueError):
    """An SDP offer or ICE candidate is malformed or asks for something unsupported."""


class UnsupportedLanguageError(ContractError, ValueError):
    """The transcription engine (or summarizer) has no model for this language."""


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


class ProviderKind(enum.StrEnum):
    """The kinds of provider a plugin can register. The value is the config key suffix."""

    BLOB_STORE = "blob_store"
    EVENT_BUS = "event_bus"
    MEDIA_BACKEND = "media_backend"
    TRANSCRIPTION_ENGINE = "transcription_engine"
    NOTIFICATION_CHANNEL = "notification_channel"
    MATCHER = "matcher"
    SUMMARIZER = "summarizer"
    WORKFLOW = "workflow"
    LEARNING_RECORD_STORE = "learning_record_store"


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a provider factory gets to build its provider.

    :ivar data_dir: the server's data directory; a provider keeps its files under a subdirectory.
    :ivar database_url: the server's database URL (SQLAlchemy form, e.g.
        ``postgresql+asyncpg://...`` or ``sqlite+aiosqlite:///...``).
    :ivar options: this provider's own options from configuration, read-only.
    :ivar logger: a structlog logger already bound with the provider's kind and name.
    :ivar name: the name the provider was registered and selected under.
    :ivar kind: the provider kind.
    """

    data_dir: Path
    database_url: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    logger: Any = field(default_factory=lambda: structlog.get_logger("classwire.providers"))
    name: str = ""
    kind: ProviderKind | None = None


ProviderFactory = Callable[[ProviderContext], Any]
"""Builds a provider. Synchronous: no I/O here, do it in ``Provider.start``."""


class Register(Protocol):
    """The callback passed to every ``classwire_register_<kind>s`` hook."""

    def __call__(self, name: str, factory: ProviderFactory, *, description: str = "") -> None: ...


EventHandler = Callable[["Event"], Awaitable[None]]


class RegisterEventHandler(Protocol):
    """The callback passed to ``classwire_register_event_handlers``."""

    def __call__(
        self,
        name: str,
        handler: EventHandler,
        *,
        event_types: Sequence[str] | None = None,
    ) -> None: ...


class Provider(abc.ABC):  # noqa: B024 - a base with optional hooks, not an interface itself
    """Lifecycle shared by all providers: ``start`` after creation, ``close`` at shutdown.

    Both default to doing nothing and must be safe to call more than once.
    """

    async def start(self) -> None:  # noqa: B027 - optional: most providers need no start-up
        """Connect, open files, spawn background tasks."""

    async def close(self) -> None:  # noqa: B027 - optional, like start
        """Release everything ``start`` acquired; further calls may raise."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --------------------------------------------------------------------------------------------
# Blob storage
# --------------------------------------------------------------------------------------------

_MAX_BLOB_KEY = 1024


def validate_blob_key(key: str) -> str:
    """Return ``key`` if it is a safe relative, slash-separated path, else raise.

    Refused: empty keys, absolute paths, backslashes, ``.``/``..``/empty segments, a trailing
    slash, control characters, and keys over 1024 bytes. Tenant prefixes are the caller's
    business; the store only guarantees that a key cannot escape its root.

    :raises InvalidBlobKeyError: (a ValueError) when the key is not acceptable.
    """
    if not isinstance(key, str) or not key:
        raise InvalidBlobKeyError(f"blob key must be a non-empty string, got {key!r}")
    if len(key.encode()) > _MAX_BLOB_KEY:
        raise InvalidBlobKeyError(f"blob key is longer than {_MAX_BLOB_KEY} bytes")
    if "\\" in key:
        raise InvalidBlobKeyError(f"blob key {key!r} contains a backslash")
    if key.startswith("/"):
        raise InvalidBlobKeyError(f"blob key {key!r} is absolute")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidBlobKeyError(f"blob key {key!r} contains a control character")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidBlobKeyError(f"blob key {key!r} has an empty, '.' or '..' segment")
    return key


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What a blob store knows about one blob."""

    key: str
    size: int
    modified_at: datetime | None = None


class BlobStore(Provider):
    """Binary objects under slash-separated keys (recordings, exports, report attachments).

    Contract:

    - ``put`` is atomic: readers see the old content or the complete new content, never a part;
      a ``put`` that fails (including a failing chunk iterator) leaves the old content in place.
    - Keys are validated with :func:`validate_blob_key` (``InvalidBlobKeyError``, a ValueError).
    - Missing keys raise :class:`BlobNotFoundError` (a LookupError) from ``open``, ``read`` and
      ``stat``; ``delete`` of a missing key returns False.
    - A read range past the end is truncated, never an error.
    """

    @abc.abstractmethod
    async def put(self, key: str, data: bytes | AsyncIterable[bytes]) -> BlobInfo:
        """Store ``data`` (all bytes at once or an async iterator of chunks) under ``key``."""

    @abc.abstractmethod
    async def open(
        self, key: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Return an async iterator over the blob's bytes from ``offset``, ``length`` bytes long
        (to the end when None), in chunks. Raises BlobNotFoundError here, before iteration."""

    @abc.abstractmethod
    async def stat(self, key: str) -> BlobInfo:
        """Size (and modification time where known) of the blob under ``key``."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the blob; True if it existed. Idempotent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        """Blobs whose key starts with ``prefix`` (a plain string prefix, not a directory),
        sorted by key. Implement as an ``async def`` generator."""

    async def read(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """Read a whole blob (or a range) into memory. For small blobs only."""
        parts = [chunk async for chunk in await self.open(key, offset=offset, length=length)]
        return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Event bus
# --------------------------------------------------------------------------------------------

MAX_BUS_PAYLOAD_BYTES = 7000
"""Largest payload every bus accepts. Set by PostgreSQL's NOTIFY limit (8000 bytes of text)
with room for framing; buses reject anything larger with ValueError."""

_CHANNEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")


def validate_channel(channel: str) -> str:
    """Return ``channel`` if it is portable across buses, else raise InvalidChannelError.

    1 to 63 characters (PostgreSQL's identifier length) of ASCII letters, digits, ``_``, ``.``
    and ``-``, starting with a letter or digit. No wildcards: ``*`` and ``>`` mean something on
    NATS.
    """
    if not isinstance(channel, str) or not _CHANNEL_RE.fullmatch(channel):
        raise InvalidChannelError(
            f"bus channel must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,62}}, got {channel!r}"
        )
    return channel


def validate_bus_payload(payload: bytes | bytearray | memoryview) -> bytes:
    """Return the payload as bytes if it is bytes-like and at most 7,000 bytes long.

    :raises TypeError: for a ``str`` or another non-bytes value.
    :raises ValueError: when longer than :data:`MAX_BUS_PAYLOAD_BYTES`.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"bus payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload)
    if len(data) > MAX_BUS_PAYLOAD_BYTES:
        raise ValueError(f"bus payload is {len(data)} bytes; the limit is {MAX_BUS_PAYLOAD_BYTES}")
    return data


class Subscription(abc.ABC):
    """One subscriber's view of one channel: an async iterator of payloads.

    Use it as an async context manager; it is listening when ``__aenter__`` returns, so anything
    published afterwards reaches it. After ``close`` (or leaving the ``async with``, or the bus
    closing), iteration ends.
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin listening. Called by ``__aenter__``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop listening; pending iteration ends. Idempotent."""

    @abc.abstractmethod
    async def __anext__(self) -> bytes: ...

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class EventBus(Provider):
    """Wakes other tasks and replicas up: "something happened on this channel".

    Semantics are at most once: a payload may be lost (a dropped connection, a slow subscriber
    whose buffer overflowed), never duplicated. The durable event log lives in the database, so a
    consumer treats a payload as a hint to read the log and also polls it on a timer.

    Every subscriber of a channel gets every payload published to it while it listens, in publish
    order for one publisher; channels are isolated; payloads are at most 7,000 bytes
    (:data:`MAX_BUS_PAYLOAD_BYTES`); channel names follow :func:`validate_channel`.
    """

    @abc.abstractmethod
    async def publish(self, channel: str, payload: bytes) -> None:
        """Send ``payload`` to the channel's current subscribers (all replicas for a shared bus).

        :raises ValueError: payload over the limit or bad channel name.
        :raises TypeError: payload is not bytes.
        """

    @abc.abstractmethod
    def subscribe(self, channel: str) -> Subscription:
        """Return a subscription to enter with ``async with``. Bad channel names raise here."""


# --------------------------------------------------------------------------------------------
# Media backend
# --------------------------------------------------------------------------------------------

TrackKind = Literal["audio", "video"]
TrackSource = Literal["microphone", "camera", "screen", "screen_audio", "unknown"]
PeerRole = Literal["publisher", "subscriber"]
"""Each participant has two peer connections: on the ``publisher`` one the participant offers
and the backend answers; on the ``subscriber`` one the backend offers (through a PeerSignal) and
the participant answers."""


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """An SDP offer or answer."""

    type: Literal["offer", "answer"]
    sdp: str


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """A trickled ICE candidate; ``candidate == ""`` means end of candidates.

    :ivar role: which of the participant's two peer connections the candidate belongs to.
    """

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    role: PeerRole = "publisher"


@dataclass(frozen=True, slots=True)
class RoomOptions:
    """How a room is set up. ``extra`` carries backend-specific settings."""

    max_participants: int | None = None
    audio_codecs: Sequence[str] = ("opus",)
    video_codecs: Sequence[str] = ("VP8",)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room_id: str
    peer_ids: Sequence[str] = ()
    tracks: Sequence[TrackInfo] = ()


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """A published track. Codecs are strings (AIP-126), e.g. ``"opus"``, ``"VP8"``.

    :ivar client_track_id: the publisher's own id for the track, the track id of the SDP
        ``a=msid:<stream> <track>`` line (``MediaStreamTrack.id``); the server matches it with
        the client's ``TrackPublication.client_track_id``.
    """

    track_id: str
    peer_id: str
    kind: TrackKind
    source: TrackSource = "unknown"
    codec: str = ""
    muted: bool = False
    client_track_id: str = ""


@dataclass(frozen=True, slots=True)
class PeerSignal:
    """Something the backend needs sent to a participant: a server offer (renegotiation when
    tracks come and go) or a server ICE candidate.

    ``description`` is always a server OFFER for the participant's subscriber connection;
    ``candidate.role`` names the connection a candidate belongs to.
    """

    room_id: str
    peer_id: str
    description: SessionDescription | None = None
    candidate: IceCandidate | None = None


@dataclass(frozen=True, slots=True)
class TrackPublished:
    room_id: str
    track: TrackInfo


@dataclass(frozen=True, slots=True)
class TrackUnpublished:
    room_id: str
    track_id: str
    peer_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TrackMuted:
    room_id: str
    track_id: str
    muted: bool


@dataclass(frozen=True, slots=True)
class PeerStateChanged:
    """ICE/DTLS connection state: ``new``, ``connecting``, ``connected``, ``disconnected``,
    ``failed`` or ``closed`` (the WebRTC RTCPeerConnectionState values)."""

    room_id: str
    peer_id: str
    state: str


MediaEvent = PeerSignal | TrackPublished | TrackUnpublished | TrackMuted | PeerStateChanged
MediaEventSink = Callable[[MediaEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Decoded audio: interleaved signed 16-bit little-endian PCM.

    :ivar timestamp: seconds since the track started, for aligning captions and talk time.
    :ivar level_dbov: the RFC 6464 audio level when the sender provided one (0 loudest,
        -127 silence), else None.
    """

    pcm: bytes
    sample_rate: int
    channels: int
    timestamp: float
    level_dbov: float | None = None


@dataclass(frozen=True, slots=True)
class TrackStats:
    """One sample of RTCP-derived quality for a track as a peer sends or receives it."""

    peer_id: str
    track_id: str
    direction: Literal["inbound", "outbound"]
    timestamp: datetime
    packets_lost: int = 0
    fraction_lost: float = 0.0
    jitter_ms: float | None = None
    round_trip_time_ms: float | None = None
    bitrate_bps: float | None = None


RecordingFormat = Literal["webm", "ogg"]


class MediaBackend(Provider):
    """The media plane behind one interface: an in-process SFU, a Janus cluster, ...

    Signaling travels through the server; the backend never talks to participants directly.
    What it needs sent to them, and what happens to tracks, it reports to the ``events`` sink
    given to :meth:`create_room`. Bad SDP or candidates raise :class:`InvalidSdpError` and affect
    only that peer.

    Each participant (peer id = participant id) has two peer connections (:data:`PeerRole`):
    the publisher connection, which the participant offers (:meth:`publish`), and the subscriber
    connection, which the backend offers through a :class:`PeerSignal` and the participant
    answers (:meth:`set_remote_description`). The room id is the session id of the room the
    participant is in (the main room or a breakout).
    """

    @abc.abstractmethod
    async def create_room(
        self, room_id: str, options: RoomOptions, events: MediaEventSink
    ) -> RoomInfo:
        """Create (or return the existing) room. Idempotent for the same id."""

    @abc.abstractmethod
    async def close_room(self, room_id: str) -> None:
        """Close all peers, end recordings and taps, forget the room. Idempotent."""

    @abc.abstractmethod
    async def room_info(self, room_id: str) -> RoomInfo:
        """Current peers and tracks. Raises RoomNotFoundError."""

    @abc.abstractmethod
    async def add_peer(self, room_id: str, peer_id: str) -> None:
        """Register a participant, without media yet. Idempotent. Raises RoomNotFoundError."""

    @abc.abstractmethod
    async def publish(
        self, room_id: str, peer_id: str, offer: SessionDescription
    ) -> SessionDescription:
        """Take the participant's publisher-connection offer (the first one or a
        renegotiation) and return the answer.

        New tracks in the offer are reported as TrackPublished (with ``client_track_id``),
        removed ones as TrackUnpublished. Malformed SDP or no supported codec raise
        InvalidSdpError; the peer keeps its previous state and the room goes on. Raises
        PeerNotFoundError and RoomNotFoundError."""

    @abc.abstractmethod
    async def set_remote_description(
        self, room_id: str, peer_id: str, description: SessionDescription
    ) -> None:
        """Apply the participant's answer to the latest subscriber offer sent through a
        PeerSignal. Raises PeerNotFoundError and InvalidSdpError."""

    @abc.abstractmethod
    async def add_ice_candidate(self, room_id: str, peer_id: str, candidate: IceCandidate) -> None:
        """Trickle a participant's ICE candidate to the connection ``candidate.role`` names;
        ``""`` ends the candidates. Raises PeerNotFoundError and InvalidSdpError."""

    @abc.abstractmethod
    async def subscribe(self, room_id: str, peer_id: str, track_id: str) -> None:
        """Forward ``track_id`` to ``peer_id``. The backend (re)offers the subscriber
        connection through a PeerSignal, possibly one offer for several quick changes. A new
        video subscriber gets a keyframe (the backend asks the publisher with a PLI). Raises
        PeerNotFoundError and TrackNotFoundError."""

    @abc.abstractmethod
    async def unsubscribe(self, room_id: str, peer_id: str, track_id: str) -> None:
        """Stop forwarding ``track_id`` to ``peer_id`` (renegotiates like ``subscribe``).
        Raises PeerNotFoundError and TrackNotFoundError."""

    @abc.abstractmethod
    async def set_track_muted(self, room_id: str, track_id: str, muted: bool) -> None:
        """Server-side mute: stop (or resume) forwarding a published track to everyone."""

    @abc.abstractmethod
    async def close_peer(self, room_id: str, peer_id: str) -> None:
        """Disconnect a participant; its tracks end for subscribers (TrackUnpublished with
        reason ``peer_left``). Idempotent."""

    @abc.abstractmethod
    def audio_tap(
        self, room_id: str, track_id: str, *, sample_rate: int = 16000, channels: int = 1
    ) -> AsyncIterator[AudioFrame]:
        """Decoded audio of one published track, resampled as asked; decoded once per track
        however many taps exist. Ends when the track ends. Implement as an async generator."""

    @abc.abstractmethod
    def record(
        self, room_id: str, track_ids: Sequence[str], *, format: RecordingFormat = "webm"
    ) -> AsyncIterator[bytes]:
        """A playable container of the given tracks as a byte stream, suitable for
        ``BlobStore.put``: encoded packets remuxed, not re-encoded, where the codec allows.
        Ends (finalized) when the tracks end or the iterator is closed."""

    @abc.abstractmethod
    async def stats(self, room_id: str) -> Sequence[TrackStats]:
        """Current quality samples for every peer's tracks in the room."""


# --------------------------------------------------------------------------------------------
# Transcription
# --------------------------------------------------------------------------------------------

TRANSCRIPTION_SAMPLE_RATE = 16000
"""Engines receive 16 kHz mono s16le PCM; the server resamples anything else before feeding."""


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """A recognized stretch of speech. Times are seconds since the stream's first sample.

    A ``partial`` segment may later be replaced by a ``final`` one covering the same time.
    ``confidence`` is in [0, 1]; ``speaker`` is filled by the server (one track, one speaker).
    """

    text: str
    start: float
    end: float
    final: bool
    confidence: float = 1.0
    language: str = ""
    speaker: str | None = None


class TranscriptionStream(abc.ABC):
    """One streaming recognition: ``feed`` PCM, iterate segments, ``close`` to flush."""

    @abc.abstractmethod
    async def feed(self, pcm: bytes) -> None:
        """Add 16 kHz mono s16le PCM; any length, including odd byte counts split across calls.

        :raises RuntimeError: after ``close``.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """No more audio: flush the last final segments, then end iteration. Idempotent."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[TranscriptSegment]: ...


class TranscriptionEngine(Provider):
    """A streaming speech recognizer; one stream per published audio track."""

    @abc.abstractmethod
    def languages(self) -> Sequence[str]:
        """BCP 47 language tags this engine has models for, e.g. ``("en-US",)``."""

    @abc.abstractmethod
    async def open_stream(
        self, language: str, *, sample_rate: int = TRANSCRIPTION_SAMPLE_RATE
    ) -> TranscriptionStream:
        """Start recognizing. Raises UnsupportedLanguageError for a language it lacks and
        ValueError for any sample rate other than 16000."""


# --------------------------------------------------------------------------------------------
# Notifications
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotificationMessage:
    """One notice to one recipient.

    :ivar recipient: address in the channel's own form (an e-mail address, a phone number,
        a chat id).
    :ivar idempotency_key: the same key means the same notice: a channel that can (an HTTP
        gateway's Idempotency-Key header, an e-mail Message-ID) passes it on, so that a retry
        after a crash is not a second notice.
    """

    recipient: str
    subject: str
    text: str
    idempotency_key: str
    html: str | None = None
    recipient_name: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class DeliveryStatus(enum.StrEnum):
    SENT = "sent"
    """Handed to the next hop (SMTP server accepted it, gateway returned 2xx)."""
    REJECTED = "rejected"
    """Permanent failure (bad address, refused content): do not retry."""
    FAILED = "failed"
    """Temporary failure: retry later with the same idempotency key."""


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    status: DeliveryStatus
    provider_message_id: str | None = None
    detail: str = ""
    retry_after_seconds: float | None = None


class NotificationChannel(Provider):
    """Sends notices: e-mail, SMS or chat gateways.

    Delivery problems are results, not exceptions: a bad address is REJECTED, an unreachable
    server FAILED (retry). Exceptions are reserved for bugs.
    """

    @abc.abstractmethod
    async def send(self, message: NotificationMessage) -> DeliveryResult: ...


# --------------------------------------------------------------------------------------------
# Learning Record Stores (xAPI)
# --------------------------------------------------------------------------------------------


class StatementOutcome(enum.StrEnum):
    STORED = "stored"
    """The LRS stored the statement now."""
    ALREADY_STORED = "already_stored"
    """The LRS already held a statement with this id (a retry): nothing was stored twice."""
    REJECTED = "rejected"
    """Permanent: the LRS refused the statement (invalid, or a different statement holds the
    id). Sending it again changes nothing."""
    FAILED = "failed"
    """Temporary: the LRS did not answer or could not take it now. Send it again later."""


@dataclass(frozen=True, slots=True)
class StatementResult:
    """What became of one statement. ``reason`` is UPPER_SNAKE_CASE for REJECTED and FAILED
    (``LRS_REJECTED``, ``LRS_CONFLICT``, ``LRS_UNAVAILABLE``, ``LRS_UNAUTHORIZED``)."""

    statement_id: str
    outcome: StatementOutcome
    reason: str = ""
    detail: str = ""


class LearningRecordStore(Provider):
    """Stores xAPI 1.0.3 statements in a Learning Record Store.

    Statements arrive as JSON objects that always carry an ``id``; the host derives the ids from
    the events, so the same statement is always sent with the same id and a retry is harmless.
    Delivery problems are results, not exceptions: an unreachable LRS gives FAILED results (the
    host retries later), a refused statement REJECTED. Exceptions are reserved for bugs.

    :ivar max_batch: the most statements the host passes to one ``store`` call.
    """

    max_batch: int = 100

    @abc.abstractmethod
    async def store(self, statements: Sequence[Mapping[str, Any]]) -> Sequence[StatementResult]:
        """Store ``statements``; one result per statement, in the same order."""

    @abc.abstractmethod
    async def get(self, statement_id: str) -> Mapping[str, Any] | None:
        """The stored statement with this id as the LRS returns it, or None when it has none.

        :raises ProviderError: only when the LRS cannot be read (not for a missing statement).
        """


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeInterval:
    """A half-open interval [start, end) of timezone-aware datetimes."""

    start: datetime
    end: datetime

    def overlaps(self, other: TimeInterval) -> bool:
        return self.start < other.end and other.start < self.end

    def contains(self, other: TimeInterval) -> bool:
        return self.start <= other.start and other.end <= self.end


MATCH_TERMS = ("continuity", "language", "preference", "load_balance")
"""The built-in soft terms, each valued in [0, 1] per (lesson, instructor) pair."""

DEFAULT_MATCH_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"continuity": 4.0, "language": 2.0, "preference": 2.0, "load_balance": 1.0, "unassigned": 10.0}
)
"""Weights used for a term that ``MatchProblem.weights`` leaves out. ``unassigned`` is the
penalty per lesson left without an instructor; it exceeds the other weights' sum so that staffing
one more lesson always beats a better score elsewhere. ``balance`` is accepted as an alias of
``load_balance``."""


@dataclass(frozen=True, slots=True)
class LessonRequest:
    """A lesson that needs an instructor.

    :ivar language: the language the lesson is taught in, ideally (BCP 47; ``en`` matches
        ``en-GB``).
    :ivar other_languages: further languages the learners understand (half the language value).
    :ivar previous_instructor_id: the learners' instructor for this subject so far (continuity).
    :ivar lesson_history: lessons each other instructor taught these learners in this subject;
        a non-empty history earns half the continuity value.
    :ivar preferred_instructor_ids: instructors the learners prefer (the preference term).
    :ivar excluded_instructor_ids: instructors never to assign (a hard constraint).
    """

    booking_id: str
    learner_ids: Sequence[str]
    interval: TimeInterval
    subject: str
    level: str = ""
    language: str = ""
    previous_instructor_id: str | None = None
    preferred_instructor_ids: Sequence[str] = ()
    other_languages: Sequence[str] = ()
    lesson_history: Mapping[str, int] = field(default_factory=dict)
    excluded_instructor_ids: Sequence[str] = ()

    @property
    def minutes(self) -> int:
        return int((self.interval.end - self.interval.start).total_seconds() // 60)


@dataclass(frozen=True, slots=True)
class InstructorCandidate:
    """An instructor as the matcher sees them; ``busy`` are existing commitments.

    :ivar load_limit_minutes: most minutes of teaching in the problem's period (a week),
        counting ``current_load_minutes``; None for no limit.
    :ivar current_load_minutes: minutes already committed in that period.
    :ivar load_target_minutes: the load the ``load_balance`` term aims at; None: the limit, or
        else the available minutes.
    """

    instructor_id: str
    qualifications: frozenset[tuple[str, str]]
    """(subject, level) pairs; a level of ``""`` qualifies for every level of the subject."""
    available: Sequence[TimeInterval]
    busy: Sequence[TimeInterval] = ()
    languages: frozenset[str] = frozenset()
    load_limit_minutes: int | None = None
    current_load_minutes: int = 0
    load_target_minutes: int | None = None

    def qualifies(self, subject: str, level: str, level_order: Sequence[str] = ()) -> bool:
        """Whether the instructor teaches ``subject`` at ``level``. With ``level_order``
        (lowest first), a qualification at one level also covers every lower level."""
        rank = {name: i for i, name in enumerate(level_order)}
        for q_subject, q_level in self.qualifications:
            if q_subject != subject:
                continue
            if q_level in ("", level):
                return True
            if level in rank and q_level in rank and rank[level] <= rank[q_level]:
                return True
        return False


@dataclass(frozen=True, slots=True)
class MatchProblem:
    """Lessons to staff and the instructors to staff them with.

    ``weights`` names soft terms (``continuity``, ``language``, ``preference``, ``load_balance``)
    and the ``unassigned`` penalty; missing ones take :data:`DEFAULT_MATCH_WEIGHTS`, and a
    matcher ignores terms it does not know.

    :ivar level_order: level names, lowest first, when a higher qualification covers lower
        levels (``("basic", "intermediate", "advanced")``); empty: levels match exactly.
    :ivar max_alternatives: most ranked alternatives ``match`` returns.
    """

    lessons: Sequence[LessonRequest]
    instructors: Sequence[InstructorCandidate]
    weights: Mapping[str, float] = field(default_factory=dict)
    time_limit_seconds: float = 30.0
    level_order: Sequence[str] = ()
    max_alternatives: int = 5


class MatchStatus(enum.StrEnum):
    """How a bulk assignment ended."""

    OPTIMAL = "optimal"
    """Proven optimal: the objective equals the bound."""
    FEASIBLE = "feasible"
    """A plan that respects every hard constraint, not proven optimal."""
    INFEASIBLE = "infeasible"
    """No plan satisfies the hard constraints."""
    UNKNOWN = "unknown"
    """No plan found within the time limit."""


@dataclass(frozen=True, slots=True)
class ConstraintCheck:
    """A hard constraint checked for an instructor (``qualified``, ``not_excluded``,
    ``available``, ``no_overlap``, ``within_load_limit``), with details for people."""

    name: str
    satisfied: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ScoreTerm:
    """A soft term of a candidate's score: its contribution is ``weight * value``."""

    name: str
    weight: float
    value: float
    detail: str = ""

    @property
    def contribution(self) -> float:
        return self.weight * self.value


@dataclass(frozen=True, slots=True)
class MatchExplanation:
    """Why an instructor got (or no one got) a lesson, for people to read.

    ``constraints_met`` and ``score_terms`` (term -> contribution) are the short form;
    ``constraints`` and ``terms`` carry the details (weights, values, what was checked), and
    ``score`` is the sum of the contributions.
    """

    constraints_met: Sequence[str] = ()
    score_terms: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""
    constraints: Sequence[ConstraintCheck] = ()
    terms: Sequence[ScoreTerm] = ()
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class MatchCandidate:
    """An instructor the matcher considered: ``rank`` is 1-based among eligible candidates and
    0 for an ineligible one (whose explanation lists the failed constraints)."""

    instructor_id: str
    rank: int
    explanation: MatchExplanation


@dataclass(frozen=True, slots=True)
class MatchAssignment:
    """One lesson's outcome. ``alternatives`` (the next eligible instructors, best first) and
    ``ineligible`` are filled by ``Matcher.match``; bulk plans may leave them empty."""

    booking_id: str
    instructor_id: str | None
    explanation: MatchExplanation
    alternatives: Sequence[MatchCandidate] = ()
    ineligible: Sequence[MatchCandidate] = ()


@dataclass(frozen=True, slots=True)
class MatchPlan:
    """The answer for a whole problem: one assignment per lesson (``instructor_id`` None when
    no one qualifies), the objective (higher is better) and the best bound the matcher proved
    (equal to the objective when optimal, None when it proves nothing).

    The built-in matchers' objective is the sum of the assigned lessons' scores minus the
    ``unassigned`` penalty per lesson left without an instructor.
    """

    assignments: Sequence[MatchAssignment]
    objective: float
    bound: float | None = None
    optimal: bool = False
    status: MatchStatus | None = None
    """None when the matcher does not say; then ``optimal`` tells."""
    solve_seconds: float = 0.0

    @property
    def gap(self) -> float | None:
        """Relative gap ``(bound - objective) / max(1, |bound|)``; None without a bound."""
        if self.bound is None:
            return None
        return max(0.0, self.bound - self.objective) / max(1.0, abs(self.bound))


class Matcher(Provider):
    """Assigns instructors to lessons. Hard constraints are never broken: qualification,
    exclusions, availability (the lesson lies inside an available interval), no overlap with
    ``busy`` or with other assignments, and load limits. A lesson no one can take is reported
    unassigned with a reason; it never fails the whole plan."""

    @abc.abstractmethod
    async def match(self, lesson: LessonRequest, problem: MatchProblem) -> MatchAssignment:
        """Best instructor for one lesson among ``problem.instructors``."""

    @abc.abstractmethod
    async def assign(self, problem: MatchProblem) -> MatchPlan:
        """Assign every lesson of ``problem`` at once."""


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    text: str
    key_terms: Sequence[str] = ()
    language: str = ""


class Summarizer(Provider):
    """Turns a session's transcript into a short summary and its key terms."""

    @abc.abstractmethod
    async def summarize(
        self, segments: Sequence[TranscriptSegment], language: str, *, max_terms: int = 10
    ) -> Summary:
        """Summarize final segments (in time order). An empty transcript gives an empty text;
        at most ``max_terms`` key terms."""


# --------------------------------------------------------------------------------------------
# Events and workflows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """A committed event from the durable log, as plugins see it.

    :ivar id: unique, stable id; handlers deduplicate on it (delivery is at least once).
    :ivar type: dotted type name, e.g. ``session.ended``.
    :ivar sequence: position in the tenant's log, increasing.
    :ivar data: the event's fields in their JSON form.
    """

    id: str
    type: str
    tenant_id: str
    sequence: int
    occurred_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)
    session_id: str | None = None


def matches_event_type(patterns: Sequence[str] | None, event_type: str) -> bool:
    """Whether ``event_type`` is selected by ``patterns``: exact names or prefixes ending in
    ``.*`` (``session.*`` matches ``session.ended``, not ``session``). None or empty selects
    every type."""
    if not patterns:
        return True
    for pattern in patterns:
        if pattern == event_type or pattern == "*":
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


@runtime_checkable
class WorkflowContext(Protocol):
    """What a workflow may do. Every effect takes an idempotency key, so that handling the same
    event twice (delivery is at least once) has the effect once."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def settings(self) -> Mapping[str, Any]:
        """This workflow's per-tenant settings."""
        ...

    @property
    def logger(self) -> Any: ...

    async def emit(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        idempotency_key: str,
        session_id: str | None = None,
    ) -> None:
        """Append an event to the tenant's log."""
        ...

    async def notify(self, channel: str, message: NotificationMessage) -> DeliveryResult:
        """Send (through the outbox) a notice on a named notification channel."""
        ...

    async def schedule(
        self,
        at: datetime,
        event_type: str,
        data: Mapping[str, Any],
        *,
        idempotency_key: str,
    ) -> None:
        """Emit an event at ``at`` through a durable timer (survives restarts)."""
        ...


class Workflow(Provider):
    """Reacts to events of the types it names, through a WorkflowContext."""

    name: str = ""
    event_types: Sequence[str] = ()
    """Exact type names, or prefixes ending in ``.*`` (``session.*``)."""

    @abc.abstractmethod
    async def handle(self, event: Event, context: WorkflowContext) -> None: ...
