"""Bulk instructor assignment benchmark: a generated school week of 5,000 lessons, 400
instructors and 3,000 learners (subjects and levels, languages, split availability windows,
existing commitments, weekly load limits, previous instructors, preferences and exclusions),
assigned by the CP-SAT matcher and by the greedy one-at-a-time baseline on the same data in the
same run. Prints the bulk assignment's wall time (model building included), objective, the
matcher's proven bound and gap (at this size, the linear relaxation's dual bound), and the
greedy baseline's objective, with the ratio.

    python bench/scheduling.py [--lessons 5000] [--instructors 400] [--learners 3000]
                               [--seed 42] [--time-limit 50] [--workers 2] [--gap-limit 0.005]
                               [--rounds 1] [--portfolio]

Goals: at most 60 s on a 2-core machine, a gap of at most 2%, and a better objective than greedy.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classwire.plugins.cpsat import CpSatMatcher, GreedyMatcher  # noqa: E402
from classwire.server.plugins.types import (  # noqa: E402
    InstructorCandidate,
    LessonRequest,
    MatchPlan,
    MatchProblem,
    TimeInterval,
)
from classwire.server.testing.matcher import check_plan  # noqa: E402

MONDAY = datetime(2030, 3, 4, tzinfo=UTC)
DAYS = 5
SUBJECTS = {
    "maths": 8,
    "english": 6,
    "physics": 4,
    "chemistry": 3,
    "biology": 3,
    "history": 2,
    "geography": 2,
    "french": 2,
    "spanish": 2,
    "computing": 3,
}
LEVELS = ("basic", "intermediate", "advanced")
OTHER_LANGUAGES = ("es", "fr", "de", "zh", "ar")


def interval(day: int, minute: int, length: int) -> TimeInterval:
    start = MONDAY + timedelta(days=day, minutes=minute)
    return TimeInterval(start, start + timedelta(minutes=length))


def generate(lessons: int, instructors: int, learners: int, seed: int) -> MatchProblem:
    rng = random.Random(seed)
    subjects, popularity = list(SUBJECTS), list(SUBJECTS.values())

    people = []
    qualified: dict[tuple[str, str], list[str]] = {}
    for n in range(instructors):
        iid = f"i{n:04d}"
        quals = set()
        for subject in sorted(set(rng.choices(subjects, popularity, k=rng.choice((1, 2, 2, 3))))):
            top = rng.choices(LEVELS, (3, 4, 3))[0]
            quals.add((subject, top))
            for level in LEVELS[: LEVELS.index(top) + 1]:
                qualified.setdefault((subject, level), []).append(iid)
        languages = ["en"] if rng.random() < 0.85 else [rng.choice(OTHER_LANGUAGES)]
        if rng.random() < 0.3:
            languages.append(rng.choice(OTHER_LANGUAGES))
        available, busy = [], []
        for day in rng.sample(range(DAYS), rng.choice((3, 4, 4, 5))):
            # A morning and an afternoon window, or one long afternoon-evening.
            if rng.random() < 0.5:
                morning = rng.choice((8, 9)) * 60
                available.append(interval(day, morning, rng.choice((180, 210, 240))))
                afternoon = rng.choice((13, 14)) * 60
                available.append(interval(day, afternoon, rng.choice((240, 300, 330))))
            else:
                start = rng.choice((12, 13, 14)) * 60
                available.append(interval(day, start, rng.choice((300, 360, 420))))
            if rng.random() < 0.3:
                busy.append(interval(day, rng.choice((10, 15, 16)) * 60, 60))
        limit = rng.choice((12, 15, 18, 20, 25)) * 60
        people.append(
            InstructorCandidate(
                iid,
                frozenset(quals),
                available,
                busy,
                frozenset(languages),
                load_limit_minutes=limit,
                current_load_minutes=rng.choice((0, 0, 0, 60, 120)),
            )
        )

    level_of: dict[tuple[int, str], str] = {}
    previous: dict[tuple[int, str], str | None] = {}
    learner_language = []
    learner_subjects = []
    for s in range(learners):
        learner_language.append("en" if rng.random() < 0.75 else rng.choice(OTHER_LANGUAGES))
        mine = sorted(set(rng.choices(subjects, popularity, k=rng.choice((1, 2, 2, 3)))))
        learner_subjects.append(mine)
        for subject in mine:
            level = rng.choices(LEVELS, (5, 3, 2))[0]
            level_of[(s, subject)] = level
            pool = qualified.get((subject, level), [])
            previous[(s, subject)] = rng.choice(pool) if pool and rng.random() < 0.7 else None

    requests = []
    all_ids = [p.instructor_id for p in people]
    for n in range(lessons):
        # Every learner has a lesson before anyone has a second: 3,000 learners, 5,000 lessons.
        s = n if n < learners else rng.randrange(learners)
        subject = rng.choice(learner_subjects[s])
        day = rng.randrange(DAYS)
        # After-school hours are the busiest, as in tutoring schools.
        hour = rng.choices(range(8, 20), (2, 2, 2, 2, 1, 1, 3, 4, 6, 7, 6, 4))[0]
        length = rng.choices((30, 45, 60), (3, 3, 4))[0]
        minute = hour * 60 + rng.choice((0, 15, 30, 45))
        pool = qualified.get((subject, level_of[(s, subject)]), all_ids)
        requests.append(
            LessonRequest(
                f"b{n:05d}",
                [f"s{s:04d}"],
                interval(day, minute, length),
                subject,
                level_of[(s, subject)],
                learner_language[s],
                previous_instructor_id=previous[(s, subject)],
                preferred_instructor_ids=rng.sample(pool, min(2, len(pool)))
                if rng.random() < 0.1
                else (),
                other_languages=("en",)
                if learner_language[s] != "en" and rng.random() < 0.6
                else (),
                excluded_instructor_ids=(rng.choice(pool),) if rng.random() < 0.02 else (),
            )
        )
    return MatchProblem(requests, people, level_order=LEVELS)


def summary(problem: MatchProblem, plan: MatchPlan) -> dict[str, float]:
    lessons = {lesson.booking_id: lesson for lesson in problem.lessons}
    assigned = [a for a in plan.assignments if a.instructor_id is not None]
    continuity = sum(
        1 for a in assigned if lessons[a.booking_id].previous_instructor_id == a.instructor_id
    )
    language = sum(1 for a in assigned if a.explanation.score_terms.get("language", 0) > 0)
    loads = Counter(a.instructor_id for a in assigned)
    return {
        "assigned": len(assigned),
        "continuity": continuity,
        "language": language,
        "max_load": max(loads.values(), default=0),
    }


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    problem = generate(args.lessons, args.instructors, args.learners, args.seed)
    problem = MatchProblem(
        problem.lessons,
        problem.instructors,
        time_limit_seconds=args.time_limit,
        level_order=problem.level_order,
    )
    print(
        f"generated {len(problem.lessons)} lessons, {len(problem.instructors)} instructors, "
        f"{args.learners} learners in {time.perf_counter() - started:.1f} s"
    )
    rows = []
    for round_ in range(args.rounds):
        t0 = time.perf_counter()
        greedy = await GreedyMatcher().assign(problem)
        greedy_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        matcher = CpSatMatcher(
            workers=args.workers,
            seed=args.seed,
            relative_gap_limit=args.gap_limit,
            deterministic=not args.portfolio,
        )
        plan = await matcher.assign(problem)
        cpsat_s = time.perf_counter() - t0
        check_plan(problem, greedy)
        check_plan(problem, plan)
        assert plan.bound is not None and plan.gap is not None
        rows.append((cpsat_s, plan.objective, plan.bound, plan.gap, greedy.objective, greedy_s))
        g, c = summary(problem, greedy), summary(problem, plan)
        print(
            f"round {round_ + 1}: cpsat {cpsat_s:.1f} s ({plan.status}), objective "
            f"{plan.objective:.1f}, bound {plan.bound:.1f}, gap {plan.gap:.3%}; greedy "
            f"{greedy_s:.1f} s, objective {greedy.objective:.1f}"
        )
        print(
            f"  assigned {c['assigned']} vs {g['assigned']}, continuity kept {c['continuity']} vs "
            f"{g['continuity']}, language match {c['language']} vs {g['language']}, busiest "
            f"instructor {c['max_load']} vs {g['max_load']} lessons (cpsat vs greedy)"
        )
    cpsat_s, objective, bound, gap, greedy_objective, greedy_s = (
        statistics.median(column) for column in zip(*rows, strict=True)
    )
    improvement = (objective - greedy_objective) / max(1.0, abs(greedy_objective))
    print(
        f"median of {len(rows)}: bulk assignment {cpsat_s:.1f} s, objective {objective:.1f}, "
        f"bound {bound:.1f}, gap {gap:.3%}; greedy baseline objective {greedy_objective:.1f} "
        f"({greedy_s:.1f} s); cpsat/greedy objective ratio {objective / greedy_objective:.3f} "
        f"(+{improvement:.2%})"
    )
    ok = cpsat_s <= 60 and gap <= 0.02 and objective > greedy_objective
    print(f"goals (<= 60 s, gap <= 2%, better than greedy): {'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lessons", type=int, default=5000)
    parser.add_argument("--instructors", type=int, default=400)
    parser.add_argument("--learners", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--time-limit", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gap-limit", type=float, default=0.005)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--portfolio",
        action="store_true",
        help="CP-SAT's parallel portfolio instead of the deterministic interleaved search",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
