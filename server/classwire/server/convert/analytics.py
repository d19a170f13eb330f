"""Analytics and ratings: domain results -> data.v1 messages."""

from __future__ import annotations

from classwire.api.data.v1 import resources_pb2 as pb

from ..domain.analytics import GROUPS, Group
from ..store.analytics_models import RatingRow
from .common import set_time

GROUP_BY = {name: number for number, name in GROUPS.items()}


def _ratio(part, whole) -> float:
    return part / whole if whole else 0.0


def _ms(target, value) -> None:
    millis = int(value or 0)
    target.seconds, target.nanos = divmod(millis, 1000)[0], (millis % 1000) * 1_000_000


def attendance_stats(d: dict) -> pb.AttendanceStats:
    out = pb.AttendanceStats(
        sessions=int(d.get("sessions", 0)),
        expected=int(d.get("expected", 0)),
        attended=int(d.get("attended", 0)),
        absences=int(d.get("absences", 0)),
        late_arrivals=int(d.get("late_arrivals", 0)),
        early_leaves=int(d.get("early_leaves", 0)),
        attendance_rate=min(1.0, _ratio(d.get("attended", 0), d.get("expected", 0))),
    )
    _ms(out.present_duration, d.get("present_ms"))
    _ms(out.scheduled_duration, d.get("scheduled_ms"))
    return out


def engagement_stats(d: dict) -> pb.EngagementStats:
    out = pb.EngagementStats(
        attendances=int(d.get("attendances", 0)),
        mean_talk_share_against_instructor=_ratio(
            d.get("talk_share_sum", 0.0), d.get("attendances", 0)
        ),
        chat_messages=int(d.get("chat_messages", 0)),
        hand_raises=int(d.get("hand_raises", 0)),
        reactions=int(d.get("reactions", 0)),
        polls_offered=int(d.get("polls_offered", 0)),
        polls_answered=int(d.get("polls_answered", 0)),
        poll_participation=min(1.0, _ratio(d.get("polls_answered", 0), d.get("polls_offered", 0))),
        graded_answers=int(d.get("graded_answers", 0)),
        correct_answers=int(d.get("correct_answers", 0)),
        poll_accuracy=_ratio(d.get("correct_answers", 0), d.get("graded_answers", 0)),
    )
    _ms(out.present_duration, d.get("present_ms"))
    _ms(out.talk_time, d.get("talk_ms"))
    _ms(out.camera_on_time, d.get("camera_ms"))
    return out


def quality_stats(d: dict) -> pb.InstructorQualityStats:
    taught = int(d.get("sessions_taught", 0))
    hours = (d.get("present_ms", 0) or 0) / 3_600_000
    count = int(d.get("rating_count", 0))
    out = pb.InstructorQualityStats(
        sessions_scheduled=int(d.get("sessions_scheduled", 0)),
        sessions_taught=taught,
        no_shows=int(d.get("no_shows", 0)),
        late_starts=int(d.get("late_starts", 0)),
        early_ends=int(d.get("early_ends", 0)),
        disconnects=int(d.get("disconnects", 0)),
        disconnects_per_hour=_ratio(d.get("disconnects", 0), hours),
        sessions_with_disconnects=int(d.get("sessions_with_disconnects", 0)),
        ratings=pb.RatingSummary(
            count=count,
            mean_score=_ratio(d.get("rating_sum", 0), count),
            score_counts=[int(d.get(f"rating_{n}", 0)) for n in range(1, 6)],
        ),
    )
    _ms(out.mean_lateness, _ratio(d.get("lateness_sum_ms", 0), taught))
    _ms(out.max_lateness, d.get("lateness_max_ms", 0))
    return out


def _key(group: Group, group_by: str) -> pb.AnalyticsGroupKey:
    return pb.AnalyticsGroupKey(
        group_by=GROUP_BY[group_by], id=group.id, display_name=group.display_name
    )


def attendance_group(group: Group, group_by: str) -> pb.AttendanceGroup:
    out = pb.AttendanceGroup(key=_key(group, group_by), total=attendance_stats(group.total))
    for bucket in group.buckets:
        stats, previous = attendance_stats(bucket.stats), attendance_stats(bucket.previous)
        item = out.buckets.add(
            stats=stats,
            previous=previous,
            attendance_rate_change=stats.attendance_rate - previous.attendance_rate,
        )
        set_time(item.start_time, bucket.start)
        set_time(item.end_time, bucket.end)
    return out


def engagement_group(group: Group, group_by: str) -> pb.EngagementGroup:
    out = pb.EngagementGroup(key=_key(group, group_by), total=engagement_stats(group.total))
    for bucket in group.buckets:
        item = out.buckets.add(
            stats=engagement_stats(bucket.stats), previous=engagement_stats(bucket.previous)
        )
        set_time(item.start_time, bucket.start)
        set_time(item.end_time, bucket.end)
    return out


def instructor_quality(group: Group) -> pb.InstructorQuality:
    out = pb.InstructorQuality(
        instructor_identity=group.id,
        display_name=group.display_name,
        total=quality_stats(group.total),
    )
    for bucket in group.buckets:
        item = out.buckets.add(
            stats=quality_stats(bucket.stats), previous=quality_stats(bucket.previous)
        )
        set_time(item.start_time, bucket.start)
        set_time(item.end_time, bucket.end)
    return out


def rating(row: RatingRow) -> pb.Rating:
    out = pb.Rating(
        rating_id=row.id,
        session_id=row.session_id,
        rater_identity=row.rater_identity,
        instructor_identity=row.instructor_identity,
        score=row.score,
        comment=row.comment,
    )
    set_time(out.create_time, row.create_time)
    set_time(out.update_time, row.update_time)
    return out
