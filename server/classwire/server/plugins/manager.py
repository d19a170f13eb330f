"""Loading plugins, collecting what they register, creating providers, and isolating calls.

Built-in providers and third-party plugins arrive the same way: through the ``classwire``
entry-point group. The entry-point name is the plugin's name, which the allow and block lists
refer to.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import pluggy
import structlog

from classwire.server.plugins import hookspecs
from classwire.server.plugins.types import (
    BlobStore,
    ConfigError,
    ContractError,
    Event,
    EventBus,
    EventHandler,
    LearningRecordStore,
    Matcher,
    MediaBackend,
    NotificationChannel,
    ProviderContext,
    ProviderError,
    ProviderFactory,
    ProviderKind,
    Summarizer,
    TranscriptionEngine,
    Workflow,
    matches_event_type,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_FOR_KIND",
    "INTERFACE_FOR_KIND",
    "DuplicateProviderError",
    "EventHandlerRegistration",
    "PluginError",
    "PluginInfo",
    "PluginManager",
    "ProviderRegistration",
    "call_provider",
    "config_key",
    "guard_iter",
    "options_key",
    "provider_guard",
]

T = TypeVar("T")

ENTRY_POINT_GROUP = "classwire"

HOOK_FOR_KIND: Mapping[ProviderKind, str] = MappingProxyType(
    {
        ProviderKind.BLOB_STORE: "classwire_register_blob_stores",
        ProviderKind.EVENT_BUS: "classwire_register_event_buses",
        ProviderKind.MEDIA_BACKEND: "classwire_register_media_backends",
        ProviderKind.TRANSCRIPTION_ENGINE: "classwire_register_transcription_engines",
        ProviderKind.NOTIFICATION_CHANNEL: "classwire_register_notification_channels",
        ProviderKind.MATCHER: "classwire_register_matchers",
        ProviderKind.SUMMARIZER: "classwire_register_summarizers",
        ProviderKind.WORKFLOW: "classwire_register_workflows",
        ProviderKind.LEARNING_RECORD_STORE: "classwire_register_learning_record_stores",
    }
)

INTERFACE_FOR_KIND: Mapping[ProviderKind, type] = MappingProxyType(
    {
        ProviderKind.BLOB_STORE: BlobStore,
        ProviderKind.EVENT_BUS: EventBus,
        ProviderKind.MEDIA_BACKEND: MediaBackend,
        ProviderKind.TRANSCRIPTION_ENGINE: TranscriptionEngine,
        ProviderKind.NOTIFICATION_CHANNEL: NotificationChannel,
        ProviderKind.MATCHER: Matcher,
        ProviderKind.SUMMARIZER: Summarizer,
        ProviderKind.WORKFLOW: Workflow,
        ProviderKind.LEARNING_RECORD_STORE: LearningRecordStore,
    }
)

_log = structlog.get_logger("classwire.plugins")


def _is_async_callable(obj: object) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    # An instance with an async __call__ is fine too.
    return callable(obj) and inspect.iscoroutinefunction(type(obj).__call__)


def config_key(kind: ProviderKind | str) -> str:
    """The configuration key that selects the provider of ``kind`` (``providers.blob_store``)."""
    return f"providers.{ProviderKind(kind).value}"


def options_key(kind: ProviderKind | str, name: str) -> str:
    """The configuration table holding one provider's options (``providers.localfs``): the
    ``[providers]`` table names the chosen provider per kind and holds a sub-table of options
    per provider name."""
    ProviderKind(kind)
    return f"providers.{name}"


class PluginError(ConfigError):
    """A plugin cannot be loaded or registers something invalid. The server treats it as bad
    configuration: fix the plugin or block it (``plugins.block``)."""

    def __init__(self, plugin: str, message: str, *, key: str = "plugins") -> None:
        super().__init__(key, f"plugin {plugin!r}: {message}")
        self.plugin = plugin


class DuplicateProviderError(PluginError):
    """Two plugins registered a provider of the same kind under the same name."""

    def __init__(self, kind: ProviderKind, name: str, first: str, second: str) -> None:
        super().__init__(
            second,
            f"{kind.value} provider {name!r} is already registered by plugin {first!r}; "
            f"block one of the two plugins with plugins.block",
            key="plugins.block",
        )
        self.kind = kind
        self.name = name


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """A loaded plugin: its name, where it came from (``entry_point`` or ``object``), the
    module or object's qualified name, and the distribution and version when known."""

    name: str
    origin: str
    target: str
    distribution: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderRegistration:
    kind: ProviderKind
    name: str
    factory: ProviderFactory
    plugin: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class EventHandlerRegistration:
    name: str
    handler: EventHandler
    plugin: str
    event_types: tuple[str, ...] | None = None

    def matches(self, event_type: str) -> bool:
        return matches_event_type(self.event_types, event_type)


