"""platform.v1 protos <-> platform domain values."""

from __future__ import annotations

from classwire.api.platform.v1 import resources_pb2 as pb

from ..domain.platform import EndpointView, TenantSettings, TenantView
from ..store.models import ApiKey, SigningKey, WebhookSecret
from .common import duration_or_none, set_duration, set_time


def settings_from_proto(
    message: pb.TenantSettings, base: TenantSettings | None = None
) -> TenantSettings:
    """Settings from a proto; unset fields keep `base` (or the defaults)."""
    base = base or TenantSettings()
    values = {}
    grace = duration_or_none(message, "reconnect_grace")
    if grace is not None:
        values["reconnect_grace"] = grace
    ttl = duration_or_none(message, "default_join_token_ttl")
    if ttl is not None:
        values["default_join_token_ttl"] = ttl
    for name in (
        "require_recording_consent",
        "default_transcription_engine",
        "default_transcription_language",
        "default_time_zone",
        "rate_limit_per_second",
        "rate_limit_burst",
    ):
        value = getattr(message, name)
        if value:
            values[name] = value
    return TenantSettings(**{**base.__dict__, **values})


def settings_to_proto(settings: TenantSettings) -> pb.TenantSettings:
    message = pb.TenantSettings(
        require_recording_consent=settings.require_recording_consent,
        default_transcription_engine=settings.default_transcription_engine,
        default_transcription_language=settings.default_transcription_language,
        default_time_zone=settings.default_time_zone,
        rate_limit_per_second=settings.rate_limit_per_second,
        rate_limit_burst=settings.rate_limit_burst,
    )
    set_duration(message.reconnect_grace, settings.reconnect_grace)
    set_duration(message.default_join_token_ttl, settings.default_join_token_ttl)
    return message


def tenant_to_proto(view: TenantView) -> pb.Tenant:
    message = pb.Tenant(
        id=view.tenant.id,
        display_name=view.tenant.display_name,
        settings=settings_to_proto(view.settings),
    )
    set_time(message.create_time, view.tenant.create_time)
    set_time(message.update_time, view.tenant.update_time)
    return message


def api_key_to_proto(key: ApiKey) -> pb.ApiKey:
    message = pb.ApiKey(id=key.id, display_name=key.display_name, scopes=list(key.scopes))
    set_time(message.create_time, key.create_time)
    set_time(message.last_use_time, key.last_use_time)
    set_time(message.expire_time, key.expire_time)
    set_time(message.revoke_time, key.revoke_time)
    return message


def signing_key_to_proto(key: SigningKey, primary_id: str) -> pb.SigningKey:
    message = pb.SigningKey(id=key.id, primary=key.id == primary_id)
    set_time(message.create_time, key.create_time)
    set_time(message.retire_time, key.retire_time)
    return message


def _secret_to_proto(secret: WebhookSecret) -> pb.WebhookSecret:
    message = pb.WebhookSecret(id=secret.id)
    set_time(message.create_time, secret.create_time)
    set_time(message.expire_time, secret.expire_time)
    return message


def endpoint_to_proto(view: EndpointView) -> pb.WebhookEndpoint:
    e = view.endpoint
    message = pb.WebhookEndpoint(
        id=e.id,
        url=e.url,
        event_types=list(e.event_types),
        description=e.description,
        state=pb.WEBHOOK_ENDPOINT_STATE_ENABLED
        if e.enabled
        else pb.WEBHOOK_ENDPOINT_STATE_DISABLED,
        disabled_reason=e.disabled_reason,
        secrets=[_secret_to_proto(s) for s in view.secrets],
    )
    set_time(message.create_time, e.create_time)
    set_time(message.update_time, e.update_time)
    return message
