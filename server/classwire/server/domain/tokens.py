"""Participant access tokens: JWTs for one session, identity and role.

The algorithm is pinned server-side (HS256; the token's `alg` header is never trusted), `exp`,
`nbf`, `aud` and `iss` are required, 60 s of leeway absorb clock skew, and `kid` names the
tenant's signing key, so keys rotate without logging anyone out.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from .auth import ParticipantClaims
from .errors import Unauthenticated

ALGORITHM = "HS256"
AUDIENCE = "classwire:participant"
LEEWAY = timedelta(seconds=60)
MAX_TTL = timedelta(hours=24)


def new_signing_secret() -> str:
    return secrets.token_urlsafe(48)


@dataclass(frozen=True)
class MintedToken:
    token: str
    token_id: str
    expire_time: datetime


def mint(
    *,
    issuer: str,
    key_id: str,
    secret: str,
    tenant_id: str,
    claims: ParticipantClaims,
    now: datetime,
    ttl: timedelta,
) -> MintedToken:
    token_id = claims.token_id or str(uuid.uuid4())
    expire = now + ttl
    payload = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": claims.identity,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int(expire.timestamp()),
        "jti": token_id,
        "tid": tenant_id,
        "sid": claims.session_id,
        "pid": claims.participant_id,
        "role": claims.role,
        "name": claims.display_name,
        "perm": claims.permissions,
    }
    token = jwt.encode(payload, secret, algorithm=ALGORITHM, headers={"kid": key_id})
    return MintedToken(token, token_id, expire)


def key_id_of(token: str) -> str:
    """The `kid` header, read without verification only to find the key that verifies it."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthenticated("malformed participant token", reason="TOKEN_INVALID") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthenticated("participant token has no key id", reason="TOKEN_INVALID")
    return kid


def verify(token: str, *, issuer: str, secret: str, tenant_id: str) -> ParticipantClaims:
    try:
        data = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=issuer,
            leeway=LEEWAY,
            options={"require": ["exp", "nbf", "aud", "iss", "sub", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("participant token expired", reason="TOKEN_EXPIRED") from None
    except jwt.PyJWTError as exc:
        raise Unauthenticated(
            f"participant token rejected: {exc}", reason="TOKEN_INVALID"
        ) from None
    if data.get("tid") != tenant_id:
        raise Unauthenticated("participant token rejected", reason="TOKEN_INVALID")
    return ParticipantClaims(
        session_id=str(data.get("sid", "")),
        participant_id=str(data.get("pid", "")),
        identity=str(data["sub"]),
        role=int(data.get("role", 0)),
        display_name=str(data.get("name", "")),
        token_id=str(data["jti"]),
        permissions=dict(data.get("perm") or {}),
    )
