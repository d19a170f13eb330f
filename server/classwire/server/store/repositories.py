"""Queries for the platform area. Every function takes the caller's AsyncSession and never
commits: the unit of work owns the transaction. Every tenant-owned lookup filters on tenant_id,
so another tenant's id behaves exactly like a missing one."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import ApiKey, IdempotencyRecord, SigningKey, Tenant, WebhookEndpoint, WebhookSecret

T = TypeVar("T")


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant | None:
    return await session.get(Tenant, tenant_id)


async def page(
    session: AsyncSession,
    query: Select,
    time_column,
    id_column,
    limit: int,
    after: tuple[datetime, str] | None,
    newest_first: bool = False,
) -> list:
    """Keyset pagination on (time, id): stable under concurrent inserts, no OFFSET scans."""
    if after is not None:
        at, last_id = after
        if newest_first:
            query = query.where(
                or_(time_column < at, and_(time_column == at, id_column < last_id))
            )
        else:
            query = query.where(
                or_(time_column > at, and_(time_column == at, id_column > last_id))
            )
    order = (time_column.desc(), id_column.desc()) if newest_first else (time_column, id_column)
    return list((await session.scalars(query.order_by(*order).limit(limit))).all())


def tenants() -> Select:
    return select(Tenant)


async def get_api_key(session: AsyncSession, tenant_id: str, key_id: str) -> ApiKey | None:
    return await session.scalar(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.id == key_id)
    )


async def find_api_key(session: AsyncSession, key_id: str) -> ApiKey | None:
    """Looks a key up by id alone: used to authenticate, before the tenant is known."""
    return await session.get(ApiKey, key_id)


def api_keys(tenant_id: str) -> Select:
    return select(ApiKey).where(ApiKey.tenant_id == tenant_id)


async def get_signing_key(session: AsyncSession, tenant_id: str, key_id: str) -> SigningKey | None:
    return await session.scalar(
        select(SigningKey).where(SigningKey.tenant_id == tenant_id, SigningKey.id == key_id)
    )


async def find_signing_key(session: AsyncSession, key_id: str) -> SigningKey | None:
    return await session.get(SigningKey, key_id)


def signing_keys(tenant_id: str) -> Select:
    return select(SigningKey).where(SigningKey.tenant_id == tenant_id)


async def active_signing_keys(session: AsyncSession, tenant_id: str) -> list[SigningKey]:
    query = (
        signing_keys(tenant_id)
        .where(SigningKey.retire_time.is_(None))
        .order_by(SigningKey.create_time.desc(), SigningKey.id.desc())
    )
    return list((await session.scalars(query)).all())


async def get_webhook_endpoint(
    session: AsyncSession, tenant_id: str, endpoint_id: str
) -> WebhookEndpoint | None:
    return await session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id
        )
    )


def webhook_endpoints(tenant_id: str) -> Select:
    return select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)


async def webhook_secrets(
    session: AsyncSession, tenant_id: str, endpoint_ids: list[str]
) -> list[WebhookSecret]:
    if not endpoint_ids:
        return []
    query = (
        select(WebhookSecret)
        .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.endpoint_id.in_(endpoint_ids))
        .order_by(WebhookSecret.create_time, WebhookSecret.id)
    )
    return list((await session.scalars(query)).all())


async def get_idempotency_record(
    session: AsyncSession, tenant_id: str, method: str, request_id: str
) -> IdempotencyRecord | None:
    return await session.get(IdempotencyRecord, (tenant_id, method, request_id))
