"""Composition root: builds the providers, the database, the domains, and the grpc.aio server
with its interceptors, health and reflection; runs it until SIGTERM/SIGINT, then drains."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from dataclasses import dataclass, field
from typing import Any

import structlog
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.media.v1 import service_pb2_grpc as media_grpc
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.roster.v1 import service_pb2 as roster_api
from classwire.api.roster.v1 import service_pb2_grpc as roster_grpc
from classwire.api.scheduling.v1 import service_pb2 as scheduling_api
from classwire.api.scheduling.v1 import service_pb2_grpc as scheduling_grpc
from classwire.api.session.v1 import service_pb2 as session_api
from classwire.api.session.v1 import service_pb2_grpc as session_grpc

from .config import DEFAULT_PROVIDERS, Config
from .domain.analytics import AnalyticsDomain
from .domain.auth import RateLimiter
from .domain.authenticate import Authenticator
from .domain.classroom import Classroom
from .domain.event_log import EventLog
from .domain.ingest import IngestDomain
from .domain.media import MediaDomain, MediaSettings
from .domain.media_talk import TalkSettings
from .domain.platform import PlatformDomain, TenantSettings
from .domain.presence import Presence
from .domain.recordings import RecordingsDomain
from .domain.reports import ReportsDomain
from .domain.session_lifecycle import SessionLifecycle
from .domain.sessions import SessionsDomain
from .domain.transcription import TranscriptionDomain
from .domain.transcription_engines import EngineRegistry
from .domain.usage import ApiCallMeter, UsageDomain
from .events.outbox import UnitOfWorkFactory
from .events.rollups import start_rollups
from .events.timers import Timers
from .events.wakeups import Wakeups
from .events.webhooks import WebhookDispatcher
from .events.workflow_runner import start_notifications
from .handlers.analytics import analytics_methods
from .handlers.classroom import classroom_methods
from .handlers.data import data_servicer
from .handlers.exports import export_methods
from .handlers.media import media_servicer
from .handlers.notifications import notification_methods
from .handlers.platform import PlatformHandler
from .handlers.recordings import recording_methods
from .handlers.reports import report_methods
from .handlers.roster import roster_servicer
from .handlers.scheduling import scheduling_servicer
from .handlers.session import session_servicer
from .handlers.transcription import transcript_methods, transcription_methods
from .plugins.manager import PluginManager
from .plugins.types import ProviderKind
from .rpc.health import DrainingHealthServicer
from .rpc.interceptors import ClasswireInterceptor
from .store import repositories as repo
from .store.engine import Database

log = structlog.get_logger("classwire.server")

# How long background tasks (timers, dispatchers, workflows) get to finish at shutdown.
TASK_STOP_TIMEOUT = 10.0


def _service(module) -> str:
    return module.DESCRIPTOR.services_by_name[
        next(iter(module.DESCRIPTOR.services_by_name))
    ].full_name


SERVICE_NAMES = [
    _service(m)
    for m in (platform_api, roster_api, scheduling_api, session_api, media_api, data_api)
]


@dataclass
class Platform:
    """Everything the server runs on, built from a Config; usable without the gRPC server too."""

    config: Config
    db: Database
    plugins: PluginManager
    wakeups: Wakeups
    uow: UnitOfWorkFactory
    platform: PlatformDomain
    authenticator: Authenticator
    sessions: SessionsDomain
    event_log: EventLog
    classroom: Classroom
    timers: Timers
    webhooks: WebhookDispatcher | None = None
    # API calls per tenant and day, counted by the interceptor and flushed by a task.
    meter: ApiCallMeter = field(default_factory=ApiCallMeter)
    # Built by start_notifications (events/workflow_runner.py) when the server starts.
    notifications: Any = None
    workflows: Any = None
    workflow_runner: Any = None
    # Post-session reports and their build runner (domain/reports.py).
    reports: Any = None
    # Live transcription (domain/transcription.py).
    transcription: Any = None
    # The media plane (domain/media.py) over the media backend provider.
    media: Any = None
    # Recordings (domain/recordings.py), stored through the blob store provider.
    recordings: Any = None
    # One follower of sessions going live and ending for recordings and transcription.
    lifecycle: SessionLifecycle | None = None
    providers: dict = field(default_factory=dict)
    # Background tasks (timers, dispatchers) started by the areas; cancelled at close.
    tasks: list = field(default_factory=list)

    @classmethod
    async def open(cls, config: Config, own_addresses=lambda: []) -> Platform:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        plugins = PluginManager(allow=config.plugins_allow or None, block=config.plugins_block)
        plugins.load()
        providers = {}
        for kind in (ProviderKind.BLOB_STORE, ProviderKind.EVENT_BUS):
            name = config.providers.get(kind.value, "")
            provider = plugins.create(
                kind,
                name,
                data_dir=config.data_dir,
                database_url=config.effective_database_url,
                options=config.provider_options.get(name, {}),
                key=config.provider_keys.get(kind.value, f"providers.{kind.value}"),
            )
            await provider.start()
            providers[kind.value] = provider
        db = Database(config.effective_database_url)
        await db.migrate()
        wakeups = Wakeups(providers.get("event_bus"))
        await wakeups.start()
        uow = UnitOfWorkFactory(db, wakeups)
        platform_domain = PlatformDomain(db, uow, own_addresses=own_addresses)
        timers = Timers(db, uow)
        sessions = SessionsDomain(db, uow, platform_domain, config.token_issuer, timers)
        platform = cls(
            config=config,
            db=db,
            plugins=plugins,
            wakeups=wakeups,
            uow=uow,
            platform=platform_domain,
            authenticator=Authenticator(db, config.token_issuer, config.api_key_cache_ttl),
            sessions=sessions,
            event_log=EventLog(db, wakeups),
            classroom=None,  # set below: it needs the sessions domain
            timers=timers,
            providers=providers,
        )
        platform.classroom = Classroom(db, uow, platform.sessions)
        sessions.classroom = platform.classroom
        platform.webhooks = WebhookDispatcher(db, uow, wakeups)
        platform.reports = ReportsDomain(db, uow, plugins, config)
        # The lifecycle's timers (join window, empty room, overrun, reconnect grace), and the
        # participant connections of this replica.
        sessions.register_timers(timers)
        sessions.presence = Presence(db, wakeups, sessions, platform.classroom)
        platform.media = await _open_media(config, plugins, db, uow, sessions, providers)
        sessions.presence.media = platform.media
        await sessions.recover_connections()
        platform.transcription = TranscriptionDomain(
            db, uow, sessions, EngineRegistry(plugins, config)
        )
        if platform.media is not None:
            # One recognizer per published audio track, fed by the media plane's decode.
            platform.transcription.attach_media(platform.media)
        platform.recordings = RecordingsDomain(
            db, uow, sessions, platform.media, providers[ProviderKind.BLOB_STORE.value]
        )
        sessions.presence.recordings = platform.recordings
        platform.lifecycle = SessionLifecycle(db)
        platform.transcription.follow(platform.lifecycle)
        platform.recordings.follow(platform.lifecycle)
        # Revocations on this replica take effect at once, not after the cache TTL.
        platform.platform.credential_revoked = platform.authenticator.evict
        return platform

    def start_background(self) -> None:
        """Starts the durable timer runner; areas register their timer kinds before this."""
        # Notifications register their timer kind before the runner starts firing.
        start_notifications(self)
        start_rollups(self)
        self.tasks.append(self.timers.start())
        self.tasks.append(self.webhooks.start())
        self.tasks.append(self.reports.start())
        self.tasks.append(self.lifecycle.start())
        self.tasks.append(asyncio.create_task(self.meter.run(self.db), name="usage-meter"))
        self.tasks.append(
            asyncio.create_task(IngestDomain(self.db, self.uow).run_purge(), name="ingest-purge")
        )

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            # Bounded: a background task stuck in its clean-up must not hang the shutdown.
            _, stuck = await asyncio.wait(self.tasks, timeout=TASK_STOP_TIMEOUT)
            for task in stuck:
                log.warning("background task did not stop in time", task=task.get_name())
        with contextlib.suppress(Exception):
            await self.transcription.close()
        with contextlib.suppress(Exception):
            # Files in progress are finalized before the media plane closes their tracks.
            await self.recordings.close()
        if self.media is not None:
            with contextlib.suppress(Exception):
                await self.media.close()
        await self.wakeups.stop()
        for provider in reversed(list(self.providers.values())):
            with contextlib.suppress(Exception):
                await provider.close()
        await self.db.dispose()

    async def bootstrap(self) -> tuple[str, str] | None:
        """Creates a first tenant with an operator key when the database has none."""
        async with self.db.reader() as session:
            existing = await repo.page(
                session, repo.tenants(), repo.Tenant.create_time, repo.Tenant.id, 1, None
            )
        if existing:
            return None
        created = await self.platform.create_tenant(
            None, "default", TenantSettings(), operator=True
        )
        return created.tenant.tenant.id, created.secret


async def _open_media(config: Config, plugins, db, uow, sessions, providers) -> MediaDomain:
    """The media domain over the configured media backend. Without the default backend
    installed the server still runs: media actions and RPCs answer MEDIA_BACKEND_UNAVAILABLE."""
    kind = ProviderKind.MEDIA_BACKEND
    name = config.providers.get(kind.value, "")
    settings = MediaSettings(
        quality_sample_period=config.media_quality_sample_period.total_seconds(),
        talk=TalkSettings(
            on_dbov=config.talk_on_dbov,
            off_dbov=min(config.talk_off_dbov, config.talk_on_dbov),
            hangover=config.talk_hangover.total_seconds(),
            min_interval=config.talk_min_interval.total_seconds(),
        ),
    )
    backend = None
    message = ""
    if not name:
        message = "no media backend is configured"
    elif name == DEFAULT_PROVIDERS["media_backend"] and name not in plugins.names(kind):
        message = f"the default media backend {name!r} is not installed"
        log.warning("media plane disabled", reason=message)
    else:
        backend = plugins.create(
            kind,
            name,
            data_dir=config.data_dir,
            database_url=config.effective_database_url,
            options=config.provider_options.get(name, {}),
            key=config.provider_keys.get(kind.value, f"providers.{kind.value}"),
        )
        await backend.start()
        providers[kind.value] = backend
    return MediaDomain(db, uow, sessions, backend, settings, unavailable_message=message)


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host, int(port)


class Server:
    """The grpc.aio server with every v1 service, health, reflection and metrics."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.port = 0
        self.platform: Platform | None = None
        self.server: aio.Server | None = None
        self.health: DrainingHealthServicer | None = None
        self.interceptor: ClasswireInterceptor | None = None
        self._stopping = asyncio.Event()

    def own_addresses(self) -> list[tuple[str, int]]:
        host, _ = _host_port(self.config.listen)
        addresses = [(host, self.port)]
        if self.config.metrics_listen:
            addresses.append(_host_port(self.config.metrics_listen))
        return addresses

    async def start(self) -> None:
        self.platform = await Platform.open(self.config, self.own_addresses)
        p = self.platform
        c = self.config
        limiter = RateLimiter(c.rate_limit_per_second, c.rate_limit_burst)
        options = [
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.keepalive_time_ms", int(c.keepalive_time.total_seconds() * 1000)),
            ("grpc.keepalive_timeout_ms", int(c.keepalive_timeout.total_seconds() * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            # Clients may ping every 10 s (the SDK's default is 30 s) without being cut off.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.so_reuseport", 0),
        ]
        self.interceptor = ClasswireInterceptor(p.authenticator, limiter, p.meter)
        self.server = aio.server(options=options)
        # Every v1 service is registered through the interceptor stack; health and reflection
        # (below) are not: they need no credentials.
        services = self.interceptor.registrar(self.server)
        platform_grpc.add_PlatformServiceServicer_to_server(
            PlatformHandler(p.platform, UsageDomain(p.db, p.meter)), services
        )
        session_grpc.add_SessionServiceServicer_to_server(
            session_servicer(p.sessions, p.event_log, classroom_methods(p)), services
        )
        data_grpc.add_DataServiceServicer_to_server(
            data_servicer(
                p.event_log,
                extra={
                    **notification_methods(p),
                    **transcript_methods(p.transcription),
                    **report_methods(p.reports),
                    **analytics_methods(AnalyticsDomain(p.db, p.uow)),
                    **export_methods(p),
                },
            ),
            services,
        )
        roster_grpc.add_RosterServiceServicer_to_server(roster_servicer(p), services)
        scheduling_grpc.add_SchedulingServiceServicer_to_server(scheduling_servicer(p), services)
        media_grpc.add_MediaServiceServicer_to_server(
            media_servicer(
                p.media,
                {**transcription_methods(p.transcription), **recording_methods(p.recordings)},
            ),
            services,
        )
        # Generated code hands each service over by name; one that did not would be missing.
        if sorted(services.services) != sorted(SERVICE_NAMES):
            raise RuntimeError(f"services registered: {services.services}")
        self.health = DrainingHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            SERVICE_NAMES
            + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = self.server.add_insecure_port(c.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {c.listen}")
        if c.metrics_listen:
            host, port = _host_port(c.metrics_listen)
            start_http_server(port, addr=host)
        # Servicer factories above registered their timer kinds; now the runner may fire them.
        p.start_background()
        await self.server.start()
        for name in ["", *SERVICE_NAMES]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        # Start-up objects (protos, models, plugins) never die: moving them out of the cyclic
        # collector's reach removes its 50-80 ms full-collection pauses from request latency.
        gc.collect()
        gc.freeze()
        log.info(
            "serving",
            listen=c.listen,
            port=self.port,
            database=p.db.write_engine.url.get_backend_name(),
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drains: health goes NOT_SERVING, new calls are refused, in-flight calls get `grace`."""
        if self.server is None:
            return
        grace = self.config.shutdown_grace.total_seconds() if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.platform is not None:
            # Participant streams end with SERVER_SHUTTING_DOWN; their participants are left
            # reconnecting, to resume after the restart.
            await self.platform.sessions.presence.stop()
            # Watch streams end at once with SERVER_SHUTTING_DOWN so clients resume elsewhere.
            self.platform.event_log.close()
        log.info("draining", grace_seconds=grace)
        await self.server.stop(grace)
        # Cancelled handlers may still be unwinding: let them finish before the database and
        # providers close underneath them.
        if self.interceptor is not None and not await self.interceptor.wait_idle(5.0):
            log.warning(
                "handlers still running after the grace period", count=self.interceptor.in_flight
            )
        if self.platform is not None:
            await self.platform.close()
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()
        await self.stop()
