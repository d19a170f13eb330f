"""Webhook deliveries through the API: the delivery log (ListWebhookDeliveries) and manual
redelivery (RedeliverWebhook). The dispatcher (events/webhooks.py) does the sending."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from classwire.api.platform.v1 import resources_pb2 as pb

from ..events.outbox import UnitOfWorkFactory
from ..store import data_repositories as data_repo
from ..store import repositories as repo
from ..store.data_models import WebhookAttemptRow, WebhookDeliveryRow
from ..store.engine import Database
from ..store.types import utcnow
from . import paging
from .auth import Principal
from .errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from .ids import new_id

STATES = {
    pb.WEBHOOK_DELIVERY_STATE_PENDING,
    pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED,
    pb.WEBHOOK_DELIVERY_STATE_FAILED,
}


@dataclass
class DeliveryView:
    delivery: WebhookDeliveryRow
    attempts: list[WebhookAttemptRow] = field(default_factory=list)


def _endpoint_not_found(endpoint_id: str) -> NotFound:
    return NotFound(
        f"webhook endpoint {endpoint_id!r} not found", reason="WEBHOOK_ENDPOINT_NOT_FOUND"
    )


class WebhookDeliveries:
    def __init__(
        self, db: Database, uow: UnitOfWorkFactory, queued: Callable[[], None] = lambda: None
    ) -> None:
        self.db = db
        self.uow = uow
        # Called after a redelivery commits, so this replica's dispatcher sends it at once.
        self.queued = queued

    async def list_deliveries(
        self, principal: Principal, endpoint_id: str, state: int, size: int, token: str
    ) -> tuple[list[DeliveryView], str]:
        principal.require("platform:read")
        if state and state not in STATES:
            raise InvalidArgument(FieldViolation("state", f"unknown delivery state {state}"))
        limit = paging.page_size(size)
        filters = {"endpoint": endpoint_id, "state": state}
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            endpoint = await repo.get_webhook_endpoint(session, principal.tenant_id, endpoint_id)
            if endpoint is None:
                raise _endpoint_not_found(endpoint_id)
            items = await repo.page(
                session,
                data_repo.deliveries(principal.tenant_id, endpoint_id, state),
                WebhookDeliveryRow.create_time,
                WebhookDeliveryRow.id,
                limit,
                after,
                newest_first=True,
            )
            attempts = await data_repo.attempts_of(session, [d.id for d in items])
        views = [DeliveryView(d, attempts[d.id]) for d in items]
        return views, paging.next_token(items, limit, "create_time", filters)

    async def redeliver(
        self, principal: Principal, endpoint_id: str, event_id: str
    ) -> DeliveryView:
        """Queues the event again as a new delivery; the webhook-id stays the event id."""
        principal.require("platform:write")
        async with self.uow(principal.tenant_id) as uow:
            session = uow.session
            endpoint = await repo.get_webhook_endpoint(session, principal.tenant_id, endpoint_id)
            if endpoint is None:
                raise _endpoint_not_found(endpoint_id)
            event = await data_repo.get_event_row(session, principal.tenant_id, event_id)
            if event is None:
                raise NotFound(f"event {event_id!r} not found", reason="EVENT_NOT_FOUND")
            if not endpoint.enabled:
                raise FailedPrecondition(
                    "the endpoint is disabled; enable it with UpdateWebhookEndpoint first",
                    reason="ENDPOINT_DISABLED",
                )
            now = utcnow()
            delivery = WebhookDeliveryRow(
                id=new_id("whd"),
                tenant_id=principal.tenant_id,
                endpoint_id=endpoint_id,
                event_id=event.id,
                event_type=event.type,
                event_sequence=event.sequence,
                state=pb.WEBHOOK_DELIVERY_STATE_PENDING,
                attempt_count=0,
                next_attempt_time=now,
                create_time=now,
                update_time=now,
            )
            session.add(delivery)
            cursor = await data_repo.get_cursor(session, endpoint_id)
            if cursor is not None and (
                cursor.next_attempt_time is None or cursor.next_attempt_time > now
            ):
                cursor.next_attempt_time = now
        self.queued()
        return DeliveryView(delivery, [])
