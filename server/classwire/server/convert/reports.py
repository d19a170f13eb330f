"""data.v1 report requests -> domain inputs."""

from __future__ import annotations

from ..domain.reports import ListFilter
from .events import time_range_from_proto


def list_filter(request) -> ListFilter:
    end_from, end_to = time_range_from_proto(request.end_time_range, "end_time_range")
    return ListFilter(
        class_id=request.class_id,
        course_id=request.course_id,
        instructor_identity=request.instructor_identity,
        learner_identity=request.learner_identity,
        state=request.state,
        end_from=end_from,
        end_to=end_to,
    )
