"""Renders a READY report as Markdown or as self-contained HTML for e-mail (inline styles only).

User text (names, chat-derived poll questions, transcript) is escaped in both formats: HTML by
Jinja's autoescape, Markdown by backslash-escaping punctuation, so neither a renderer of the
Markdown nor a mail client runs markup a participant typed.
"""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb

from .reports_build import HOSTS

TEMPLATES = Path(__file__).parent / "report_templates"
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|&~])")


def _md(value: object) -> str:
    text = " ".join(str(value).split())  # no line breaks: one table cell, one list item
    return _MD_SPECIAL.sub(r"\\\1", text)


@cache
def _environment(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=html,
        trim_blocks=not html,
        lstrip_blocks=not html,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = _md
    return env


def _span(duration) -> str:
    seconds = int(duration.ToTimedelta().total_seconds())
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _minutes(duration) -> str:
    return f"{duration.ToTimedelta() / timedelta(minutes=1):.1f}"


def _role(role: int) -> str:
    name = common_pb2.ParticipantRole.Name(role) if role else "PARTICIPANT_ROLE_UNSPECIFIED"
    return (
        name.removeprefix("PARTICIPANT_ROLE_")
        .replace("_", "-")
        .lower()
        .replace("unspecified", "participant")
    )


def _status(status: int) -> str:
    return "present" if status == data_pb.ATTENDANCE_STATUS_PRESENT else "absent"


def narrow(report: data_pb.SessionReport, learner: str) -> data_pb.SessionReport:
    """The guardian's view: only this learner's rows; transcript lines of the learner and the
    instructors only; nobody else's name."""
    view = data_pb.SessionReport()
    view.CopyFrom(report)
    hosts = {a.identity for a in report.attendance if a.role in HOSTS}
    for name in ("attendance", "engagement"):
        kept = [item for item in getattr(report, name) if item.identity == learner]
        view.ClearField(name)
        getattr(view, name).extend(kept)
    quality = [q for q in report.quality.participants if q.identity == learner]
    view.quality.ClearField("participants")
    view.quality.participants.extend(quality)
    view.quality.disconnects = sum(q.disconnects for q in quality)
    view.quality.reconnects = sum(q.reconnects for q in quality)
    view.quality.worst_packet_loss = max((q.worst_packet_loss for q in quality), default=0.0)
    view.quality.worst_packet_loss_identity = learner if quality else ""
    excerpt = [s for s in report.transcript.excerpt if s.identity == learner or s.identity in hosts]
    view.transcript.ClearField("excerpt")
    view.transcript.excerpt.extend(excerpt)
    return view


def render(
    report: data_pb.SessionReport,
    fmt: int,
    *,
    learner: str = "",
    time_zone: str = "",
    locale: str = "",
) -> tuple[str, str, str]:
    """(media type, title, text). Labels are English whatever the locale; the locale sets the
    document language only."""
    zone = ZoneInfo(time_zone) if time_zone else UTC
    learner_name = ""
    if learner:
        report = narrow(report, learner)
        learner_name = next((a.display_name or a.identity for a in report.attendance), learner)
    title = f"Session report: {report.title}" + (f" ({learner_name})" if learner_name else "")
    start = report.start_time if report.HasField("start_time") else report.scheduled_start_time
    start_at = start.ToDatetime(tzinfo=UTC).astimezone(zone)
    end_at = report.end_time.ToDatetime(tzinfo=UTC).astimezone(zone)
    when = f"{start_at:%Y-%m-%d %H:%M}–{end_at:%H:%M} {start_at.tzname()}"
    note = report.failure.message if report.HasField("failure") else ""
    html = fmt == data_pb.REPORT_FORMAT_HTML
    template = _environment(html).get_template(
        "session_report.html.j2" if html else "session_report.md.j2"
    )
    text = template.render(
        report=report,
        title=title,
        when=when,
        learner=learner_name,
        lang=(locale or "en").split("-")[0],
        attendance=list(report.attendance),
        engagement=list(report.engagement),
        polls=list(report.polls),
        quality=report.quality,
        excerpt=list(report.transcript.excerpt),
        note=note,
        span=_span,
        minutes=_minutes,
        role=_role,
        status=_status,
        percent=lambda v: f"{v * 100:.0f}%",
        offset=lambda d: _span(d),
        late=lambda a: _span(a.late_by) if a.late else "no",
        early=lambda a: _span(a.early_leave_by) if a.left_early else "no",
    )
    return ("text/html" if html else "text/markdown"), title, text
