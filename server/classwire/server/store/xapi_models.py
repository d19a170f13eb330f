"""Tables of the xAPI pusher (events/xapi_push.py).

`xapi_push_cursors`: one row per tenant: how far its log was pushed to the configured Learning
Record Store, which replica holds the lease, and the retry state after a failed batch. The events
table is the outbox; statements are rebuilt from it, so nothing else needs storing.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class XapiPushCursor(Base):
    __tablename__ = "xapi_push_cursors"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    # The LRS provider's registered name: a different LRS starts from the beginning again.
    lrs: Mapped[str] = mapped_column(String(100))
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_time: Mapped[datetime | None]
    last_error: Mapped[str] = mapped_column(Text, default="")
    update_time: Mapped[datetime]
