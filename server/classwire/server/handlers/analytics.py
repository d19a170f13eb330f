"""DataService's analytics and ratings: QueryAttendance, QueryEngagement, QueryInstructorQuality,
SubmitRating, ListRatings, DeleteRating. Merged into the DataService servicer through
`analytics_methods(domain)`."""

from __future__ import annotations

from classwire.api.data.v1 import service_pb2 as api

from ..convert import analytics as conv
from ..convert.events import time_range_from_proto
from ..domain.analytics import AnalyticsDomain, validate_scope
from ..rpc.context import principal
from .idempotency import key_for, respond
from .unimplemented import delegates


def _scope(request, *, group_by: int | None = None, **lists):
    start, end = time_range_from_proto(request.time_range)
    return validate_scope(
        start,
        end,
        request.granularity,
        request.time_zone,
        group_by,
        page_size=request.page_size,
        page_token=request.page_token,
        **lists,
    )


def _filter_lists(f) -> dict:
    return {
        "learners": f.learner_identities,
        "instructors": f.instructor_identities,
        "class_ids": f.class_ids,
        "course_ids": f.course_ids,
    }


class AnalyticsHandler:
    IMPLEMENTED = (
        "QueryAttendance",
        "QueryEngagement",
        "QueryInstructorQuality",
        "SubmitRating",
        "ListRatings",
        "DeleteRating",
    )

    def __init__(self, domain: AnalyticsDomain) -> None:
        self.domain = domain

    async def QueryAttendance(self, request, context):
        scope = _scope(request, group_by=request.group_by, **_filter_lists(request.filter))
        groups, token, as_of = await self.domain.query_attendance(principal(), scope)
        return api.QueryAttendanceResponse(
            groups=[conv.attendance_group(g, scope.group) for g in groups],
            next_page_token=token,
            as_of_sequence=as_of,
        )

    async def QueryEngagement(self, request, context):
        scope = _scope(request, group_by=request.group_by, **_filter_lists(request.filter))
        groups, token, as_of = await self.domain.query_engagement(principal(), scope)
        return api.QueryEngagementResponse(
            groups=[conv.engagement_group(g, scope.group) for g in groups],
            next_page_token=token,
            as_of_sequence=as_of,
        )

    async def QueryInstructorQuality(self, request, context):
        start, end = time_range_from_proto(request.time_range)
        scope = validate_scope(
            start,
            end,
            request.granularity,
            request.time_zone,
            instructors=request.instructor_identities,
            class_ids=request.class_ids,
            page_size=request.page_size,
            page_token=request.page_token,
            filter_prefix="",
        )
        groups, token, as_of = await self.domain.query_instructor_quality(principal(), scope)
        return api.QueryInstructorQualityResponse(
            instructors=[conv.instructor_quality(g) for g in groups],
            next_page_token=token,
            as_of_sequence=as_of,
        )

    async def SubmitRating(self, request, context):
        caller = principal()

        def to_response(row) -> api.SubmitRatingResponse:
            return api.SubmitRatingResponse(rating=conv.rating(row))

        key = key_for(
            "SubmitRating",
            request,
            api.SubmitRatingResponse,
            to_response=to_response,
            from_response=lambda m: m,
        )
        result = await self.domain.submit_rating(
            caller,
            request.session_id,
            request.rater_identity,
            request.instructor_identity,
            request.score,
            request.comment,
            key,
        )
        return respond(result, api.SubmitRatingResponse, to_response)

    async def ListRatings(self, request, context):
        start, end = time_range_from_proto(request.create_time_range, "create_time_range")
        rows, token = await self.domain.list_ratings(
            principal(),
            request.session_id,
            request.instructor_identity,
            request.rater_identity,
            start,
            end,
            request.page_size,
            request.page_token,
        )
        return api.ListRatingsResponse(
            ratings=[conv.rating(r) for r in rows], next_page_token=token
        )

    async def DeleteRating(self, request, context):
        await self.domain.delete_rating(principal(), request.rating_id)
        return api.DeleteRatingResponse()


def analytics_methods(domain: AnalyticsDomain) -> dict:
    """The analytics and ratings RPCs by name, for data_servicer(..., extra=...)."""
    return delegates(AnalyticsHandler(domain), AnalyticsHandler.IMPLEMENTED)
