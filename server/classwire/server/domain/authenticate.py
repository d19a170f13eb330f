"""Turns a bearer credential into a Principal: API keys and participant tokens."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import structlog

from ..store import repositories as repo
from ..store.engine import Database
from ..store.types import utcnow
from . import tokens
from .auth import Principal, parse_api_key, secret_matches
from .errors import Unauthenticated

log = structlog.get_logger(__name__)
LAST_USE_RESOLUTION = timedelta(minutes=1)


class Authenticator:
    """Verifies credentials, caching verified API keys briefly.

    The cache keeps the hot path off the database; its TTL bounds how long another replica
    may still accept a key revoked elsewhere. Revocation on this replica evicts at once.
    """

    def __init__(self, db: Database, issuer: str, cache_ttl: timedelta) -> None:
        self.db = db
        self.issuer = issuer
        self.cache_ttl = cache_ttl.total_seconds()
        self._keys: dict[str, tuple[float, Principal, object]] = {}
        self._signing: dict[str, tuple[float, str, str, bool]] = {}
        self._touch_tasks: set[asyncio.Task] = set()
        # Credential prefix -> verifier, for credentials other areas issue (calendar feed tokens).
        self.verifiers: dict[str, object] = {}

    def evict(self, key_id: str) -> None:
        self._keys.pop(key_id, None)
        self._signing.pop(key_id, None)

    async def authenticate(self, credential: str) -> Principal:
        if not credential:
            raise Unauthenticated(
                "missing credentials: send `authorization: Bearer <api key or participant token>`",
                reason="CREDENTIALS_MISSING",
            )
        key_id = parse_api_key(credential)
        if key_id is not None:
            return await self._api_key(key_id, credential)
        prefix = credential.partition(".")[0]
        if prefix in self.verifiers:
            return await self.verifiers[prefix](credential)  # type: ignore[operator]
        return await self._participant(credential)

    async def _api_key(self, key_id: str, secret: str) -> Principal:
        now = time.monotonic()
        cached = self._keys.get(key_id)
        if cached and cached[0] > now and cached[2] == secret:
            principal = cached[1]
        else:
            async with self.db.reader() as session:
                key = await repo.find_api_key(session, key_id)
                tenant = await repo.get_tenant(session, key.tenant_id) if key else None
            current = utcnow()
            if (
                key is None
                or not secret_matches(secret, key.secret_hash)
                or key.revoke_time is not None
                or (key.expire_time is not None and key.expire_time <= current)
            ):
                raise Unauthenticated("invalid API key", reason="API_KEY_INVALID")
            principal = Principal(
                tenant_id=key.tenant_id,
                scopes=frozenset(key.scopes),
                api_key_id=key.id,
                rate_limit=(
                    float(tenant.settings.get("rate_limit_per_second") or 0) if tenant else 0.0,
                    int(tenant.settings.get("rate_limit_burst") or 0) if tenant else 0,
                ),
            )
            expires = now + self.cache_ttl
            if key.expire_time is not None:
                expires = min(expires, now + (key.expire_time - current).total_seconds())
            self._keys[key_id] = (expires, principal, secret)
            if key.last_use_time is None or current - key.last_use_time > LAST_USE_RESOLUTION:
                task = asyncio.create_task(self._touch(key_id))
                self._touch_tasks.add(task)
                task.add_done_callback(self._touch_tasks.discard)
        return principal

    async def _touch(self, key_id: str) -> None:
        # Bookkeeping only: a failure here must never fail the call it came from.
        try:
            async with self.db.writer() as session, session.begin():
                key = await repo.find_api_key(session, key_id)
                if key is not None:
                    key.last_use_time = utcnow()
        except Exception:
            log.warning("could not record API key use", key_id=key_id, exc_info=True)

    async def _participant(self, token: str) -> Principal:
        kid = tokens.key_id_of(token)
        now = time.monotonic()
        cached = self._signing.get(kid)
        if cached and cached[0] > now:
            _, tenant_id, secret, retired = cached
        else:
            async with self.db.reader() as session:
                key = await repo.find_signing_key(session, kid)
            if key is None:
                raise Unauthenticated("participant token rejected", reason="TOKEN_INVALID")
            tenant_id, secret, retired = key.tenant_id, key.secret, key.retire_time is not None
            self._signing[kid] = (now + self.cache_ttl, tenant_id, secret, retired)
        if retired:
            raise Unauthenticated(
                "participant token's signing key was retired", reason="TOKEN_INVALID"
            )
        claims = tokens.verify(token, issuer=self.issuer, secret=secret, tenant_id=tenant_id)
        # Every issued token is recorded; a revoked (or unknown) one is refused on every RPC.
        async with self.db.reader() as session:
            issued = await repo.get_join_token(session, tenant_id, claims.token_id)
        if issued is None or issued.session_id != claims.session_id:
            raise Unauthenticated("participant token rejected", reason="TOKEN_INVALID")
        if issued.revoke_time is not None:
            raise Unauthenticated("participant token was revoked", reason="TOKEN_REVOKED")
        return Principal(tenant_id=tenant_id, participant=claims)