# --------------------------------------------------------------------------------------------
# Isolation
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def provider_guard(kind: ProviderKind | str, name: str, operation: str) -> Iterator[None]:
    """Run a block of provider calls so that faults come out typed and logged.

    Contract errors (``ContractError`` subclasses such as ``BlobNotFoundError``) and
    cancellation pass through unchanged. Any other exception is logged with its traceback and
    re-raised as :class:`ProviderError` naming the provider, so the caller handles one type and
    its loop never dies on an arbitrary exception from plugin code::

        with provider_guard("blob_store", "localfs", "put"):
            await store.put(key, data)
    """
    try:
        yield
    except (ContractError, ProviderError):
        raise
    except Exception as exc:
        kind_value = kind.value if isinstance(kind, ProviderKind) else str(kind)
        _log.exception(
            "provider_failed", provider_kind=kind_value, provider=name, operation=operation
        )
        raise ProviderError(kind_value, name, operation, f"{type(exc).__name__}: {exc}") from exc


async def call_provider(
    kind: ProviderKind | str,
    name: str,
    operation: str,
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    **kwargs: Any,
) -> T:
    """``await fn(*args, **kwargs)`` inside :func:`provider_guard`."""
    with provider_guard(kind, name, operation):
        return await fn(*args, **kwargs)


async def guard_iter(
    kind: ProviderKind | str, name: str, operation: str, iterable: AsyncIterable[T]
) -> AsyncIterator[T]:
    """Iterate a provider's async iterator with each step inside :func:`provider_guard`."""
    iterator = aiter(iterable)
    try:
        while True:
            with provider_guard(kind, name, operation):
                try:
                    item = await anext(iterator)
                except StopAsyncIteration:
                    return
            yield item
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with provider_guard(kind, name, operation):
                await aclose()


# --------------------------------------------------------------------------------------------
# The manager
# --------------------------------------------------------------------------------------------


