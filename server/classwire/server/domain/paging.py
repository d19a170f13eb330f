"""Opaque page tokens for keyset pagination (AIP-158).

A token encodes the last item's sort key and a fingerprint of the query's filters, so a token
replayed with different filters is rejected instead of silently skipping rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime

from .errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise InvalidArgument(FieldViolation(field, "must not be negative"))
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)


def _fingerprint(filters: object) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def encode(at: datetime, last_id: str, filters: object = None) -> str:
    raw = json.dumps({"t": at.isoformat(), "i": last_id, "f": _fingerprint(filters)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(
    token: str, filters: object = None, field: str = "page_token"
) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        at, last_id, fingerprint = datetime.fromisoformat(data["t"]), str(data["i"]), data["f"]
    except Exception:
        raise InvalidArgument(
            FieldViolation(field, "not a page token from this list"), reason="INVALID_PAGE_TOKEN"
        ) from None
    if fingerprint != _fingerprint(filters) or at.tzinfo is None:
        raise InvalidArgument(
            FieldViolation(field, "was issued for a list with different filters"),
            reason="INVALID_PAGE_TOKEN",
        )
    return at, last_id


def next_token(items: list, limit: int, time_attr: str, filters: object = None) -> str:
    if len(items) < limit:
        return ""
    last = items[-1]
    return encode(getattr(last, time_attr), last.id, filters)
