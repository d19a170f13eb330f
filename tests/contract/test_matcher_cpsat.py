"""The cpsat and greedy matchers, created through the plugin manager, pass the matcher suite;
and the properties the issue asks of them hold on random and hand-made problems."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import classwire.plugins.cpsat as cpsat_plugin
from classwire.plugins.cpsat import CpSatMatcher, GreedyMatcher
from classwire.plugins.cpsat.matchers import relaxation
from classwire.plugins.cpsat.scoring import SCALE, Prepared
from classwire.server.plugins import ConfigError, PluginManager
from classwire.server.plugins.types import (
    DEFAULT_MATCH_WEIGHTS,
    InstructorCandidate,
    LessonRequest,
    Matcher,
    MatchPlan,
    MatchProblem,
    MatchStatus,
    TimeInterval,
)
from classwire.server.testing import MatcherConformance
from classwire.server.testing.matcher import check_plan

MONDAY = datetime(2030, 3, 4, tzinfo=UTC)
SUBJECTS = ("maths", "physics", "english", "french")
LEVELS = ("basic", "intermediate", "advanced")
LANGUAGES = ("en", "es", "de")


def at(day: int, hour: float, minutes: int = 60) -> TimeInterval:
    start = MONDAY + timedelta(days=day, hours=hour)
    return TimeInterval(start, start + timedelta(minutes=minutes))


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    plugins = PluginManager(load_entry_points=False)
    plugins.register_plugin(cpsat_plugin, "cpsat")
    return plugins.load()


def create(manager: PluginManager, name: str, tmp_path: Path, **options: object) -> Matcher:
    return manager.create("matcher", name, data_dir=tmp_path, database_url="", options=options)


class TestCpSatConformance(MatcherConformance):
    checks_exclusions_and_levels = True

    @pytest.fixture
    async def matcher(self, manager: PluginManager, tmp_path: Path):
        async with create(manager, "cpsat", tmp_path, workers=2, seed=1) as matcher:
            yield matcher


class TestGreedyConformance(MatcherConformance):
    checks_exclusions_and_levels = True

    @pytest.fixture
    async def matcher(self, manager: PluginManager, tmp_path: Path):
        async with create(manager, "greedy", tmp_path) as matcher:
            yield matcher


def random_problem(seed: int, lessons: int = 80, instructors: int = 12) -> MatchProblem:
    """A tight random week: more demand than some subjects' instructors can cover, overlapping
    lessons of mixed lengths, split availability windows, busy slots and load limits."""
    rng = random.Random(seed)
    people = []
    for n in range(instructors):
        subjects = rng.sample(SUBJECTS, rng.randint(1, 2))
        quals = frozenset((s, rng.choice(("", *LEVELS))) for s in subjects)
        available = []
        for day in range(3):
            start = rng.choice((8, 9, 10))
            available.append(at(day, start, 60 * rng.randint(2, 4)))
            available.append(at(day, start + 5, 60 * rng.randint(2, 4)))
        busy = [at(rng.randrange(3), rng.choice((9, 11, 14)), 60) for _ in range(2)]
        people.append(
            InstructorCandidate(
                f"i{n}",
                quals,
                available,
                busy,
                languages=frozenset(rng.sample(LANGUAGES, rng.randint(1, 2))),
                load_limit_minutes=rng.choice((None, 240, 360)),
                current_load_minutes=rng.choice((0, 0, 60)),
            )
        )
    requests = []
    for n in range(lessons):
        previous = rng.choice([None, *(p.instructor_id for p in people)])
        requests.append(
            LessonRequest(
                f"b{n}",
                [f"s{rng.randrange(40)}"],
                at(
                    rng.randrange(3),
                    rng.choice((8, 8.5, 9, 10, 11, 13, 14, 15.5)),
                    rng.choice((30, 45, 60, 90)),
                ),
                rng.choice(SUBJECTS),
                rng.choice(LEVELS),
                rng.choice(LANGUAGES),
                previous_instructor_id=previous,
                preferred_instructor_ids=rng.sample([p.instructor_id for p in people], 1)
                if rng.random() < 0.2
                else (),
                excluded_instructor_ids=[rng.choice(people).instructor_id]
                if rng.random() < 0.1
                else (),
            )
        )
    return MatchProblem(requests, people, time_limit_seconds=10, level_order=LEVELS)


def explained_objective(problem: MatchProblem, plan: MatchPlan) -> float:
    """The objective rebuilt from the explanations: they must add up to it."""
    penalty = DEFAULT_MATCH_WEIGHTS["unassigned"] if "unassigned" not in problem.weights else 0
    total = 0.0
    for assignment in plan.assignments:
        if assignment.instructor_id is None:
            total -= penalty
        else:
            total += sum(assignment.explanation.score_terms.values())
    return total


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_problems_never_break_hard_constraints(seed: int) -> None:
    problem = random_problem(seed)
    greedy = await GreedyMatcher().assign(problem)
    optimal = await CpSatMatcher(workers=2, seed=0).assign(problem)
    check_plan(problem, greedy)
    check_plan(problem, optimal)
    assert optimal.bound is not None and optimal.bound >= optimal.objective - 1e-9
    assert optimal.objective >= greedy.objective - 1e-9
    assert optimal.objective == pytest.approx(explained_objective(problem, optimal), abs=1e-6)
    assert greedy.objective == pytest.approx(explained_objective(problem, greedy), abs=1e-6)
    # These random weeks are tight: some lessons stay unstaffed and say why.
    unstaffed = [a for a in optimal.assignments if a.instructor_id is None]
    assert unstaffed and all(a.explanation.reason for a in unstaffed)


async def test_global_assignment_beats_one_at_a_time() -> None:
    """L1 can go to A (its language) or B; L2, at the same time, only to A. One lesson at a
    time gives L1 to A and leaves L2 unstaffed; the global plan staffs both."""
    a = InstructorCandidate(
        "A", frozenset({("maths", "")}), [at(0, 8, 480)], languages=frozenset({"es"})
    )
    b = InstructorCandidate("B", frozenset({("maths", "basic")}), [at(0, 8, 480)])
    lessons = [
        LessonRequest("L1", ["s1"], at(0, 9), "maths", "basic", "es"),
        LessonRequest("L2", ["s2"], at(0, 9), "maths", "advanced"),
    ]
    problem = MatchProblem(lessons, [a, b])
    greedy = await GreedyMatcher().assign(problem)
    optimal = await CpSatMatcher(workers=2).assign(problem)
    assert {x.booking_id: x.instructor_id for x in greedy.assignments} == {"L1": "A", "L2": None}
    assert {x.booking_id: x.instructor_id for x in optimal.assignments} == {"L1": "B", "L2": "A"}
    assert optimal.status is MatchStatus.OPTIMAL and optimal.optimal
    assert optimal.bound == pytest.approx(optimal.objective)
    assert optimal.gap == 0.0
    assert optimal.objective > greedy.objective


def twins(previous: str | None = "T2") -> tuple[LessonRequest, MatchProblem]:
    same = {"qualifications": frozenset({("maths", "")}), "available": [at(0, 8, 480)]}
    people = [
        InstructorCandidate("T1", languages=frozenset({"en"}), **same),  # type: ignore[arg-type]
        InstructorCandidate("T2", languages=frozenset({"en"}), **same),  # type: ignore[arg-type]
        InstructorCandidate("T3", languages=frozenset({"fr"}), **same),  # type: ignore[arg-type]
        InstructorCandidate("T4", frozenset({("physics", "")}), [at(0, 8, 480)]),
    ]
    lesson = LessonRequest(
        "L", ["s"], at(0, 10), "maths", "basic", "en", previous_instructor_id=previous
    )
    return lesson, MatchProblem([lesson], people)


@pytest.mark.parametrize(
    "matcher", [GreedyMatcher(), CpSatMatcher(workers=2)], ids=["greedy", "cpsat"]
)
async def test_continuity_is_preferred(matcher: Matcher) -> None:
    lesson, problem = twins("T2")
    assert (await matcher.match(lesson, problem)).instructor_id == "T2"
    plan = await matcher.assign(problem)
    assert plan.assignments[0].instructor_id == "T2"
    # Without history, the tie goes to the first listed.
    lesson, problem = twins(None)
    assert (await matcher.match(lesson, problem)).instructor_id == "T1"


async def test_single_match_explains_the_choice() -> None:
    lesson, problem = twins("T2")
    result = await CpSatMatcher().match(lesson, problem)
    explanation = result.explanation
    assert result.instructor_id == "T2"
    assert [c.name for c in explanation.constraints] == [
        "qualified",
        "not_excluded",
        "available",
        "no_overlap",
        "within_load_limit",
    ]
    assert all(c.satisfied and c.detail for c in explanation.constraints)
    assert list(explanation.constraints_met) == [c.name for c in explanation.constraints]
    terms = {t.name: t for t in explanation.terms}
    assert set(terms) == {"continuity", "language", "preference", "load_balance"}
    assert (terms["continuity"].weight, terms["continuity"].value) == (4.0, 1.0)
    assert terms["continuity"].detail == "the learners' previous instructor"
    assert (terms["language"].weight, terms["language"].value) == (2.0, 1.0)
    assert terms["preference"].value == 0.0
    assert 0.0 < terms["load_balance"].value <= 1.0
    assert explanation.score == pytest.approx(sum(explanation.score_terms.values()))
    assert explanation.score == pytest.approx(sum(t.contribution for t in terms.values()), abs=1e-3)
    assert "T2" in explanation.reason
    # Ranked alternatives: T1 (same language) before T3 (no shared language).
    assert [(c.instructor_id, c.rank) for c in result.alternatives] == [("T1", 2), ("T3", 3)]
    scores = [explanation.score] + [c.explanation.score for c in result.alternatives]
    assert scores == sorted(scores, reverse=True)
    # The physics teacher is ineligible, with the failed constraint named.
    assert [c.instructor_id for c in result.ineligible] == ["T4"]
    failed = [c.name for c in result.ineligible[0].explanation.constraints if not c.satisfied]
    assert failed == ["qualified"] and result.ineligible[0].rank == 0


async def test_weights_steer_and_zero_disables_a_term() -> None:
    lesson, problem = twins("T2")
    # Continuity off and the learner prefers T3: preference now decides.
    steered = MatchProblem(
        [LessonRequest("L", ["s"], lesson.interval, "maths", "", "en", "T2", ["T3"])],
        problem.instructors,
        weights={"continuity": 0, "language": 0.5, "preference": 3, "balance": 0},
    )
    result = await CpSatMatcher().match(steered.lessons[0], steered)
    assert result.instructor_id == "T3"
    terms = {t.name: t for t in result.explanation.terms}
    assert terms["continuity"].weight == 0 and result.explanation.score_terms["continuity"] == 0
    assert terms["load_balance"].weight == 0


async def test_balanced_load_spreads_lessons() -> None:
    """Four back-to-back lessons and two equal instructors: two each, not four to one."""
    same = {"qualifications": frozenset({("maths", "")}), "available": [at(0, 8, 480)]}
    people = [
        InstructorCandidate("A", load_limit_minutes=480, **same),  # type: ignore[arg-type]
        InstructorCandidate("B", load_limit_minutes=480, **same),  # type: ignore[arg-type]
    ]
    lessons = [LessonRequest(f"L{n}", ["s"], at(0, 9 + n), "maths") for n in range(4)]
    plan = await CpSatMatcher().assign(MatchProblem(lessons, people))
    given = [a.instructor_id for a in plan.assignments]
    assert sorted(given) == ["A", "A", "B", "B"]


async def test_unstaffable_lessons_are_reported_not_fatal() -> None:
    a = InstructorCandidate("A", frozenset({("maths", "")}), [at(0, 8, 240)], busy=[at(0, 10)])
    lessons = [
        LessonRequest("ok", ["s"], at(0, 9), "maths"),
        LessonRequest("nobody", ["s"], at(0, 9), "chemistry"),
        LessonRequest("late", ["s"], at(0, 18), "maths"),
        LessonRequest("busy", ["s"], at(0, 10, 30), "maths"),
        LessonRequest("taken", ["s"], at(0, 9, 30), "maths"),
    ]
    problem = MatchProblem(lessons, [a])
    for matcher in (CpSatMatcher(workers=2), GreedyMatcher()):
        plan = await matcher.assign(problem)
        check_plan(problem, plan)
        by_id = {x.booking_id: x for x in plan.assignments}
        assert by_id["ok"].instructor_id == "A"
        assert "no instructor is qualified for 'chemistry'" in by_id["nobody"].explanation.reason
        assert "fail available" in by_id["late"].explanation.reason
        assert "fail no_overlap" in by_id["busy"].explanation.reason
        assert by_id["taken"].instructor_id is None
        assert "taken by other lessons" in by_id["taken"].explanation.reason
        assert plan.objective == pytest.approx(explained_objective(problem, plan))


async def test_plan_reports_bound_gap_and_status() -> None:
    problem = random_problem(7, lessons=120, instructors=16)
    plan = await CpSatMatcher(workers=2, seed=3).assign(problem)
    assert plan.status in (MatchStatus.OPTIMAL, MatchStatus.FEASIBLE)
    assert plan.bound is not None and plan.bound >= plan.objective - 1e-9
    assert plan.gap == pytest.approx((plan.bound - plan.objective) / max(1.0, abs(plan.bound)))
    assert plan.solve_seconds > 0
    if plan.status is MatchStatus.OPTIMAL:
        assert plan.gap == 0.0


async def test_same_problem_same_plan() -> None:
    problem = random_problem(11)
    first = await CpSatMatcher(workers=2, seed=5).assign(problem)
    second = await CpSatMatcher(workers=2, seed=5).assign(problem)
    assert [(a.booking_id, a.instructor_id) for a in first.assignments] == [
        (a.booking_id, a.instructor_id) for a in second.assignments
    ]
    assert first.objective == second.objective


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_relaxation_bound_is_above_the_proven_optimum(seed: int) -> None:
    """The relaxation's bound, recomputed from its prices, is never below the optimum CP-SAT
    proves on the whole model; its rounding is a valid plan no better than that optimum."""
    problem = random_problem(seed)
    optimal = await CpSatMatcher(workers=2, seed=0).assign(problem)
    assert optimal.status is MatchStatus.OPTIMAL
    prepared = Prepared(problem)
    values, bound = relaxation(prepared, 10.0)
    assert bound is not None
    relaxed = (bound - prepared.penalty * len(prepared.lessons)) / SCALE
    assert relaxed >= optimal.objective - 1e-9
    objective, assignments = prepared.evaluate(prepared.guided(values))
    rounded = MatchPlan(assignments, objective / SCALE, None, False, MatchStatus.FEASIBLE, 0.0)
    check_plan(problem, rounded)
    assert rounded.objective <= optimal.objective + 1e-9


async def test_large_problems_report_the_relaxation_bound() -> None:
    """From a few hundred lessons on, the plan starts from the rounded relaxation and reports
    its proven bound: never below the plan, and never optimal unless they meet."""
    problem = random_problem(5, lessons=260, instructors=30)
    problem = MatchProblem(
        problem.lessons, problem.instructors, time_limit_seconds=6, level_order=LEVELS
    )
    greedy = await GreedyMatcher().assign(problem)
    plan = await CpSatMatcher(workers=2, seed=0).assign(problem)
    check_plan(problem, plan)
    assert plan.objective >= greedy.objective - 1e-9
    assert plan.bound is not None and plan.bound >= plan.objective - 1e-9
    assert plan.optimal == (plan.bound == pytest.approx(plan.objective, abs=1e-9))


def test_options_are_checked(manager: PluginManager, tmp_path: Path) -> None:
    matcher = create(manager, "cpsat", tmp_path, workers=3, seed=9, relative_gap_limit=0.01)
    assert isinstance(matcher, CpSatMatcher)
    assert (matcher.workers, matcher.seed, matcher.relative_gap_limit) == (3, 9, 0.01)
    with pytest.raises(ConfigError, match="unknown option"):
        create(manager, "cpsat", tmp_path, threads=2)
    with pytest.raises(ConfigError, match="workers"):
        create(manager, "cpsat", tmp_path, workers=0)
    with pytest.raises(ConfigError, match="unknown option"):
        create(manager, "greedy", tmp_path, workers=2)
