"""Calendar feed tokens: secrets with which calendar apps read one person's feed without an API
key. Only the SHA-256 of a secret is stored; deleting a token revokes it at once (every read
looks it up)."""

from __future__ import annotations

import secrets
from datetime import timedelta

from ..store import scheduling_repositories as srepo
from ..store.scheduling_models import SchedFeedToken
from ..store.types import utcnow
from . import paging
from .auth import Principal, hash_secret
from .errors import NotFound, ResourceExhausted, Unauthenticated
from .idempotency import IdempotencyKey, run_idempotent
from .ids import new_id

READ, WRITE = "scheduling:read", "scheduling:write"
FEED_TOKEN_PREFIX = "cwcal"
MAX_TOKENS_PER_PERSON = 10
MAX_LABEL = 200
LAST_USE_RESOLUTION = timedelta(minutes=1)


def feed_scope(person_id: str) -> str:
    """The only scope of a principal authenticated by a feed token: it reads that feed."""
    return f"calendar_feed:{person_id}"


class FeedTokensMixin:
    """Part of SchedulingDomain (db, _scope, _person come from it)."""

    public_base_url = ""

    async def create_feed_token(
        self, principal: Principal, person_id: str, label: str, key: IdempotencyKey | None
    ) -> tuple[SchedFeedToken, str]:
        principal.require(WRITE)
        from .errors import FieldViolation, InvalidArgument

        if len(label) > MAX_LABEL:
            raise InvalidArgument(FieldViolation("label", f"at most {MAX_LABEL} characters"))
        tenant = principal.tenant_id

        async def body(uow):
            await self._person(uow.session, tenant, person_id, "person_id")
            if await srepo.count_feed_tokens(uow.session, tenant, person_id) >= (
                MAX_TOKENS_PER_PERSON
            ):
                raise ResourceExhausted(
                    f"a person has at most {MAX_TOKENS_PER_PERSON} feed tokens",
                    reason="TOO_MANY_FEED_TOKENS",
                )
            token_id = new_id("cft")
            secret = f"{FEED_TOKEN_PREFIX}.{token_id}.{secrets.token_urlsafe(32)}"
            row = SchedFeedToken(
                id=token_id,
                tenant_id=tenant,
                person_id=person_id,
                label=label,
                secret_hash=hash_secret(secret),
                create_time=utcnow(),
                last_use_time=None,
            )
            uow.session.add(row)
            await uow.session.flush()
            return row, secret

        return await run_idempotent(lambda: self._scope(principal), key, body)

    async def list_feed_tokens(
        self, principal: Principal, person_id: str, size: int, token: str
    ) -> tuple[list[SchedFeedToken], str]:
        principal.require(READ)
        limit = paging.page_size(size)
        after = paging.decode(token, person_id)
        async with self.db.reader() as session:
            await self._person(session, principal.tenant_id, person_id, "person_id")
            rows = await srepo.list_feed_tokens(
                session, principal.tenant_id, person_id, after, limit
            )
        return rows, paging.next_token(rows, limit, "create_time", person_id)

    async def delete_feed_token(self, principal: Principal, token_id: str) -> None:
        principal.require(WRITE)
        async with self._scope(principal) as uow:
            row = await srepo.feed_token(uow.session, principal.tenant_id, token_id)
            if row is None:
                raise NotFound(
                    f"calendar feed token {token_id!r} not found",
                    reason="CALENDAR_FEED_TOKEN_NOT_FOUND",
                )
            await uow.session.delete(row)

    async def authenticate_feed_token(self, credential: str) -> Principal:
        """The principal of a feed token (registered with the authenticator for its prefix)."""
        async with self.db.writer() as session, session.begin():
            row = await srepo.feed_token_by_hash(session, hash_secret(credential))
            if row is None:
                raise Unauthenticated(
                    "calendar feed token is invalid or was deleted",
                    reason="CALENDAR_FEED_TOKEN_INVALID",
                )
            now = utcnow()
            if row.last_use_time is None or now - row.last_use_time > LAST_USE_RESOLUTION:
                row.last_use_time = now
            # The token's id stands in for a key id: rate limits apply per token.
            return Principal(
                tenant_id=row.tenant_id,
                scopes=frozenset({feed_scope(row.person_id)}),
                api_key_id=row.id,
            )