class PluginManager:
    """Loads plugins, collects their registrations, and creates providers by kind and name.

    :param allow: plugin names to load; None (or empty) loads every plugin not blocked.
    :param block: plugin names never to load, even when allowed.
    :param load_entry_points: False loads only plugins passed to :meth:`register_plugin`
        (tests, embedding).
    """

    def __init__(
        self,
        *,
        allow: Iterable[str] | None = None,
        block: Iterable[str] = (),
        load_entry_points: bool = True,
        logger: Any = None,
    ) -> None:
        self._allow = frozenset(allow) if allow else None
        self._block = frozenset(block)
        self._load_entry_points = load_entry_points
        self._log = logger if logger is not None else _log
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._skipped: dict[str, str] = {}
        self._loaded = False
        self._providers: dict[ProviderKind, dict[str, ProviderRegistration]] | None = None
        self._handlers: list[EventHandlerRegistration] | None = None

    # -- loading ----------------------------------------------------------------------------

    @property
    def hook(self) -> pluggy.HookRelay:
        return self._pm.hook

    @property
    def plugins(self) -> Sequence[PluginInfo]:
        """Loaded plugins, in load order."""
        return tuple(self._plugins.values())

    @property
    def skipped(self) -> Mapping[str, str]:
        """Plugins found but not loaded, with the reason (``blocked``, ``not allowed``)."""
        return MappingProxyType(dict(self._skipped))

    def is_enabled(self, name: str) -> bool:
        """Whether the allow and block lists let a plugin of this name load."""
        if name in self._block:
            return False
        return self._allow is None or name in self._allow

    def load(self) -> PluginManager:
        """Load entry-point plugins (once), then collect and check every registration.

        :raises PluginError: a plugin fails to import, implements an unknown hook, or its
            registration hook fails or registers a duplicate name (DuplicateProviderError).
        """
        if self._load_entry_points and not self._loaded:
            self._load_entry_point_plugins()
        self._loaded = True
        self._collect()
        for name in sorted((self._allow or frozenset()) | self._block):
            if name not in self._plugins and name not in self._skipped:
                # A typo in an allow or block list would otherwise pass silently.
                self._log.warning("plugin_not_installed", plugin=name)
        return self

    def _load_entry_point_plugins(self) -> None:
        seen: dict[str, str] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen:
                if seen[ep.name] == ep.value:
                    continue  # the same distribution found twice on sys.path
                raise PluginError(
                    ep.name,
                    f"two entry points share this name ({seen[ep.name]!r} and {ep.value!r})",
                )
            seen[ep.name] = ep.value
            if not self.is_enabled(ep.name):
                self._skip(ep.name)
                continue
            try:
                module = ep.load()
            except Exception as exc:
                self._log.exception("plugin_import_failed", plugin=ep.name, target=ep.value)
                raise PluginError(
                    ep.name, f"cannot import {ep.value!r}: {type(exc).__name__}: {exc}"
                ) from exc
            dist = ep.dist
            self._add(
                module,
                PluginInfo(
                    name=ep.name,
                    origin="entry_point",
                    target=ep.value,
                    distribution=dist.metadata["Name"] if dist is not None else None,
                    version=dist.version if dist is not None else None,
                ),
            )

    def _skip(self, name: str) -> None:
        reason = "blocked" if name in self._block else "not allowed"
        self._skipped[name] = reason
        self._log.info("plugin_skipped", plugin=name, reason=reason)

    def register_plugin(self, plugin: object, name: str | None = None) -> bool:
        """Add a plugin object (a module or any object with hookimpls) directly.

        The allow and block lists apply to ``name`` as to entry points. Returns False when
        the plugin was skipped by them.

        :raises PluginError: the name is taken or the plugin implements unknown hooks.
        """
        name = name or getattr(plugin, "__name__", None) or type(plugin).__qualname__
        if not self.is_enabled(name):
            self._skip(name)
            return False
        target = getattr(plugin, "__name__", None) or type(plugin).__qualname__
        self._add(plugin, PluginInfo(name=name, origin="object", target=target))
        return True

    def _add(self, plugin: object, info: PluginInfo) -> None:
        if info.name in self._plugins:
            raise PluginError(info.name, "a plugin with this name is already loaded")
        try:
            self._pm.register(plugin, name=info.name)
            # Catches misspelt hook names (classwire_register_blobstores) at load time.
            self._pm.check_pending()
        except (ValueError, pluggy.PluginValidationError) as exc:
            with contextlib.suppress(Exception):
                self._pm.unregister(name=info.name)
            raise PluginError(info.name, str(exc)) from exc
        self._plugins[info.name] = info
        self._providers = None
        self._handlers = None
        self._log.debug("plugin_loaded", plugin=info.name, target=info.target)

    def _collect(self) -> None:
        providers: dict[ProviderKind, dict[str, ProviderRegistration]] = {
            k: {} for k in ProviderKind
        }
        for kind, hook_name in HOOK_FOR_KIND.items():
            table = providers[kind]
            for plugin_name, impl in self._impls(hook_name):

                def register(
                    name: str,
                    factory: ProviderFactory,
                    *,
                    description: str = "",
                    _kind: ProviderKind = kind,
                    _plugin: str = plugin_name,
                    _table: dict[str, ProviderRegistration] = table,
                ) -> None:
                    if not isinstance(name, str) or not name:
                        raise PluginError(_plugin, f"{_kind.value} provider name must be a string")
                    if not callable(factory):
                        raise PluginError(_plugin, f"factory for {name!r} is not callable")
                    if name in _table:
                        raise DuplicateProviderError(_kind, name, _table[name].plugin, _plugin)
                    _table[name] = ProviderRegistration(_kind, name, factory, _plugin, description)

                self._call_impl(plugin_name, hook_name, impl, register)

        handlers: list[EventHandlerRegistration] = []
        seen: dict[str, str] = {}
        hook_name = "classwire_register_event_handlers"
        for plugin_name, impl in self._impls(hook_name):

            def register_handler(
                name: str,
                handler: EventHandler,
                *,
                event_types: Sequence[str] | None = None,
                _plugin: str = plugin_name,
            ) -> None:
                if not _is_async_callable(handler):
                    raise PluginError(_plugin, f"event handler {name!r} must be an async callable")
                if isinstance(event_types, str):
                    raise PluginError(_plugin, f"event_types of {name!r} must be a sequence")
                if name in seen:
                    raise PluginError(
                        _plugin, f"event handler {name!r} is already registered by {seen[name]!r}"
                    )
                seen[name] = _plugin
                types = tuple(event_types) if event_types else None
                handlers.append(EventHandlerRegistration(name, handler, _plugin, types))

            self._call_impl(plugin_name, hook_name, impl, register_handler)

        self._providers = providers
        self._handlers = handlers

    def _impls(self, hook_name: str) -> list[tuple[str, pluggy.HookImpl]]:
        # Calling each implementation ourselves, rather than the hook as a whole, tells us
        # which plugin registered what: needed for duplicate errors and for blame on failure.
        caller = getattr(self._pm.hook, hook_name)
        # get_hookimpls() is in registration (load) order; wrappers register nothing.
        impls = caller.get_hookimpls()
        return [(i.plugin_name, i) for i in impls if not (i.hookwrapper or i.wrapper)]

    def _call_impl(
        self, plugin_name: str, hook_name: str, impl: pluggy.HookImpl, register: Callable
    ) -> None:
        kwargs = {arg: register for arg in impl.argnames if arg == "register"}
        try:
            impl.function(**kwargs)
        except PluginError:
            raise
        except Exception as exc:
            self._log.exception("plugin_hook_failed", plugin=plugin_name, hook=hook_name)
            raise PluginError(
                plugin_name, f"{hook_name} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _ensure(self) -> tuple[dict[ProviderKind, dict[str, ProviderRegistration]], list]:
        if self._providers is None or self._handlers is None:
            self.load()
        assert self._providers is not None and self._handlers is not None
        return self._providers, self._handlers

    # -- queries ----------------------------------------------------------------------------

    def registrations(self, kind: ProviderKind | str) -> Mapping[str, ProviderRegistration]:
        """Registered providers of ``kind`` by name."""
        providers, _ = self._ensure()
        return MappingProxyType(providers[ProviderKind(kind)])

    def names(self, kind: ProviderKind | str) -> list[str]:
        """Sorted names of the registered providers of ``kind``."""
        return sorted(self.registrations(kind))

    def event_handlers(self, event_type: str | None = None) -> list[EventHandlerRegistration]:
        """Registered event handlers, only those selecting ``event_type`` when given."""
        _, handlers = self._ensure()
        if event_type is None:
            return list(handlers)
        return [h for h in handlers if h.matches(event_type)]

    # -- creating providers -----------------------------------------------------------------

    def create(
        self,
        kind: ProviderKind | str,
        name: str,
        *,
        data_dir: Path | str,
        database_url: str,
        options: Mapping[str, Any] | None = None,
        logger: Any = None,
        key: str | None = None,
    ) -> Any:
        """Build the provider of ``kind`` registered as ``name``; the caller then awaits its
        ``start()`` and, at shutdown, ``close()``.

        :param key: the configuration key that chose ``name``, for error messages;
            defaults to :func:`config_key`.
        :raises ConfigError: ``name`` is unknown (the message lists the available names) or the
            factory rejects its options (ValueError/TypeError/KeyError from the factory; the
            key is then :func:`options_key`).
        :raises ProviderError: the factory fails otherwise or returns the wrong type.
        """
        kind = ProviderKind(kind)
        key = key or config_key(kind)
        registrations = self.registrations(kind)
        registration = registrations.get(name)
        if registration is None:
            available = ", ".join(sorted(registrations)) or "none (no plugin registers any)"
            raise ConfigError(
                key, f"unknown {kind.value} provider {name!r}; available: {available}"
            )
        base_logger = logger if logger is not None else structlog.get_logger("classwire.providers")
        context = ProviderContext(
            data_dir=Path(data_dir),
            database_url=database_url,
            options=MappingProxyType(dict(options or {})),
            logger=base_logger.bind(provider_kind=kind.value, provider=name),
            name=name,
            kind=kind,
        )
        try:
            provider = registration.factory(context)
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(options_key(kind, name), str(exc)) from exc
        except Exception as exc:
            self._log.exception("provider_create_failed", provider_kind=kind.value, provider=name)
            raise ProviderError(kind.value, name, "create", f"{type(exc).__name__}: {exc}") from exc
        if inspect.isawaitable(provider):
            if inspect.iscoroutine(provider):
                provider.close()  # no "never awaited" warning on top of the real error
            raise ProviderError(
                kind.value,
                name,
                "create",
                "the factory returned an awaitable; factories are synchronous, "
                "do asynchronous set-up in start()",
            )
        interface = INTERFACE_FOR_KIND[kind]
        if not isinstance(provider, interface):
            raise ProviderError(
                kind.value,
                name,
                "create",
                f"the factory returned {type(provider).__qualname__}, "
                f"not a {interface.__qualname__}",
            )
        return provider

    async def dispatch_event(self, event: Event) -> list[tuple[str, BaseException]]:
        """Call every handler that selects ``event.type``, one after another, isolating each.

        Returns the handlers that failed with their exception (already logged); the caller
        decides whether to retry. Cancellation propagates.
        """
        failures: list[tuple[str, BaseException]] = []
        for registration in self.event_handlers(event.type):
            try:
                await registration.handler(event)
            except Exception as exc:  # noqa: BLE001 - one handler's bug must not stop the rest
                self._log.exception(
                    "event_handler_failed",
                    handler=registration.name,
                    plugin=registration.plugin,
                    event_id=event.id,
                    event_type=event.type,
                )
                failures.append((registration.name, exc))
        return failures
