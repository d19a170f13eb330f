"""Every hook is documented and tested; each hook works end to end through the manager.

The in-test plugin below registers one small provider of every kind. The small providers are
real enough to pass their conformance suites, which checks the suites as much as the hooks.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from classwire.server.plugins import hookimpl, hookspecs
from classwire.server.plugins.manager import HOOK_FOR_KIND, PluginManager
from classwire.server.plugins.types import (
    AudioFrame,
    DeliveryResult,
    DeliveryStatus,
    Event,
    IceCandidate,
    InvalidSdpError,
    LessonRequest,
    MatchAssignment,
    Matcher,
    MatchExplanation,
    MatchPlan,
    MatchProblem,
    MediaBackend,
    MediaEventSink,
    NotificationChannel,
    NotificationMessage,
    PeerNotFoundError,
    ProviderKind,
    RecordingFormat,
    RoomInfo,
    RoomNotFoundError,
    RoomOptions,
    SessionDescription,
    Summarizer,
    Summary,
    TrackNotFoundError,
    TrackStats,
    TranscriptionEngine,
    TranscriptionStream,
    TranscriptSegment,
    UnsupportedLanguageError,
    Workflow,
    WorkflowContext,
)
from classwire.server.testing import (
    MatcherConformance,
    NotificationChannelConformance,
    RecordingWorkflowContext,
    SummarizerConformance,
    TranscriptionEngineConformance,
    WorkflowConformance,
)
from classwire.server.testing.matcher import check_plan, sample_problem

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"
META_TESTS = {"test_hookspecs_are_documented", "test_hookspecs_have_tests", "hookspec_names"}


def hookspec_names() -> list[str]:
    return sorted(
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("classwire_") and hasattr(fn, "classwire_spec")
    )


# -- meta tests -----------------------------------------------------------------------------


def test_there_are_hookspecs() -> None:
    assert len(hookspec_names()) == 10
    assert set(HOOK_FOR_KIND.values()) < set(hookspec_names())


@pytest.mark.parametrize("hook", hookspec_names())
def test_hookspecs_are_documented(hook: str) -> None:
    headings = [
        line for line in DOCS.read_text(encoding="utf-8").splitlines() if line.startswith("#")
    ]
    assert any(hook in line for line in headings), f"{hook} has no heading in docs/plugins.md"
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert ":param register:" in doc, f"{hook} docstring lacks :param: lines"
    assert ":return:" in doc and "firstresult" in doc, f"{hook} docstring lacks return/firstresult"


def _test_sources() -> str:
    """All test code except the meta tests themselves, which name every hook."""
    sources = []
    for path in sorted(TESTS.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if path.resolve() == Path(__file__).resolve():
            lines = text.splitlines()
            for node in ast.parse(text).body:
                if isinstance(node, ast.FunctionDef) and node.name in META_TESTS:
                    start = node.lineno - 1 - len(node.decorator_list)
                    for i in range(start, node.end_lineno or start):
                        lines[i] = ""
            text = "\n".join(lines)
        sources.append(text)
    return "\n".join(sources)


@pytest.mark.parametrize("hook", hookspec_names())
def test_hookspecs_have_tests(hook: str) -> None:
    assert re.search(rf"\b{hook}\b", _test_sources()), f"{hook} is not used by any test"


# -- small providers of every kind ----------------------------------------------------------


class TinyMediaBackend(MediaBackend):
    """Rooms and peers in dictionaries; SDP checked for the lines every offer must have."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, SessionDescription | None]] = {}
        self.sinks: dict[str, MediaEventSink] = {}

    def _room(self, room_id: str) -> dict[str, SessionDescription | None]:
        try:
            return self.rooms[room_id]
        except KeyError:
            raise RoomNotFoundError(room_id) from None

    async def create_room(self, room_id: str, options: RoomOptions, events) -> RoomInfo:
        self.rooms.setdefault(room_id, {})
        self.sinks.setdefault(room_id, events)
        return await self.room_info(room_id)

    async def close_room(self, room_id: str) -> None:
        self.rooms.pop(room_id, None)

    async def room_info(self, room_id: str) -> RoomInfo:
        return RoomInfo(room_id, tuple(self._room(room_id)))

    async def add_peer(self, room_id, peer_id) -> None:
        self._room(room_id).setdefault(peer_id, None)

    async def publish(self, room_id, peer_id, offer) -> SessionDescription:
        room = self._room(room_id)
        if peer_id not in room:
            raise PeerNotFoundError(peer_id)
        sdp = offer.sdp
        if not sdp.startswith("v=0") or "a=fingerprint:" not in sdp or "a=ice-ufrag:" not in sdp:
            raise InvalidSdpError("offer lacks v=0, a fingerprint or ICE credentials")
        room[peer_id] = offer
        return SessionDescription("answer", sdp.replace("a=setup:actpass", "a=setup:active"))

    async def set_remote_description(self, room_id, peer_id, description) -> None:
        if peer_id not in self._room(room_id):
            raise PeerNotFoundError(peer_id)

    async def add_ice_candidate(self, room_id, peer_id, candidate: IceCandidate) -> None:
        if peer_id not in self._room(room_id):
            raise PeerNotFoundError(peer_id)

    async def subscribe(self, room_id, peer_id, track_id) -> None:
        if peer_id not in self._room(room_id):
            raise PeerNotFoundError(peer_id)
        raise TrackNotFoundError(track_id)

    async def unsubscribe(self, room_id, peer_id, track_id) -> None:
        raise TrackNotFoundError(track_id)

    async def set_track_muted(self, room_id, track_id, muted) -> None:
        self._room(room_id)
        raise TrackNotFoundError(track_id)

    async def close_peer(self, room_id, peer_id) -> None:
        self._room(room_id).pop(peer_id, None)

    async def audio_tap(
        self, room_id, track_id, *, sample_rate=16000, channels=1
    ) -> AsyncIterator[AudioFrame]:
        self._room(room_id)
        raise TrackNotFoundError(track_id)
        yield  # pragma: no cover

    async def record(
        self, room_id, track_ids, *, format: RecordingFormat = "webm"
    ) -> AsyncIterator[bytes]:
        self._room(room_id)
        raise TrackNotFoundError(",".join(track_ids))
        yield  # pragma: no cover

    async def stats(self, room_id) -> Sequence[TrackStats]:
        self._room(room_id)
        return []


