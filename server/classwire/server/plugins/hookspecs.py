"""The plugin contract: every hook a classwire plugin may implement.

Hooks are synchronous (pluggy does not await coroutines). Each registration hook receives a
``register`` callback; a plugin calls it once per provider it offers, with a name that
configuration uses to pick it and a factory that builds it from a
:class:`~classwire.server.plugins.types.ProviderContext`. Provider methods are ``async``.

None of these hooks is ``firstresult``: the host calls every implementation, and a plugin may
register any number of providers (or none) from each hook.
"""

from __future__ import annotations

import pluggy

from classwire.server.plugins.types import Register, RegisterEventHandler

PROJECT_NAME = "classwire"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def classwire_register_blob_stores(register: Register) -> None:
    """Register blob-storage providers (recordings, exports, attachments).

    :param register: ``register(name, factory, *, description="")``; ``factory(context)``
        returns a :class:`~classwire.server.plugins.types.BlobStore`.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """


@hookspec
def classwire_register_event_buses(register: Register) -> None:
    """Register event buses that wake tasks and replicas up when events commit.

    :param register: ``register(name, factory, *, description="")``; ``factory(context)``
        returns an :class:`~classwire.server.plugins.types.EventBus`.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """


@hookspec
def classwire_register_media_backends(register: Register) -> None:
    """Register media backends (SFUs, media servers) that carry WebRTC audio and video.

    :param register: ``register(name, factory, *, description="")``; ``factory(context)``
        returns a :class:`~classwire.server.plugins.types.MediaBackend`.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """


@hookspec
def classwire_register_transcription_engines(register: Register) -> None:
    """Register streaming speech-recognition engines (16 kHz mono PCM in, segments out).

    :param register: ``register(name, factory, *, description="")``; ``factory(context)``
        returns a :class:`~classwire.server.plugins.types.TranscriptionEngine`.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """


@hookspec
def classwire_register_notification_channels(register: Register) -> None:
    """Register notification channels (e-mail, SMS or chat gateways).

    :param register: ``register(name, factory, *, description="")``; ``factory(context)``
        returns a :class:`~classwire.server.plugins.types.NotificationChannel`.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """


@hookspec
def classwire_register_matchers(register: Register) -> None:
    """Register instructor matchers (single-booking choice and bulk assignment).

    :param register: ``register(name, factory, *, description="")``; ``factory(context)``
        returns a :class:`~classwire.server.plugins.types.Matcher`.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """


@hookspec
def classwire_register_summarizers(register: Register) -> None:
    """Register transcript summarizers used by post-session reports.

    :param register: ``register(name, factory, *, description="")``; ``factory(context)``
        returns a :class:`~classwire.server.plugins.types.Summarizer`.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """


@hookspec
def classwire_register_workflows(register: Register) -> None:
    """Register automated workflows that tenants can turn on by name.

    :param register: ``register(name, factory, *, description="")``; ``factory(context)``
        returns a :class:`~classwire.server.plugins.types.Workflow`, whose ``handle`` receives
        committed events of its ``event_types`` and a
        :class:`~classwire.server.plugins.types.WorkflowContext` to act through.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """


@hookspec
def classwire_register_learning_record_stores(register: Register) -> None:
    """Register Learning Record Stores that xAPI statements are pushed to.

    :param register: ``register(name, factory, *, description="")``; ``factory(context)``
        returns a :class:`~classwire.server.plugins.types.LearningRecordStore`.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """


@hookspec
def classwire_register_event_handlers(register: RegisterEventHandler) -> None:
    """Register observers of committed events (audit sinks, metrics, cache invalidation).

    Handlers run after the event is committed, at least once (deduplicate on ``event.id``), for
    every tenant, outside any request; an exception is logged and does not stop other handlers.

    :param register: ``register(name, handler, *, event_types=None)``; ``handler(event)`` is an
        ``async`` callable taking an :class:`~classwire.server.plugins.types.Event`;
        ``event_types`` lists exact types or ``prefix.*`` patterns, None for all events.
    :return: nothing; the return value is ignored. Not firstresult: every implementation runs.
    """
