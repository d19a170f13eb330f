"""The plugin host: hook specifications, provider interfaces and the plugin manager.

A plugin imports what it needs from here::

    from classwire.server.plugins import hookimpl
    from classwire.server.plugins.types import BlobStore, ProviderContext
"""

from classwire.server.plugins.hookspecs import PROJECT_NAME, hookimpl, hookspec
from classwire.server.plugins.manager import (
    ENTRY_POINT_GROUP,
    DuplicateProviderError,
    PluginError,
    PluginManager,
    call_provider,
    config_key,
    guard_iter,
    options_key,
    provider_guard,
)
from classwire.server.plugins.types import (
    ConfigError,
    ContractError,
    ProviderContext,
    ProviderError,
    ProviderKind,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "ConfigError",
    "ContractError",
    "DuplicateProviderError",
    "PluginError",
    "PluginManager",
    "ProviderContext",
    "ProviderError",
    "ProviderKind",
    "call_provider",
    "config_key",
    "guard_iter",
    "hookimpl",
    "hookspec",
    "options_key",
    "provider_guard",
]
