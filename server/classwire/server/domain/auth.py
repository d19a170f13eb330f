"""Who is calling: API keys with scopes, participant tokens, and per-key rate limits."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta

from .errors import FieldViolation, InvalidArgument, PermissionDenied, ResourceExhausted

AREAS = ("platform", "roster", "scheduling", "session", "media", "data")
ADMIN = "admin"
OPERATOR = "operator"
GRANTABLE_SCOPES = frozenset(
    [ADMIN] + [f"{area}:{mode}" for area in AREAS for mode in ("read", "write")]
)
API_KEY_PREFIX = "cw"


@dataclass(frozen=True)
class ParticipantClaims:
    session_id: str
    participant_id: str
    identity: str
    role: int
    display_name: str
    token_id: str
    permissions: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. Exactly one of api_key_id and participant is set."""

    tenant_id: str
    scopes: frozenset[str] = frozenset()
    api_key_id: str = ""
    participant: ParticipantClaims | None = None
    # The tenant's rate-limit override (0: the server default).
    rate_limit: tuple[float, int] = (0.0, 0)

    def has_scope(self, scope: str) -> bool:
        if scope in self.scopes:
            return True
        if scope == OPERATOR:
            return False
        if ADMIN in self.scopes:
            return True
        area, _, mode = scope.partition(":")
        # Writing implies reading the same area.
        return mode == "read" and f"{area}:write" in self.scopes

    def require(self, scope: str) -> None:
        if self.participant is not None or not self.has_scope(scope):
            raise PermissionDenied(
                f"this call needs an API key with the {scope!r} scope",
                reason="MISSING_SCOPE",
                metadata={"scope": scope},
            )


def validate_scopes(scopes: list[str], field_name: str = "scopes") -> list[str]:
    if not scopes:
        raise InvalidArgument(FieldViolation(field_name, "at least one scope is required"))
    bad = [s for s in scopes if s not in GRANTABLE_SCOPES]
    if bad:
        raise InvalidArgument(
            [
                FieldViolation(f"{field_name}[{scopes.index(s)}]", f"unknown scope {s!r}")
                for s in bad
            ]
        )
    return sorted(set(scopes))


def new_api_key_secret(key_id: str) -> str:
    """`cw.<key id>.<256 random bits>`: the id lets the server find the hash in one lookup."""
    return f"{API_KEY_PREFIX}.{key_id}.{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, expected_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), expected_hash)


def parse_api_key(secret: str) -> str | None:
    """The key id of a well-formed API key secret, else None."""
    prefix, _, rest = secret.partition(".")
    key_id, _, random_part = rest.partition(".")
    if prefix != API_KEY_PREFIX or not key_id or not random_part:
        return None
    return key_id


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> float:
        """Takes one token; returns 0 when allowed, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """Per-key token buckets, kept in this process (each replica limits its own share)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, TokenBucket] = {}

    def check(self, key: str, rate: float | None = None, burst: int | None = None) -> None:
        bucket = self.buckets.get(key)
        rate, burst = rate or self.rate, burst or self.burst
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self.buckets[key] = TokenBucket(rate, burst)
        wait = bucket.take()
        if wait:
            raise ResourceExhausted(
                "rate limit exceeded for this API key",
                reason="RATE_LIMITED",
                retry_after=timedelta(seconds=wait),
            )
