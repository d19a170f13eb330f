"""Renders a READY report as Markdown or as self-contained HTML for e-mail (inline styles only).

User text (names, chat-derived poll questions, transcript) is escaped in both formats: HTML by
Jinja's autoescape, Markdown by backslash-escaping punctuation, so neither a renderer of the
Markdown nor a mail client runs markup a participant typed.
"""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from functools import cache
from html import escape
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb

from .reports_build import HOSTS

TEMPLATES = Path(__file__).parent / "report_templates"
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|&~])")


def _one_line(value: object) -> str:
    return " ".join(str(value).split())  # no line breaks: one table cell, one list item


def _md(value: object) -> str:
    return _MD_SPECIAL.sub(r"\\\1", _one_line(value))


@cache
def _environment(html: bool, plain: bool = False) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=html,
        trim_blocks=not html,
        lstrip_blocks=not html,
        undefined=jinja2.StrictUndefined,
    )
    # Plain text is the Markdown layout without Markdown escapes: nothing interprets it.
    env.filters["md"] = _one_line if plain else _md
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
    plain: bool = False,
) -> tuple[str, str, str]:
    """(media type, title, text). Labels are English whatever the locale; the locale sets the
    document language only. `plain` renders the Markdown layout as unescaped plain text."""
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
    template = _environment(html, plain and not html).get_template(
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


# E-mail keeps each transcript line short; the full transcript stays one API call away.
MAIL_SEGMENT_CHARS = 280
_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.DOTALL)


def _shortened(text: str) -> str:
    return text if len(text) <= MAIL_SEGMENT_CHARS else text[: MAIL_SEGMENT_CHARS - 1] + "…"


def guardian_mail(
    report: data_pb.SessionReport, learners: list[str], *, time_zone: str = ""
) -> tuple[str, str]:
    """The guardian view of each of `learners` (report identities) for an e-mail, as (HTML
    fragment, plain text). The HTML is the rendered document's body, to sit inside a mail
    template; user text in it is escaped by the renderer. Transcript lines are shortened."""
    mail = data_pb.SessionReport()
    mail.CopyFrom(report)
    shortened = False
    for segment in mail.transcript.excerpt:
        shortened |= len(segment.text) > MAIL_SEGMENT_CHARS
        segment.text = _shortened(segment.text)
    html_parts, text_parts = [], []
    for learner in learners:
        _, _, page = render(mail, data_pb.REPORT_FORMAT_HTML, learner=learner, time_zone=time_zone)
        found = _BODY.search(page)
        html_parts.append(found.group(1).strip() if found else page)
        _, _, text = render(
            mail, data_pb.REPORT_FORMAT_MARKDOWN, learner=learner, time_zone=time_zone, plain=True
        )
        text_parts.append(text.strip())
    partial = shortened or mail.transcript.segment_count > len(mail.transcript.excerpt)
    if partial and mail.transcript.excerpt:
        note = (
            "The transcript is shortened here; the full one is kept with session "
            f"{report.session_id}."
        )
        html_parts.append(f'<p style="font-size:13px;color:#5b6475;">{escape(note)}</p>')
        text_parts.append(note)
    return "\n".join(html_parts), "\n\n".join(text_parts)
