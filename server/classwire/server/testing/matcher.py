"""Conformance suite for instructor matchers.

A small problem whose answer is known: which lessons can be staffed, by whom, and which cannot.
Every matcher, greedy or optimal, must respect the hard constraints and staff what is staffable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from classwire.server.plugins.types import (
    InstructorCandidate,
    LessonRequest,
    MatchAssignment,
    Matcher,
    MatchPlan,
    MatchProblem,
    TimeInterval,
)

__all__ = ["MatcherConformance", "check_plan", "sample_problem"]

_DAY = datetime(2030, 3, 4, tzinfo=UTC)


def _at(hour: float, minutes: int = 60) -> TimeInterval:
    start = _DAY + timedelta(hours=hour)
    return TimeInterval(start, start + timedelta(minutes=minutes))


def sample_problem() -> MatchProblem:
    """Seven lessons, three instructors; exactly five lessons can be staffed.

    - L1, L2 (maths, same hour): one to A, one to B.
    - L3 (physics): only C teaches physics.
    - L4 (English at 13:00): B teaches English but is available only until 12:00.
    - L5 (maths 15:00): A.
    - L6 (maths 16:00): A's 120-minute load limit is used up by L1/L2 and L5.
    - L7 (maths 11:00): A is busy then, so B.
    """
    a = InstructorCandidate(
        "A",
        frozenset({("maths", "")}),
        available=[_at(9, 8 * 60)],
        busy=[_at(11, 60)],
        languages=frozenset({"en"}),
        load_limit_minutes=120,
    )
    b = InstructorCandidate(
        "B",
        frozenset({("maths", "advanced"), ("maths", "basic"), ("english", "")}),
        available=[_at(9, 3 * 60)],
        languages=frozenset({"en", "de"}),
    )
    c = InstructorCandidate(
        "C", frozenset({("physics", "")}), available=[_at(9, 8 * 60)], languages=frozenset({"en"})
    )
    lessons = [
        LessonRequest("L1", ["s1"], _at(9), "maths", "basic", "en", previous_instructor_id="B"),
        LessonRequest("L2", ["s2"], _at(9), "maths", "basic", "en"),
        LessonRequest("L3", ["s3"], _at(10), "physics", "basic", "en"),
        LessonRequest("L4", ["s4"], _at(13), "english", "basic", "en"),
        LessonRequest("L5", ["s5"], _at(15), "maths", "basic", "en"),
        LessonRequest("L6", ["s6"], _at(16), "maths", "basic", "en"),
        LessonRequest("L7", ["s7"], _at(11, 30), "maths", "basic", "en"),
    ]
    return MatchProblem(lessons, [a, b, c], time_limit_seconds=10)


def _qualified(instructor: InstructorCandidate, lesson: LessonRequest) -> bool:
    return any(
        subject == lesson.subject and level in ("", lesson.level)
        for subject, level in instructor.qualifications
    )


def check_plan(problem: MatchProblem, plan: MatchPlan) -> None:
    """Assert every hard constraint of ``problem`` holds in ``plan``."""
    lessons = {lesson.booking_id: lesson for lesson in problem.lessons}
    instructors = {i.instructor_id: i for i in problem.instructors}
    assert sorted(a.booking_id for a in plan.assignments) == sorted(lessons)
    taken: dict[str, list[TimeInterval]] = {}
    for assignment in plan.assignments:
        assert isinstance(assignment, MatchAssignment)
        explanation = assignment.explanation
        assert explanation.reason or explanation.constraints_met or explanation.score_terms, (
            f"{assignment.booking_id} has no explanation"
        )
        if assignment.instructor_id is None:
            continue
        lesson = lessons[assignment.booking_id]
        who = instructors[assignment.instructor_id]
        assert _qualified(who, lesson), assignment
        assert any(window.contains(lesson.interval) for window in who.available), assignment
        assert not any(b.overlaps(lesson.interval) for b in who.busy), assignment
        mine = taken.setdefault(who.instructor_id, [])
        assert not any(t.overlaps(lesson.interval) for t in mine), assignment
        mine.append(lesson.interval)
    for instructor_id, intervals in taken.items():
        who = instructors[instructor_id]
        if who.load_limit_minutes is not None:
            minutes = sum((i.end - i.start).total_seconds() / 60 for i in intervals)
            assert who.current_load_minutes + minutes <= who.load_limit_minutes, instructor_id


class MatcherConformance:
    """Behaviour every :class:`Matcher` must show."""

    @pytest.fixture
    async def matcher(self) -> AsyncIterator[Matcher]:
        raise NotImplementedError("override the matcher fixture")
        yield  # pragma: no cover

    async def test_is_a_matcher(self, matcher: Matcher) -> None:
        assert isinstance(matcher, Matcher)

    async def test_assign_respects_hard_constraints(self, matcher: Matcher) -> None:
        problem = sample_problem()
        plan = await matcher.assign(problem)
        assert isinstance(plan, MatchPlan)
        check_plan(problem, plan)
        by_id = {a.booking_id: a.instructor_id for a in plan.assignments}
        assert by_id["L3"] == "C"
        assert by_id["L4"] is None
        assert by_id["L7"] == "B"
        assert {by_id["L1"], by_id["L2"]} == {"A", "B"}
        assert sum(1 for v in by_id.values() if v is not None) == 5

    async def test_bound_is_consistent(self, matcher: Matcher) -> None:
        plan = await matcher.assign(sample_problem())
        assert isinstance(plan.objective, float | int)
        if plan.bound is not None:
            assert plan.bound >= plan.objective - 1e-6
        if plan.optimal:
            assert plan.bound is not None and abs(plan.bound - plan.objective) <= 1e-6

    async def test_match_one(self, matcher: Matcher) -> None:
        problem = sample_problem()
        lessons = {lesson.booking_id: lesson for lesson in problem.lessons}
        physics = await matcher.match(lessons["L3"], problem)
        assert physics.booking_id == "L3" and physics.instructor_id == "C"
        assert physics.explanation.constraints_met or physics.explanation.score_terms
        nobody = await matcher.match(lessons["L4"], problem)
        assert nobody.instructor_id is None and nobody.explanation.reason
        busy = await matcher.match(lessons["L7"], problem)
        assert busy.instructor_id == "B"

    async def test_empty_problem(self, matcher: Matcher) -> None:
        plan = await matcher.assign(MatchProblem([], sample_problem().instructors))
        assert list(plan.assignments) == []
