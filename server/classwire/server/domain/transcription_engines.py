"""The transcription engines the server offers: registered providers, built on first use.

An engine whose provider cannot be built or started (its model files are missing, its options
are wrong) is listed as unavailable with the provider's message, and refused at start with
FAILED_PRECONDITION TRANSCRIPTION_ENGINE_UNAVAILABLE; the other engines are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field

import structlog

from ..plugins.types import ProviderKind, TranscriptionEngine
from .errors import FailedPrecondition, FieldViolation, InvalidArgument

log = structlog.get_logger(__name__)

# The built-in default when neither the tenant nor the server configuration names an engine.
FALLBACK_ENGINE = "pocketsphinx"
# BCP 47 in its common shape (language, optional script/region/variants); the engine decides
# whether it has a model for it.
_BCP47 = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")
MAX_LANGUAGE = 35


@dataclass(frozen=True)
class EngineInfo:
    name: str
    display_name: str
    languages: tuple[str, ...]
    available: bool
    unavailable_message: str = ""


@dataclass
class _Slot:
    engine: TranscriptionEngine | None = None
    error: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class EngineRegistry:
    """Engines by provider name; each is created and started once, on first use."""

    def __init__(self, plugins, config) -> None:
        self.plugins = plugins
        self.config = config
        self._slots: dict[str, _Slot] = {}

    @property
    def server_default(self) -> str:
        return self.config.providers.get(ProviderKind.TRANSCRIPTION_ENGINE.value) or FALLBACK_ENGINE

    def names(self) -> list[str]:
        return self.plugins.names(ProviderKind.TRANSCRIPTION_ENGINE)

    def description(self, name: str) -> str:
        registration = self.plugins.registrations(ProviderKind.TRANSCRIPTION_ENGINE).get(name)
        return (registration.description if registration else "") or name

    async def engine(self, name: str) -> TranscriptionEngine:
        """The started engine; FailedPrecondition TRANSCRIPTION_ENGINE_UNAVAILABLE when it
        cannot run. A failed start is retried on the next call (model files may appear)."""
        slot = self._slots.setdefault(name, _Slot())
        async with slot.lock:
            if slot.engine is None:
                try:
                    engine = self.plugins.create(
                        ProviderKind.TRANSCRIPTION_ENGINE,
                        name,
                        data_dir=self.config.data_dir,
                        database_url=self.config.effective_database_url,
                        options=self.config.provider_options.get(name, {}),
                    )
                    await engine.start()
                except Exception as exc:  # noqa: BLE001 - any provider fault makes it unavailable
                    slot.error = str(exc) or type(exc).__name__
                    log.warning("transcription engine unavailable", engine=name, error=slot.error)
                    raise FailedPrecondition(
                        f"transcription engine {name!r} cannot run: {slot.error}",
                        reason="TRANSCRIPTION_ENGINE_UNAVAILABLE",
                        metadata={"engine": name},
                    ) from None
                slot.engine, slot.error = engine, ""
            return slot.engine

    async def describe(self) -> list[EngineInfo]:
        infos = []
        for name in self.names():
            try:
                engine = await self.engine(name)
                languages = tuple(engine.languages())
                infos.append(EngineInfo(name, self.description(name), languages, True))
            except FailedPrecondition:
                message = self._slots[name].error
                infos.append(EngineInfo(name, self.description(name), (), False, message))
        return infos

    async def resolve(
        self, engine_name: str, language: str, *, engine_field: str, language_field: str
    ) -> tuple[TranscriptionEngine, str]:
        """The engine and the language tag it knows for `language` (an exact match ignoring
        case, or a bare language such as `en` matching the first `en-*` it offers)."""
        if engine_name not in self.names():
            available = ", ".join(self.names()) or "none"
            raise InvalidArgument(
                FieldViolation(
                    engine_field,
                    f"unknown transcription engine {engine_name!r}; available: {available}",
                ),
                reason="TRANSCRIPTION_ENGINE_UNKNOWN",
            )
        if len(language) > MAX_LANGUAGE or not _BCP47.match(language):
            raise InvalidArgument(
                FieldViolation(language_field, f"{language[:40]!r} is not a BCP 47 language tag"),
                reason="TRANSCRIPTION_LANGUAGE_UNSUPPORTED",
            )
        engine = await self.engine(engine_name)
        offered = list(engine.languages())
        wanted = language.lower()
        for tag in offered:
            if tag.lower() == wanted:
                return engine, tag
        if "-" not in wanted:
            for tag in offered:
                if tag.lower().split("-", 1)[0] == wanted:
                    return engine, tag
        raise InvalidArgument(
            FieldViolation(
                language_field,
                f"engine {engine_name!r} does not support {language!r}; "
                f"it supports: {', '.join(offered)}",
            ),
            reason="TRANSCRIPTION_LANGUAGE_UNSUPPORTED",
        )

    async def close(self) -> None:
        for slot in self._slots.values():
            if slot.engine is not None:
                with contextlib.suppress(Exception):
                    await slot.engine.close()
        self._slots.clear()
