"""Tables of post-session reports (documentation area; imported by documentation_models).

`session_reports` is both the report and its durable build job: a row in state PENDING (or
BUILDING with a lapsed lease) is work for any replica's report runner. `report_cursors` holds how
far each tenant's log has been scanned for SessionEnded. States are data.v1 SessionReportState
numbers.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class SessionReportRow(Base):
    __tablename__ = "session_reports"
    __table_args__ = (
        # ListSessionReports: newest session end first.
        Index("ix_session_reports_end", "tenant_id", "end_time", "session_id"),
        # The runner's queue.
        Index("ix_session_reports_queue", "state", "next_attempt_time"),
    )

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    parent_session_id: Mapped[str] = mapped_column(String(64), default="")
    class_id: Mapped[str] = mapped_column(String(64), default="")
    course_id: Mapped[str] = mapped_column(String(64), default="")
    end_time: Mapped[datetime]
    state: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer)
    # Attempts at the current revision.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_time: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    # Until when the build waits for the session's transcript to become final (set at the first
    # claim that finds it still being recognized; stored so a restart does not reset the wait).
    transcript_wait_until: Mapped[datetime | None]
    generate_time: Mapped[datetime | None]
    failure_reason: Mapped[str] = mapped_column(String(100), default="")
    failure_message: Mapped[str] = mapped_column(Text, default="")
    # The serialized data.v1 SessionReport of the last READY build.
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    update_time: Mapped[datetime]


class SessionReportPerson(Base):
    """The people a READY report lists, for ListSessionReports' instructor and learner filters."""

    __tablename__ = "session_report_people"
    __table_args__ = (Index("ix_session_report_people_identity", "tenant_id", "identity"),)

    session_id: Mapped[str] = mapped_column(
        ForeignKey("session_reports.session_id", ondelete="CASCADE"), primary_key=True
    )
    identity: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    role: Mapped[int] = mapped_column(Integer)


class ReportCursor(Base):
    __tablename__ = "report_cursors"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
