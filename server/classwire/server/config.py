"""Typed configuration from `CLASSWIRE_*` environment variables and an optional TOML file.

Precedence: environment over file over defaults. Every value is validated at start; a bad one
raises ConfigError naming its key, and `classwire serve` exits with status 2.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing or invalid; `key` names it as the user wrote it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"  # empty disables the Prometheus endpoint
    data_dir: Path = Path(".data")
    database_url: str = ""  # empty: SQLite in data_dir
    log_format: str = "auto"  # auto (JSON unless a TTY), json, console
    log_level: str = "info"
    shutdown_grace: timedelta = timedelta(seconds=15)
    max_message_bytes: int = 16 * 1024 * 1024
    keepalive_time: timedelta = timedelta(seconds=30)
    keepalive_timeout: timedelta = timedelta(seconds=10)
    rate_limit_per_second: float = 200.0
    rate_limit_burst: int = 400
    bootstrap: bool = True  # create a first tenant and print its key when the database is empty
    token_issuer: str = "classwire"
    api_key_cache_ttl: timedelta = timedelta(seconds=5)
    # Provider kind -> provider name, and provider name -> its options.
    providers: Mapping[str, str] = field(default_factory=dict)
    # Provider kind -> the key that chose it, as the user wrote it (for error messages).
    provider_keys: Mapping[str, str] = field(default_factory=dict)
    provider_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    plugins_allow: tuple[str, ...] = ()
    plugins_block: tuple[str, ...] = ()
    # Media plane: how often quality samples are recorded, and the talk-time voice detector
    # (speech starts above `talk_on_dbov`, goes on above `talk_off_dbov`, ends after the
    # hangover; shorter intervals are dropped).
    media_quality_sample_period: timedelta = timedelta(seconds=10)
    talk_on_dbov: float = -45.0
    talk_off_dbov: float = -52.0
    talk_hangover: timedelta = timedelta(milliseconds=300)
    talk_min_interval: timedelta = timedelta(milliseconds=250)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'classwire.db').resolve()}"


DEFAULT_PROVIDERS = {
    "blob_store": "localfs",
    "event_bus": "memory_bus",
    "matcher": "cpsat",
    "media_backend": "aiortc_sfu",
    # Post-session report summaries (domain/reports.py), created on first use.
    "summarizer": "extractive",
}


def _host_port(key: str, value: str, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"expected host:port, got {value!r}")
    return value


def _seconds(key: str, value: Any, minimum: float = 0.0) -> timedelta:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected a number of seconds, got {value!r}") from None
    if seconds < minimum:
        raise ConfigError(key, f"must be at least {minimum} seconds, got {value!r}")
    return timedelta(seconds=seconds)


def _positive_int(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected an integer, got {value!r}") from None
    if number <= 0:
        raise ConfigError(key, f"must be positive, got {value!r}")
    return number


def _positive_float(key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected a number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(key, f"must be positive, got {value!r}")
    return number


def _dbov(key: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected a level in dBov, got {value!r}") from None
    if not -127.0 <= number <= 0.0:
        raise ConfigError(key, f"must be between -127 and 0 dBov, got {value!r}")
    return number


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    text = str(value).lower()
    if text not in choices:
        raise ConfigError(key, f"expected one of {', '.join(choices)}, got {value!r}")
    return text


def _database_url(key: str, value: str) -> str:
    if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            key, f"expected a sqlite+aiosqlite:// or postgresql+asyncpg:// URL, got {value!r}"
        )
    return value


def _names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, list):
        items = [str(part).strip() for part in value]
    else:
        raise ConfigError(key, f"expected a list of names, got {value!r}")
    return tuple(item for item in items if item)


# Scalar settings: (file key, environment variable, parser).
_SCALARS: dict[str, tuple[str, Any]] = {
    "listen": ("CLASSWIRE_LISTEN", lambda k, v: _host_port(k, str(v))),
    "metrics_listen": (
        "CLASSWIRE_METRICS_LISTEN",
        lambda k, v: _host_port(k, str(v), allow_empty=True),
    ),
    "data_dir": ("CLASSWIRE_DATA_DIR", lambda k, v: Path(str(v)).expanduser()),
    "database_url": ("CLASSWIRE_DATABASE_URL", lambda k, v: _database_url(k, str(v))),
    "log_format": ("CLASSWIRE_LOG_FORMAT", lambda k, v: _choice(k, v, ("auto", "json", "console"))),
    "log_level": (
        "CLASSWIRE_LOG_LEVEL",
        lambda k, v: _choice(k, v, ("debug", "info", "warning", "error")),
    ),
    "shutdown_grace": ("CLASSWIRE_SHUTDOWN_GRACE_SECONDS", _seconds),
    "max_message_bytes": ("CLASSWIRE_MAX_MESSAGE_BYTES", _positive_int),
    "keepalive_time": ("CLASSWIRE_KEEPALIVE_SECONDS", lambda k, v: _seconds(k, v, 1)),
    "keepalive_timeout": ("CLASSWIRE_KEEPALIVE_TIMEOUT_SECONDS", lambda k, v: _seconds(k, v, 1)),
    "rate_limit_per_second": ("CLASSWIRE_RATE_LIMIT_PER_SECOND", _positive_float),
    "rate_limit_burst": ("CLASSWIRE_RATE_LIMIT_BURST", _positive_int),
    "bootstrap": ("CLASSWIRE_BOOTSTRAP", _bool),
    "token_issuer": ("CLASSWIRE_TOKEN_ISSUER", lambda k, v: str(v)),
    "api_key_cache_ttl": ("CLASSWIRE_API_KEY_CACHE_SECONDS", _seconds),
    "plugins_allow": ("CLASSWIRE_PLUGINS_ALLOW", _names),
    "plugins_block": ("CLASSWIRE_PLUGINS_BLOCK", _names),
    "media_quality_sample_period": (
        "CLASSWIRE_MEDIA_QUALITY_SAMPLE_SECONDS",
        lambda k, v: _seconds(k, v, 0.1),
    ),
    "talk_on_dbov": ("CLASSWIRE_TALK_ON_DBOV", _dbov),
    "talk_off_dbov": ("CLASSWIRE_TALK_OFF_DBOV", _dbov),
    "talk_hangover": ("CLASSWIRE_TALK_HANGOVER_SECONDS", _seconds),
    "talk_min_interval": ("CLASSWIRE_TALK_MIN_INTERVAL_SECONDS", _seconds),
}
_FILE_KEY_ALIASES = {
    "shutdown_grace": "shutdown_grace_seconds",
    "keepalive_time": "keepalive_seconds",
    "keepalive_timeout": "keepalive_timeout_seconds",
    "api_key_cache_ttl": "api_key_cache_seconds",
    "media_quality_sample_period": "media_quality_sample_seconds",
    "talk_hangover": "talk_hangover_seconds",
    "talk_min_interval": "talk_min_interval_seconds",
}


def load_config(
    environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Config:
    """Builds the configuration; raises ConfigError naming the first bad key."""
    environ = os.environ if environ is None else environ
    path = config_file or environ.get("CLASSWIRE_CONFIG")
    file_values: dict[str, Any] = {}
    if path:
        try:
            file_values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError("CLASSWIRE_CONFIG", f"file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("CLASSWIRE_CONFIG", f"not valid TOML: {exc}") from None

    known_file_keys = {_FILE_KEY_ALIASES.get(n, n) for n in _SCALARS} | {"providers", "plugins"}
    for key in file_values:
        if key not in known_file_keys:
            raise ConfigError(key, f"unknown setting in {path}")

    values: dict[str, Any] = {}
    for name, (env_key, parse) in _SCALARS.items():
        file_key = _FILE_KEY_ALIASES.get(name, name)
        if env_key in environ:
            values[name] = parse(env_key, environ[env_key])
        elif file_key in file_values:
            values[name] = parse(file_key, file_values[file_key])

    plugins = file_values.get("plugins", {})
    if "allow" in plugins and "plugins_allow" not in values:
        values["plugins_allow"] = _names("plugins.allow", plugins["allow"])
    if "block" in plugins and "plugins_block" not in values:
        values["plugins_block"] = _names("plugins.block", plugins["block"])

    # [providers] blob_store = "localfs" picks a provider; [providers.localfs] holds its options.
    providers = dict(DEFAULT_PROVIDERS)
    provider_keys = {kind: f"providers.{kind}" for kind in providers}
    options: dict[str, dict[str, Any]] = {}
    for key, value in file_values.get("providers", {}).items():
        if isinstance(value, dict):
            options[key] = value
        elif isinstance(value, str) and value:
            providers[key] = value
            provider_keys[key] = f"providers.{key}"
        else:
            raise ConfigError(f"providers.{key}", f"expected a provider name, got {value!r}")
    for env_key, value in environ.items():
        if env_key.startswith("CLASSWIRE_PROVIDER_") and value:
            kind = env_key.removeprefix("CLASSWIRE_PROVIDER_").lower()
            providers[kind] = value
            provider_keys[kind] = env_key
    values["providers"] = providers
    values["provider_keys"] = provider_keys
    values["provider_options"] = options
    return Config(**values)
