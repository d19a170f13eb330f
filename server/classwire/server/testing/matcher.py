"""Conformance suite for instructor matchers.

A small problem whose answer is known: which lessons can be staffed, by whom, and which cannot.
Every matcher, greedy or optimal, must respect the hard constraints and staff what is staffable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from classwire.server.plugins.types import (
    InstructorCandidate,
    LessonRequest,
    MatchAssignment,
    Matcher,
    MatchPlan,
    MatchProblem,
    MatchStatus,
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
    - L5, L6 (maths 15:00, 16:00) and the other of L1/L2: only A can take them, and A's
      120-minute load limit allows two of the three.
    - L7 (maths 11:30): A is busy then, so B.
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


def _qualified(
    instructor: InstructorCandidate, lesson: LessonRequest, level_order: Sequence[str] = ()
) -> bool:
    return instructor.qualifies(lesson.subject, lesson.level, level_order)


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
        assert _qualified(who, lesson, problem.level_order), assignment
        assert who.instructor_id not in lesson.excluded_instructor_ids, assignment
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
    """Behaviour every :class:`Matcher` must show.

    ``checks_exclusions_and_levels``: set it to True when the matcher honours
    ``LessonRequest.excluded_instructor_ids`` and ``MatchProblem.level_order`` (added to the
    types after the first matchers were written); it then runs the test for both.
    """

    checks_exclusions_and_levels = False

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
        # B takes one of the 9:00 lessons; A's load limit allows two of the rest, and which
        # two is a tie an optimal matcher may break either way.
        assert sorted(str(by_id[k]) for k in ("L1", "L2")).count("B") == 1
        assert [by_id[k] for k in ("L1", "L2", "L5", "L6")].count("A") == 2
        assert sum(1 for v in by_id.values() if v is not None) == 5
        unstaffed = [a for a in plan.assignments if a.instructor_id is None]
        assert all(a.explanation.reason for a in unstaffed), unstaffed

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

    async def test_status_and_gap_are_consistent(self, matcher: Matcher) -> None:
        plan = await matcher.assign(sample_problem())
        if plan.status is not None:
            assert isinstance(plan.status, MatchStatus)
            assert (plan.status is MatchStatus.OPTIMAL) == plan.optimal
            assert plan.status not in (MatchStatus.INFEASIBLE, MatchStatus.UNKNOWN)
        if plan.bound is None:
            assert plan.gap is None
        else:
            assert plan.gap is not None and 0.0 <= plan.gap
            if plan.optimal:
                assert plan.gap <= 1e-9

    async def test_exclusions_and_level_order(self, matcher: Matcher) -> None:
        """A learner's excluded instructor is never assigned; with ``level_order`` a higher
        qualification covers lower levels, without it levels match exactly."""
        if not self.checks_exclusions_and_levels:
            pytest.skip("the matcher does not declare checks_exclusions_and_levels")
        base = sample_problem()
        a = base.instructors[0]
        expert = InstructorCandidate(
            "D", frozenset({("maths", "advanced")}), available=[_at(9, 8 * 60)]
        )
        lessons = [
            LessonRequest("X1", ["s1"], _at(9), "maths", "basic", excluded_instructor_ids=["A"]),
            LessonRequest("X2", ["s2"], _at(14), "maths", "intermediate"),
        ]
        exact = MatchProblem(lessons, [a, expert], time_limit_seconds=10)
        plan = await matcher.assign(exact)
        check_plan(exact, plan)
        by_id = {x.booking_id: x.instructor_id for x in plan.assignments}
        assert by_id["X1"] is None  # A is excluded, D is not qualified for "basic"
        assert by_id["X2"] == "A"
        ordered = MatchProblem(
            lessons,
            [a, expert],
            time_limit_seconds=10,
            level_order=("basic", "intermediate", "advanced"),
        )
        plan = await matcher.assign(ordered)
        check_plan(ordered, plan)
        by_id = {x.booking_id: x.instructor_id for x in plan.assignments}
        assert by_id["X1"] == "D"
        assert by_id["X2"] in ("A", "D")
        one = await matcher.match(lessons[0], exact)
        assert one.instructor_id is None and one.explanation.reason
