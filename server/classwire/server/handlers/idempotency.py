"""Builds the domain's idempotency key from a create-like request (AIP-155)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.idempotency import MAX_REQUEST_ID_LENGTH, IdempotencyKey

M = TypeVar("M", bound=Message)


def key_for(
    method: str,
    request: Message,
    response_type: type[M],
    *,
    to_response: Callable[[object], M],
    from_response: Callable[[M], object],
    strip: Callable[[M], None] = lambda _: None,
) -> IdempotencyKey | None:
    """The idempotency key of `request`, or None without a request_id.

    The stored response passes through `strip` first, so secrets shown once are not kept.
    """
    request_id = getattr(request, "request_id", "")
    if not request_id:
        return None
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument(
            FieldViolation("request_id", f"must be at most {MAX_REQUEST_ID_LENGTH} characters")
        )
    fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()

    def encode(result) -> bytes:
        message = to_response(result)
        strip(message)
        return message.SerializeToString()

    def decode(data: bytes):
        return from_response(response_type.FromString(data))

    return IdempotencyKey(method, request_id, fingerprint, encode, decode)


def respond(result, response_type: type[M], convert: Callable[[object], M]) -> M:
    """The response of a create-like RPC: a replayed request (same request_id) comes back from
    the domain as the stored response itself, a first one as a domain result to convert."""
    return result if isinstance(result, response_type) else convert(result)