CLIENT_OFFER = SessionDescription(
    "offer",
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\n"
    "a=fingerprint:sha-256 00:11\r\na=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\n",
)


class CountingStream(TranscriptionStream):
    """Emits one empty final segment per whole second of audio: enough to check timing."""

    def __init__(self) -> None:
        self.samples = 0
        self.closed = False
        self.segments: list[TranscriptSegment] = []
        self._pending = b""

    async def feed(self, pcm: bytes) -> None:
        if self.closed:
            raise RuntimeError("stream is closed")
        data = self._pending + pcm
        whole = len(data) // 2 * 2
        self._pending = data[whole:]
        before = self.samples // 16000
        self.samples += whole // 2
        for second in range(before, self.samples // 16000):
            self.segments.append(TranscriptSegment("", second, second + 1.0, True, 0.0, "en"))

    async def close(self) -> None:
        self.closed = True

    async def __aiter__(self) -> AsyncIterator[TranscriptSegment]:
        for segment in self.segments:
            yield segment


class CountingEngine(TranscriptionEngine):
    def languages(self) -> Sequence[str]:
        return ("en",)

    async def open_stream(self, language: str, *, sample_rate: int = 16000):
        if language not in self.languages():
            raise UnsupportedLanguageError(language)
        if sample_rate != 16000:
            raise ValueError("16 kHz only")
        return CountingStream()


class MemoryChannel(NotificationChannel):
    def __init__(self) -> None:
        self.sent: list[NotificationMessage] = []

    async def send(self, message: NotificationMessage) -> DeliveryResult:
        if "@" not in message.recipient:
            return DeliveryResult(DeliveryStatus.REJECTED, detail="not an e-mail address")
        self.sent.append(message)
        return DeliveryResult(DeliveryStatus.SENT, provider_message_id=message.idempotency_key)


def _qualified(instructor, lesson) -> bool:
    return any(
        s == lesson.subject and lvl in ("", lesson.level) for s, lvl in instructor.qualifications
    )


class GreedyMatcher(Matcher):
    """One lesson at a time, in start order, preferring the learner's previous instructor."""

    def _pick(self, lesson: LessonRequest, problem: MatchProblem, taken: dict) -> MatchAssignment:
        ranked = sorted(
            problem.instructors,
            key=lambda i: (i.instructor_id != lesson.previous_instructor_id, i.instructor_id),
        )
        for who in ranked:
            mine = taken.setdefault(who.instructor_id, [])
            minutes = (lesson.interval.end - lesson.interval.start).total_seconds() / 60
            load = who.current_load_minutes + sum(
                (i.end - i.start).total_seconds() / 60 for i in mine
            )
            if (
                _qualified(who, lesson)
                and any(w.contains(lesson.interval) for w in who.available)
                and not any(b.overlaps(lesson.interval) for b in [*who.busy, *mine])
                and (who.load_limit_minutes is None or load + minutes <= who.load_limit_minutes)
            ):
                mine.append(lesson.interval)
                continuity = float(who.instructor_id == lesson.previous_instructor_id)
                return MatchAssignment(
                    lesson.booking_id,
                    who.instructor_id,
                    MatchExplanation(
                        ("qualified", "available", "no overlap", "within load"),
                        {"continuity": continuity},
                    ),
                )
        return MatchAssignment(
            lesson.booking_id, None, MatchExplanation(reason="no qualified instructor is free")
        )

    async def match(self, lesson: LessonRequest, problem: MatchProblem) -> MatchAssignment:
        return self._pick(lesson, problem, {})

    async def assign(self, problem: MatchProblem) -> MatchPlan:
        taken: dict = {}
        lessons = sorted(problem.lessons, key=lambda lesson: lesson.interval.start)
        assignments = [self._pick(lesson, problem, taken) for lesson in lessons]
        objective = float(sum(a.instructor_id is not None for a in assignments))
        return MatchPlan(assignments, objective, bound=None, optimal=False)


class FirstSentences(Summarizer):
    """Extractive: the first two sentences, and the most frequent long words as key terms."""

    async def summarize(self, segments, language, *, max_terms=10) -> Summary:
        if not segments:
            return Summary("", (), language)
        words: dict[str, int] = {}
        for segment in segments:
            for word in re.findall(r"[a-z]{7,}", segment.text.lower()):
                words[word] = words.get(word, 0) + 1
        terms = sorted(words, key=lambda w: (-words[w], w))[:max_terms]
        return Summary(" ".join(s.text for s in segments[:2]), terms, language)


class ReportToGuardians(Workflow):
    name = "report_to_guardians"
    event_types = ("session.report_ready",)

    async def handle(self, event: Event, context: WorkflowContext) -> None:
        for guardian in event.data.get("guardians", ()):
            await context.notify(
                "email",
                NotificationMessage(
                    recipient=guardian,
                    subject="Session report",
                    text=f"The report for session {event.session_id} is ready.",
                    idempotency_key=f"{event.id}:{guardian}",
                ),
            )


SAMPLE_EVENT = Event(
    id="evt-1",
    type="session.report_ready",
    tenant_id="t1",
    sequence=7,
    occurred_at=datetime(2030, 1, 1, tzinfo=UTC),
    data={"guardians": ["g1@example.org", "g2@example.org"]},
    session_id="s1",
)


class EveryKindPlugin:
    """One provider of every kind, plus an event handler."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    @hookimpl
    def classwire_register_media_backends(self, register):
        register("tiny_media", lambda ctx: TinyMediaBackend())

    @hookimpl
    def classwire_register_transcription_engines(self, register):
        register("counting", lambda ctx: CountingEngine())

    @hookimpl
    def classwire_register_notification_channels(self, register):
        register("memory_mail", lambda ctx: MemoryChannel())

    @hookimpl
    def classwire_register_matchers(self, register):
        register("test_greedy", lambda ctx: GreedyMatcher())

    @hookimpl
    def classwire_register_summarizers(self, register):
        register("first_sentences", lambda ctx: FirstSentences())

    @hookimpl
    def classwire_register_workflows(self, register):
        register("report_to_guardians", lambda ctx: ReportToGuardians())

    @hookimpl
    def classwire_register_event_handlers(self, register):
        async def remember(event: Event) -> None:
            self.seen.append(event)

        async def broken(event: Event) -> None:
            raise RuntimeError("handler bug")

        register("remember_sessions", remember, event_types=["session.*"])
        register("broken", broken, event_types=["session.ended"])


@pytest.fixture
def plugin() -> EveryKindPlugin:
    return EveryKindPlugin()


@pytest.fixture
def pm(plugin: EveryKindPlugin) -> PluginManager:
    manager = PluginManager()  # with the built-ins, as a server would run
    manager.register_plugin(plugin, "every_kind")
    return manager.load()


def create(pm: PluginManager, kind: str, name: str, tmp_path: Path):
    return pm.create(kind, name, data_dir=tmp_path, database_url="sqlite+aiosqlite:///:memory:")


# -- each hook through the manager ----------------------------------------------------------


async def test_classwire_register_blob_stores(tmp_path: Path) -> None:
    class Plugin:
        @hookimpl
        def classwire_register_blob_stores(self, register):
            from classwire.plugins.localfs import LocalFSBlobStore

            register("scratch", lambda ctx: LocalFSBlobStore(ctx.data_dir / "scratch"))

    pm = PluginManager()
    pm.register_plugin(Plugin(), "scratch_plugin")
    assert pm.load().names("blob_store") == ["localfs", "scratch"]
    async with create(pm, "blob_store", "scratch", tmp_path) as store:
        await store.put("x/y", b"z")
        assert await store.read("x/y") == b"z"
    assert (tmp_path / "scratch" / "x" / "y").exists()


async def test_classwire_register_event_buses(tmp_path: Path) -> None:
    class Plugin:
        @hookimpl
        def classwire_register_event_buses(self, register):
            from classwire.plugins.memory_bus import MemoryBus

            register("tiny_bus", lambda ctx: MemoryBus(max_queue=ctx.options["max_queue"]))

    pm = PluginManager(load_entry_points=False)
    pm.register_plugin(Plugin(), "tiny")
    bus = pm.create(
        "event_bus", "tiny_bus", data_dir=tmp_path, database_url="", options={"max_queue": 5}
    )
    async with bus, bus.subscribe("c") as sub:
        await bus.publish("c", b"x")
        assert await anext(sub) == b"x"


async def test_classwire_register_media_backends(pm: PluginManager, tmp_path: Path) -> None:
    assert pm.names("media_backend") == ["aiortc_sfu", "janus", "tiny_media"]
    backend = create(pm, "media_backend", "tiny_media", tmp_path)

    async def sink(event) -> None:
        pass

    async with backend:
        await backend.create_room("r", RoomOptions(), sink)
        await backend.add_peer("r", "p")
        answer = await backend.publish("r", "p", CLIENT_OFFER)
        assert answer.type == "answer"


async def test_classwire_register_transcription_engines(pm: PluginManager, tmp_path) -> None:
    engine = create(pm, "transcription_engine", "counting", tmp_path)
    stream = await engine.open_stream("en")
    await stream.feed(bytes(32000 * 2 + 1))
    await stream.close()
    assert [s.end async for s in stream] == [1.0, 2.0]


async def test_classwire_register_notification_channels(pm: PluginManager, tmp_path) -> None:
    channel = create(pm, "notification_channel", "memory_mail", tmp_path)
    result = await channel.send(NotificationMessage("a@example.org", "s", "t", "k1"))
    assert result.status is DeliveryStatus.SENT and channel.sent[0].idempotency_key == "k1"


async def test_classwire_register_matchers(pm: PluginManager, tmp_path: Path) -> None:
    matcher = create(pm, "matcher", "test_greedy", tmp_path)
    problem = sample_problem()
    check_plan(problem, await matcher.assign(problem))


async def test_classwire_register_summarizers(pm: PluginManager, tmp_path: Path) -> None:
    summarizer = create(pm, "summarizer", "first_sentences", tmp_path)
    segment = TranscriptSegment("Photosynthesis photosynthesis makes glucose", 0, 1, True)
    summary = await summarizer.summarize([segment], "en")
    assert summary.key_terms[0] == "photosynthesis"


async def test_classwire_register_workflows(pm: PluginManager, tmp_path: Path) -> None:
    workflow = create(pm, "workflow", "report_to_guardians", tmp_path)
    context = RecordingWorkflowContext()
    await workflow.handle(SAMPLE_EVENT, context)
    assert context.keys == [("notify", "evt-1:g1@example.org"), ("notify", "evt-1:g2@example.org")]


async def test_classwire_register_event_handlers(
    pm: PluginManager, plugin: EveryKindPlugin
) -> None:
    assert [h.name for h in pm.event_handlers()] == ["remember_sessions", "broken"]
    assert [h.name for h in pm.event_handlers("session.started")] == ["remember_sessions"]
    assert pm.event_handlers("booking.created") == []
    ended = Event("e2", "session.ended", "t1", 8, datetime(2030, 1, 1, tzinfo=UTC))
    with capture_logs() as logs:
        failures = await pm.dispatch_event(ended)
    # The broken handler is logged and reported; the other one still ran.
    assert [name for name, _ in failures] == ["broken"]
    assert plugin.seen == [ended]
    assert any(e["event"] == "event_handler_failed" and e["handler"] == "broken" for e in logs)
    assert await pm.dispatch_event(SAMPLE_EVENT) == []
    assert plugin.seen == [ended, SAMPLE_EVENT]


def test_event_handlers_must_be_async() -> None:
    class Plugin:
        @hookimpl
        def classwire_register_event_handlers(self, register):
            register("sync", lambda event: None)

    pm = PluginManager(load_entry_points=False)
    pm.register_plugin(Plugin(), "sync_handlers")
    with pytest.raises(Exception, match="async callable"):
        pm.load()


def test_every_kind_has_a_registration_hook(pm: PluginManager) -> None:
    for kind in ProviderKind:
        assert kind in HOOK_FOR_KIND
    assert {k: pm.names(k) for k in ProviderKind} == {
        "blob_store": ["localfs"],
        "event_bus": ["memory_bus", "postgres_bus"],
        "media_backend": ["aiortc_sfu", "janus", "tiny_media"],
        "transcription_engine": ["counting", "pocketsphinx"],
        "notification_channel": ["http_notify", "memory_mail", "smtp"],
        "matcher": ["cpsat", "greedy", "test_greedy"],
        "summarizer": ["extractive", "first_sentences"],
        "workflow": ["report_to_guardians"],
        "learning_record_store": ["xapi_lrs"],
    }


# -- the conformance suites run against the small providers ---------------------------------


class TestCountingEngineConformance(TranscriptionEngineConformance):
    @pytest.fixture
    async def transcription_engine(self):
        yield CountingEngine()


class TestMemoryChannelConformance(NotificationChannelConformance):
    @pytest.fixture
    async def notification_channel(self):
        channel = MemoryChannel()
        self._channel = channel
        yield channel

    @pytest.fixture
    def recipient(self) -> str:
        return "learner@example.org"

    async def delivered(self):
        return [f"{m.subject}\n{m.text}" for m in self._channel.sent]


class TestGreedyMatcherConformance(MatcherConformance):
    @pytest.fixture
    async def matcher(self):
        yield GreedyMatcher()


class TestFirstSentencesConformance(SummarizerConformance):
    @pytest.fixture
    async def summarizer(self):
        yield FirstSentences()


class TestReportToGuardiansConformance(WorkflowConformance):
    @pytest.fixture
    async def workflow(self):
        yield ReportToGuardians()

    @pytest.fixture
    def sample_event(self) -> Event:
        return SAMPLE_EVENT
