"""Create-like requests are idempotent by `request_id` (AIP-155).

The first response is stored, in the same transaction as the change, under (tenant, method,
request id) with a fingerprint of the request. A retry with the same request gets the stored
response; the same id with a different request is rejected. Two concurrent first attempts
race on the record's primary key: the loser's transaction rolls back and it returns the
winner's response.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.exc import IntegrityError

from ..events.outbox import UnitOfWork
from ..store import repositories as repo
from ..store.models import IdempotencyRecord
from ..store.types import utcnow
from .errors import AlreadyExists

R = TypeVar("R")
MAX_REQUEST_ID_LENGTH = 200


@dataclass(frozen=True)
class IdempotencyKey(Generic[R]):
    method: str
    request_id: str
    fingerprint: str
    encode: Callable[[R], bytes]
    decode: Callable[[bytes], R]


async def _replay(uow: UnitOfWork, key: IdempotencyKey[R]) -> tuple[bool, R | None]:
    record = await repo.get_idempotency_record(
        uow.session, uow.tenant_id, key.method, key.request_id
    )
    if record is None:
        return False, None
    if record.fingerprint != key.fingerprint:
        raise AlreadyExists(
            "request_id was already used for a different request",
            reason="REQUEST_ID_REUSED",
            metadata={"request_id": key.request_id},
        )
    return True, key.decode(record.response)


async def run_idempotent(
    open_uow: Callable[[], object],
    key: IdempotencyKey[R] | None,
    body: Callable[[UnitOfWork], Awaitable[R]],
) -> R:
    """Runs `body` in a unit of work once per request id."""
    if key is None or not key.request_id:
        async with open_uow() as uow:  # type: ignore[attr-defined]
            return await body(uow)
    for attempt in range(2):
        try:
            async with open_uow() as uow:  # type: ignore[attr-defined]
                found, result = await _replay(uow, key)
                if found:
                    return result  # type: ignore[return-value]
                result = await body(uow)
                uow.session.add(
                    IdempotencyRecord(
                        tenant_id=uow.tenant_id,
                        method=key.method,
                        request_id=key.request_id,
                        fingerprint=key.fingerprint,
                        response=key.encode(result),
                        create_time=utcnow(),
                    )
                )
                await uow.session.flush()
                return result
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")
