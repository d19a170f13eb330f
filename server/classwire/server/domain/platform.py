"""Tenants, API keys, participant-token signing keys and webhook endpoints."""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from classwire.api.events.v1 import platform_events_pb2 as ev

from ..events.catalogue import is_event_type
from ..events.outbox import UnitOfWorkFactory
from ..store import repositories as repo
from ..store.engine import Database
from ..store.models import ApiKey, SigningKey, Tenant, WebhookEndpoint, WebhookSecret
from ..store.types import utcnow
from . import paging, tokens
from .auth import ADMIN, OPERATOR, Principal, hash_secret, new_api_key_secret, validate_scopes
from .errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Violations
from .idempotency import IdempotencyKey, run_idempotent
from .ids import new_id

MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_URL = 2048
DEFAULT_SECRET_OVERLAP = timedelta(hours=24)
MAX_SECRET_OVERLAP = timedelta(days=7)


@dataclass(frozen=True)
class TenantSettings:
    reconnect_grace: timedelta = timedelta(seconds=20)
    require_recording_consent: bool = False
    default_transcription_engine: str = ""
    default_transcription_language: str = "en-US"
    default_time_zone: str = "UTC"
    default_join_token_ttl: timedelta = timedelta(hours=1)
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 0

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("reconnect_grace", "default_join_token_ttl"):
            data[name] = data[name].total_seconds()
        return data

    @classmethod
    def from_json(cls, data: dict) -> TenantSettings:
        values = dict(data)
        for name in ("reconnect_grace", "default_join_token_ttl"):
            if name in values:
                values[name] = timedelta(seconds=values[name])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})

    def validate(self, prefix: str = "settings") -> None:
        problems = Violations()
        if not timedelta(seconds=1) <= self.reconnect_grace <= timedelta(minutes=10):
            problems.add(f"{prefix}.reconnect_grace", "must be between 1 s and 10 min")
        if not timedelta(seconds=30) <= self.default_join_token_ttl <= tokens.MAX_TTL:
            problems.add(f"{prefix}.default_join_token_ttl", "must be between 30 s and 24 h")
        if self.rate_limit_per_second < 0:
            problems.add(f"{prefix}.rate_limit_per_second", "must not be negative")
        if self.rate_limit_burst < 0:
            problems.add(f"{prefix}.rate_limit_burst", "must not be negative")
        if self.default_time_zone:
            from zoneinfo import available_timezones

            if self.default_time_zone not in available_timezones():
                problems.add(f"{prefix}.default_time_zone", "not an IANA time zone name")
        problems.raise_if_any()


@dataclass
class TenantView:
    tenant: Tenant
    settings: TenantSettings


@dataclass
class CreatedTenant:
    tenant: TenantView
    api_key: ApiKey
    secret: str


@dataclass
class CreatedApiKey:
    api_key: ApiKey
    secret: str


@dataclass
class EndpointView:
    endpoint: WebhookEndpoint
    secrets: list[WebhookSecret] = field(default_factory=list)


@dataclass
class CreatedEndpoint:
    endpoint: EndpointView
    secret: str


def _name(problems: Violations, field_name: str, value: str) -> None:
    if not value.strip():
        problems.add(field_name, "is required")
    elif len(value) > MAX_NAME:
        problems.add(field_name, f"must be at most {MAX_NAME} characters")


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class PlatformDomain:
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        *,
        own_addresses: Callable[[], list[tuple[str, int]]] = list,
    ) -> None:
        self.db = db
        self.uow = uow
        # host:port pairs this server answers on; webhooks may not point at them.
        self.own_addresses = own_addresses
        # Called with a key id after an API key or signing key stops being valid, so
        # credential caches on this replica forget it at once.
        self.credential_revoked: Callable[[str], None] = lambda _key_id: None

    # Tenants ---------------------------------------------------------------------------------

    async def create_tenant(
        self,
        principal: Principal | None,
        display_name: str,
        settings: TenantSettings,
        idempotency: IdempotencyKey | None = None,
        *,
        operator: bool = False,
    ) -> CreatedTenant:
        problems = Violations()
        _name(problems, "display_name", display_name)
        problems.raise_if_any()
        settings.validate()
        owner = principal.tenant_id if principal else ""

        async def body(uow) -> CreatedTenant:
            now = utcnow()
            tenant = Tenant(
                id=new_id("ten"),
                display_name=display_name.strip(),
                settings=settings.to_json(),
                create_time=now,
                update_time=now,
            )
            uow.session.add(tenant)
            await uow.session.flush()  # the rows below reference it
            scopes = [ADMIN, OPERATOR] if operator else [ADMIN]
            key, secret = self._new_api_key(tenant.id, "bootstrap admin", scopes, None, now)
            uow.session.add(key)
            uow.session.add(
                SigningKey(
                    id=new_id("sk"),
                    tenant_id=tenant.id,
                    secret=tokens.new_signing_secret(),
                    create_time=now,
                    retire_time=None,
                )
            )
            # The tenant's own log opens with its creation.
            created = uow.__class__(uow.session, tenant.id, uow.actor)
            created.emit(ev.TenantCreated(tenant_id=tenant.id, display_name=tenant.display_name))
            created.emit(
                ev.ApiKeyCreated(api_key_id=key.id, display_name=key.display_name, scopes=scopes)
            )
            await created.write_pending()
            return CreatedTenant(TenantView(tenant, settings), key, secret)

        return await run_idempotent(lambda: self.uow(owner), idempotency, body)

    async def get_tenant(self, principal: Principal, tenant_id: str) -> TenantView:
        if tenant_id and tenant_id != principal.tenant_id:
            if not principal.has_scope(OPERATOR):
                raise NotFound(f"tenant {tenant_id!r} not found", reason="TENANT_NOT_FOUND")
        else:
            principal.require("platform:read")
        async with self.db.reader() as session:
            tenant = await repo.get_tenant(session, tenant_id or principal.tenant_id)
        if tenant is None:
            raise NotFound(f"tenant {tenant_id!r} not found", reason="TENANT_NOT_FOUND")
        return TenantView(tenant, TenantSettings.from_json(tenant.settings))

    async def list_tenants(self, principal: Principal, size: int, token: str):
        principal.require(OPERATOR)
        limit = paging.page_size(size)
        after = paging.decode(token)
        async with self.db.reader() as session:
            items = await repo.page(
                session, repo.tenants(), Tenant.create_time, Tenant.id, limit, after
            )
        views = [TenantView(t, TenantSettings.from_json(t.settings)) for t in items]
        return views, paging.next_token(items, limit, "create_time")

    async def update_tenant(
        self,
        principal: Principal,
        tenant_id: str,
        display_name: str | None,
        settings: Callable[[TenantSettings], TenantSettings] | None,
        changed_paths: list[str],
    ) -> TenantView:
        principal.require(ADMIN)
        if tenant_id and tenant_id != principal.tenant_id:
            raise NotFound(f"tenant {tenant_id!r} not found", reason="TENANT_NOT_FOUND")
        if display_name is not None:
            problems = Violations()
            _name(problems, "tenant.display_name", display_name)
            problems.raise_if_any()
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            tenant = await repo.get_tenant(uow.session, principal.tenant_id)
            if tenant is None:
                raise NotFound("tenant not found", reason="TENANT_NOT_FOUND")
            current = TenantSettings.from_json(tenant.settings)
            if settings is not None:
                current = settings(current)
                current.validate("tenant.settings")
                tenant.settings = current.to_json()
            if display_name is not None:
                tenant.display_name = display_name.strip()
            tenant.update_time = utcnow()
            uow.emit(ev.TenantUpdated(tenant_id=tenant.id, changed_paths=changed_paths))
        return TenantView(tenant, current)

    # API keys --------------------------------------------------------------------------------

    @staticmethod
    def _new_api_key(
        tenant_id: str, name: str, scopes: list[str], expire: datetime | None, now: datetime
    ) -> tuple[ApiKey, str]:
        key_id = new_id("key")
        secret = new_api_key_secret(key_id)
        key = ApiKey(
            id=key_id,
            tenant_id=tenant_id,
            display_name=name,
            secret_hash=hash_secret(secret),
            scopes=scopes,
            create_time=now,
            last_use_time=None,
            expire_time=expire,
            revoke_time=None,
        )
        return key, secret

    async def create_api_key(
        self,
        principal: Principal,
        display_name: str,
        scopes: list[str],
        expire_time: datetime | None,
        idempotency: IdempotencyKey | None,
    ) -> CreatedApiKey:
        principal.require(ADMIN)
        problems = Violations()
        _name(problems, "display_name", display_name)
        if expire_time is not None and expire_time <= utcnow():
            problems.add("expire_time", "must be in the future")
        problems.raise_if_any()
        if OPERATOR in scopes:
            raise InvalidArgument(
                FieldViolation(
                    f"scopes[{scopes.index(OPERATOR)}]",
                    "the operator scope is granted only by "
                    "`classwire admin create-tenant --operator`",
                )
            )
        clean_scopes = validate_scopes(list(scopes))

        async def body(uow) -> CreatedApiKey:
            key, secret = self._new_api_key(
                principal.tenant_id, display_name.strip(), clean_scopes, expire_time, utcnow()
            )
            uow.session.add(key)
            uow.emit(
                ev.ApiKeyCreated(
                    api_key_id=key.id, display_name=key.display_name, scopes=clean_scopes
                )
            )
            return CreatedApiKey(key, secret)

        return await run_idempotent(
            lambda: self.uow(principal.tenant_id, actor_of(principal)), idempotency, body
        )

    async def get_api_key(self, principal: Principal, key_id: str) -> ApiKey:
        principal.require("platform:read")
        key = await repo.read_api_key(self.db, principal.tenant_id, key_id)
        if key is None:
            raise NotFound(f"API key {key_id!r} not found", reason="API_KEY_NOT_FOUND")
        return key

    async def list_api_keys(self, principal: Principal, size: int, token: str):
        principal.require("platform:read")
        limit = paging.page_size(size)
        after = paging.decode(token)
        async with self.db.reader() as session:
            items = await repo.page(
                session,
                repo.api_keys(principal.tenant_id),
                ApiKey.create_time,
                ApiKey.id,
                limit,
                after,
                newest_first=True,
            )
        return items, paging.next_token(items, limit, "create_time")

    async def revoke_api_key(self, principal: Principal, key_id: str) -> ApiKey:
        principal.require(ADMIN)
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            key = await repo.get_api_key(uow.session, principal.tenant_id, key_id)
            if key is None:
                raise NotFound(f"API key {key_id!r} not found", reason="API_KEY_NOT_FOUND")
            if key.revoke_time is None:
                key.revoke_time = utcnow()
                uow.emit(ev.ApiKeyRevoked(api_key_id=key.id))
        self.credential_revoked(key.id)
        return key

    # Signing keys ----------------------------------------------------------------------------

    async def rotate_signing_key(self, principal: Principal) -> SigningKey:
        principal.require(ADMIN)
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            key = SigningKey(
                id=new_id("sk"),
                tenant_id=principal.tenant_id,
                secret=tokens.new_signing_secret(),
                create_time=utcnow(),
                retire_time=None,
            )
            uow.session.add(key)
            uow.emit(ev.SigningKeyRotated(signing_key_id=key.id))
        return key

    async def list_signing_keys(self, principal: Principal, size: int, token: str):
        principal.require("platform:read")
        limit = paging.page_size(size)
        after = paging.decode(token)
        async with self.db.reader() as session:
            items = await repo.page(
                session,
                repo.signing_keys(principal.tenant_id),
                SigningKey.create_time,
                SigningKey.id,
                limit,
                after,
                newest_first=True,
            )
            active = await repo.active_signing_keys(session, principal.tenant_id)
        primary = active[0].id if active else ""
        return items, primary, paging.next_token(items, limit, "create_time")

    async def retire_signing_key(self, principal: Principal, key_id: str) -> SigningKey:
        principal.require(ADMIN)
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            key = await repo.get_signing_key(uow.session, principal.tenant_id, key_id)
            if key is None:
                raise NotFound(f"signing key {key_id!r} not found", reason="SIGNING_KEY_NOT_FOUND")
            if key.retire_time is None:
                active = await repo.active_signing_keys(uow.session, principal.tenant_id)
                if active and active[0].id == key.id:
                    raise FailedPrecondition(
                        "the primary signing key can be retired only after RotateSigningKey",
                        reason="LAST_SIGNING_KEY",
                    )
                key.retire_time = utcnow()
                uow.emit(ev.SigningKeyRetired(signing_key_id=key.id))
        self.credential_revoked(key.id)
        return key

    async def primary_signing_key(self, tenant_id: str) -> SigningKey:
        async with self.db.reader() as session:
            active = await repo.active_signing_keys(session, tenant_id)
        if not active:
            raise FailedPrecondition("the tenant has no signing key", reason="NO_SIGNING_KEY")
        return active[0]

    # Webhook endpoints -----------------------------------------------------------------------

    def _validate_endpoint(
        self,
        problems: Violations,
        prefix: str,
        url: str | None,
        types: list[str] | None,
        description: str | None,
    ) -> None:
        if url is not None:
            field_name = f"{prefix}.url"
            parts = urlsplit(url)
            if len(url) > MAX_URL:
                problems.add(field_name, f"must be at most {MAX_URL} characters")
            elif parts.scheme not in ("http", "https") or not parts.hostname:
                problems.add(field_name, "must be an absolute http or https URL")
            else:
                try:
                    port = parts.port or (443 if parts.scheme == "https" else 80)
                except ValueError:
                    problems.add(field_name, "has an invalid port")
                else:
                    if self._is_own_address(parts.hostname, port):
                        problems.add(field_name, "must not point at this platform")
        if types is not None:
            for i, name in enumerate(types):
                if not is_event_type(name):
                    problems.add(f"{prefix}.event_types[{i}]", f"unknown event type {name!r}")
        if description is not None and len(description) > MAX_DESCRIPTION:
            problems.add(f"{prefix}.description", f"must be at most {MAX_DESCRIPTION} characters")

    def _is_own_address(self, host: str, port: int) -> bool:
        host = host.strip("[]").lower()
        try:
            is_local = (
                ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
            )
        except ValueError:
            is_local = host == "localhost" or host.endswith(".localhost")
        for own_host, own_port in self.own_addresses():
            if port != own_port:
                continue
            own_host = own_host.strip("[]").lower()
            if host == own_host or is_local or own_host in ("0.0.0.0", "::", ""):
                return True
        return False

    async def create_webhook_endpoint(
        self,
        principal: Principal,
        url: str,
        event_types: list[str],
        description: str,
        idempotency: IdempotencyKey | None,
    ) -> CreatedEndpoint:
        principal.require("platform:write")
        problems = Violations()
        self._validate_endpoint(problems, "endpoint", url, event_types, description)
        problems.raise_if_any()

        async def body(uow) -> CreatedEndpoint:
            now = utcnow()
            endpoint = WebhookEndpoint(
                id=new_id("whe"),
                tenant_id=principal.tenant_id,
                url=url,
                event_types=sorted(set(event_types)),
                description=description,
                enabled=True,
                disabled_reason="",
                create_time=now,
                update_time=now,
            )
            secret_value = new_webhook_secret()
            secret = WebhookSecret(
                id=new_id("whs"),
                tenant_id=principal.tenant_id,
                endpoint_id=endpoint.id,
                secret=secret_value,
                create_time=now,
                expire_time=None,
            )
            uow.session.add(endpoint)
            await uow.session.flush()
            uow.session.add(secret)
            uow.emit(
                ev.WebhookEndpointCreated(
                    endpoint_id=endpoint.id, url=url, event_types=endpoint.event_types
                )
            )
            return CreatedEndpoint(EndpointView(endpoint, [secret]), secret_value)

        return await run_idempotent(
            lambda: self.uow(principal.tenant_id, actor_of(principal)), idempotency, body
        )

    async def _with_secrets(self, session, endpoints: list[WebhookEndpoint]) -> list[EndpointView]:
        tenant_secrets = await repo.webhook_secrets(
            session, endpoints[0].tenant_id if endpoints else "", [e.id for e in endpoints]
        )
        now = utcnow()
        views = {e.id: EndpointView(e) for e in endpoints}
        for secret in tenant_secrets:
            if secret.expire_time is None or secret.expire_time > now:
                views[secret.endpoint_id].secrets.append(secret)
        return [views[e.id] for e in endpoints]

    async def get_webhook_endpoint(self, principal: Principal, endpoint_id: str) -> EndpointView:
        principal.require("platform:read")
        async with self.db.reader() as session:
            endpoint = await repo.get_webhook_endpoint(session, principal.tenant_id, endpoint_id)
            if endpoint is None:
                raise NotFound(
                    f"webhook endpoint {endpoint_id!r} not found",
                    reason="WEBHOOK_ENDPOINT_NOT_FOUND",
                )
            return (await self._with_secrets(session, [endpoint]))[0]

    async def list_webhook_endpoints(self, principal: Principal, size: int, token: str):
        principal.require("platform:read")
        limit = paging.page_size(size)
        after = paging.decode(token)
        async with self.db.reader() as session:
            items = await repo.page(
                session,
                repo.webhook_endpoints(principal.tenant_id),
                WebhookEndpoint.create_time,
                WebhookEndpoint.id,
                limit,
                after,
            )
            views = await self._with_secrets(session, items)
        return views, paging.next_token(items, limit, "create_time")

    async def update_webhook_endpoint(
        self,
        principal: Principal,
        endpoint_id: str,
        *,
        url: str | None = None,
        event_types: list[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
        changed_paths: list[str],
    ) -> EndpointView:
        principal.require("platform:write")
        problems = Violations()
        self._validate_endpoint(problems, "endpoint", url, event_types, description)
        problems.raise_if_any()
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            endpoint = await repo.get_webhook_endpoint(
                uow.session, principal.tenant_id, endpoint_id
            )
            if endpoint is None:
                raise NotFound(
                    f"webhook endpoint {endpoint_id!r} not found",
                    reason="WEBHOOK_ENDPOINT_NOT_FOUND",
                )
            if url is not None:
                endpoint.url = url
            if event_types is not None:
                endpoint.event_types = sorted(set(event_types))
            if description is not None:
                endpoint.description = description
            if enabled is not None:
                endpoint.enabled = enabled
                endpoint.disabled_reason = "" if enabled else "disabled by the tenant"
            endpoint.update_time = utcnow()
            uow.emit(
                ev.WebhookEndpointUpdated(endpoint_id=endpoint.id, changed_paths=changed_paths)
            )
            view = (await self._with_secrets(uow.session, [endpoint]))[0]
        return view

    async def delete_webhook_endpoint(self, principal: Principal, endpoint_id: str) -> None:
        principal.require("platform:write")
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            endpoint = await repo.get_webhook_endpoint(
                uow.session, principal.tenant_id, endpoint_id
            )
            if endpoint is None:
                raise NotFound(
                    f"webhook endpoint {endpoint_id!r} not found",
                    reason="WEBHOOK_ENDPOINT_NOT_FOUND",
                )
            await uow.session.delete(endpoint)
            uow.emit(ev.WebhookEndpointDeleted(endpoint_id=endpoint_id))

    async def rotate_webhook_secret(
        self, principal: Principal, endpoint_id: str, overlap: timedelta | None
    ) -> tuple[EndpointView, str]:
        principal.require("platform:write")
        overlap = DEFAULT_SECRET_OVERLAP if overlap is None else overlap
        if not timedelta(0) <= overlap <= MAX_SECRET_OVERLAP:
            raise InvalidArgument(FieldViolation("overlap", "must be between 0 and 7 days"))
        async with self.uow(principal.tenant_id, actor_of(principal)) as uow:
            endpoint = await repo.get_webhook_endpoint(
                uow.session, principal.tenant_id, endpoint_id
            )
            if endpoint is None:
                raise NotFound(
                    f"webhook endpoint {endpoint_id!r} not found",
                    reason="WEBHOOK_ENDPOINT_NOT_FOUND",
                )
            now = utcnow()
            expire = now + overlap
            for old in await repo.webhook_secrets(uow.session, principal.tenant_id, [endpoint.id]):
                if old.expire_time is None or old.expire_time > expire:
                    old.expire_time = expire
            value = new_webhook_secret()
            secret = WebhookSecret(
                id=new_id("whs"),
                tenant_id=principal.tenant_id,
                endpoint_id=endpoint.id,
                secret=value,
                create_time=now,
                expire_time=None,
            )
            uow.session.add(secret)
            await uow.session.flush()
            event = ev.WebhookSecretRotated(endpoint_id=endpoint.id, secret_id=secret.id)
            event.old_secrets_expire_time.FromDatetime(expire)
            uow.emit(event)
            view = (await self._with_secrets(uow.session, [endpoint]))[0]
        return view, value


def actor_of(principal: Principal):
    from classwire.api.common.v1 import common_pb2

    if principal.participant is not None:
        return common_pb2.Actor(
            kind=common_pb2.Actor.KIND_PARTICIPANT,
            id=principal.participant.participant_id,
            identity=principal.participant.identity,
        )
    return common_pb2.Actor(kind=common_pb2.Actor.KIND_API_KEY, id=principal.api_key_id)


__all__ = ["PlatformDomain", "TenantSettings", "replace"]
