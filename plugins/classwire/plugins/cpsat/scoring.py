"""What both built-in matchers share: eligibility, integer-scaled scores and explanations.

A problem is turned once into integer arrays (seconds since the earliest interval, minutes of
load) so that the eligibility of every (lesson, instructor) pair is a few comparisons, and so that
the greedy baseline and the CP-SAT model value a plan with exactly the same integer objective.

Objective (maximised) = sum over assigned lessons of their score terms (weight x value)
+ the instructors' load-balance rewards - the ``unassigned`` penalty per lesson left unstaffed.
Internally every term is an integer in units of 1/SCALE.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from classwire.server.plugins.types import (
    DEFAULT_MATCH_WEIGHTS,
    ConstraintCheck,
    InstructorCandidate,
    LessonRequest,
    MatchAssignment,
    MatchCandidate,
    MatchExplanation,
    MatchProblem,
    ScoreTerm,
)

__all__ = ["SCALE", "Prepared", "prepare", "resolve_weights"]

SCALE = 10_000
"""Integer units per objective point: CP-SAT needs integer coefficients."""

TIERS = 4
"""The load-balance reward falls in steps over an instructor's reference load: the first
quarter earns 7/8 per lesson-length of minutes, the last 1/8, beyond it nothing. A concave
reward makes the solver fill instructors evenly without any extra binary variable."""

_MAX_INELIGIBLE = 50


def resolve_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The problem's weights over the defaults; ``balance`` is an alias of ``load_balance``."""
    resolved = dict(DEFAULT_MATCH_WEIGHTS)
    for name, value in weights.items():
        key = "load_balance" if name == "balance" else name
        resolved[key] = max(0.0, float(value))
    return resolved


def _lang_match(wanted: str, spoken: frozenset[str]) -> bool:
    # BCP 47: "en" is understood by an "en-GB" speaker and the other way round.
    wanted = wanted.lower()
    primary = wanted.split("-")[0]
    for lang in spoken:
        lang = lang.lower()
        if lang == wanted or lang.split("-")[0] == primary:
            return True
    return False


def _minutes(seconds: int) -> str:
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}h{minutes:02d}" if minutes else f"{hours}h"


@dataclass(slots=True)
class _Instructor:
    source: InstructorCandidate
    levels: dict[str, set[str]]
    win_starts: list[int]
    win_max_end: list[int]  # prefix maximum of window ends, in start order
    busy_starts: list[int]
    busy_max_end: list[int]
    capacity: int | None  # seconds of load still allowed; None: unlimited
    tier_caps: list[int] = field(default_factory=list)  # minutes per balance tier, from now on
    tier_values: list[float] = field(default_factory=list)  # unweighted value per minute
    tier_coefs: list[int] = field(default_factory=list)  # scaled, weighted reward per minute


@dataclass(slots=True)
class Pair:
    """An eligible (lesson, instructor) pair: every static hard constraint holds."""

    lesson: int
    instructor: int
    terms: tuple[ScoreTerm, ...]
    score: int  # scaled static terms plus the unassigned penalty avoided


class Prepared:
    """A problem in integer form, with its eligible pairs."""

    def __init__(self, problem: MatchProblem) -> None:
        self.problem = problem
        self.weights = resolve_weights(problem.weights)
        self.penalty = round(SCALE * self.weights["unassigned"])
        self.lessons = list(problem.lessons)
        times = [lesson.interval.start for lesson in self.lessons]
        times += [w.start for i in problem.instructors for w in i.available]
        self.epoch: datetime | None = min(times) if times else None
        self.starts = [self._sec(lesson.interval.start) for lesson in self.lessons]
        self.ends = [self._sec(lesson.interval.end) for lesson in self.lessons]
        self.durations = [e - s for s, e in zip(self.starts, self.ends, strict=True)]
        self.minutes = [d // 60 for d in self.durations]
        # The balance reward is per "lesson length" of minutes, so a typical lesson's value is
        # in [0, 1] however long lessons are.
        self.unit_minutes = max(self.minutes, default=60) or 60
        self.instructors = [self._instructor(i) for i in problem.instructors]
        self.index = {i.instructor_id: n for n, i in enumerate(problem.instructors)}
        self.rank = {name: n for n, name in enumerate(problem.level_order)}
        self.by_subject: dict[str, list[int]] = {}
        for n, inst in enumerate(self.instructors):
            for subject in inst.levels:
                self.by_subject.setdefault(subject, []).append(n)
        self.pairs: list[Pair] = []
        self.pairs_of_lesson: list[list[int]] = [[] for _ in self.lessons]
        for b in range(len(self.lessons)):
            for i in self.by_subject.get(self.lessons[b].subject, ()):
                if self._eligible(b, i):
                    terms = self._static_terms(b, i)
                    score = self.penalty + sum(round(SCALE * t.contribution) for t in terms)
                    self.pairs_of_lesson[b].append(len(self.pairs))
                    self.pairs.append(Pair(b, i, terms, score))

    # -- set-up ------------------------------------------------------------------------------

    def _sec(self, when: datetime) -> int:
        assert self.epoch is not None
        return int((when - self.epoch).total_seconds())

    def _instructor(self, source: InstructorCandidate) -> _Instructor:
        levels: dict[str, set[str]] = {}
        for subject, level in source.qualifications:
            levels.setdefault(subject, set()).add(level)
        windows = sorted((self._sec(w.start), self._sec(w.end)) for w in source.available)
        busy = sorted((self._sec(w.start), self._sec(w.end)) for w in source.busy)
        capacity = None
        if source.load_limit_minutes is not None:
            capacity = max(0, (source.load_limit_minutes - source.current_load_minutes) * 60)
        inst = _Instructor(
            source,
            levels,
            [s for s, _ in windows],
            _prefix_max([e for _, e in windows]),
            [s for s, _ in busy],
            _prefix_max([e for _, e in busy]),
            capacity,
        )
        reference = source.load_target_minutes
        if reference is None:
            reference = source.load_limit_minutes
        if reference is None:
            reference = sum(e - s for s, e in windows) // 60
        weight = self.weights["load_balance"]
        current = source.current_load_minutes
        for k in range(TIERS):
            low, high = round(k * reference / TIERS), round((k + 1) * reference / TIERS)
            cap = max(0, high - max(low, current))
            if cap:
                value = (1 - (k + 0.5) / TIERS) / self.unit_minutes
                inst.tier_caps.append(cap)
                inst.tier_values.append(value)
                inst.tier_coefs.append(round(SCALE * weight * value))
        return inst

    def _qualified(self, b: int, i: int) -> bool:
        lesson = self.lessons[b]
        levels = self.instructors[i].levels.get(lesson.subject)
        if not levels:
            return False
        if "" in levels or lesson.level in levels:
            return True
        wanted = self.rank.get(lesson.level)
        return wanted is not None and any(self.rank.get(q, -1) >= wanted for q in levels)

    def _available(self, b: int, i: int) -> bool:
        inst = self.instructors[i]
        n = bisect.bisect_right(inst.win_starts, self.starts[b])
        return n > 0 and inst.win_max_end[n - 1] >= self.ends[b]

    def _free(self, b: int, i: int) -> bool:
        inst = self.instructors[i]
        n = bisect.bisect_left(inst.busy_starts, self.ends[b])
        return n == 0 or inst.busy_max_end[n - 1] <= self.starts[b]

    def _within_load(self, b: int, i: int) -> bool:
        capacity = self.instructors[i].capacity
        return capacity is None or self.durations[b] <= capacity

    def _excluded(self, b: int, i: int) -> bool:
        return self.instructors[i].source.instructor_id in self.lessons[b].excluded_instructor_ids

    def _eligible(self, b: int, i: int) -> bool:
        return (
            self._qualified(b, i)
            and self._available(b, i)
            and self._free(b, i)
            and self._within_load(b, i)
            and not self._excluded(b, i)
        )

    def _static_terms(self, b: int, i: int) -> tuple[ScoreTerm, ...]:
        lesson = self.lessons[b]
        inst = self.instructors[i].source
        w = self.weights
        who = inst.instructor_id
        if lesson.previous_instructor_id == who:
            continuity, c_detail = 1.0, "the learners' previous instructor"
        elif lesson.lesson_history.get(who, 0) > 0:
            continuity = 0.5
            c_detail = f"taught these learners {lesson.lesson_history[who]} times"
        else:
            continuity, c_detail = 0.0, "no lessons with these learners"
        if not lesson.language:
            language, l_detail = 0.0, "no language requested"
        elif _lang_match(lesson.language, inst.languages):
            language, l_detail = 1.0, f"teaches in {lesson.language}"
        elif any(_lang_match(o, inst.languages) for o in lesson.other_languages):
            language, l_detail = 0.5, "teaches in another language the learners understand"
        else:
            language, l_detail = 0.0, f"does not teach in {lesson.language}"
        if who in lesson.preferred_instructor_ids:
            preference, p_detail = 1.0, "preferred by the learners"
        else:
            preference, p_detail = 0.0, "not among the learners' preferences"
        return (
            ScoreTerm("continuity", w["continuity"], continuity, c_detail),
            ScoreTerm("language", w["language"], language, l_detail),
            ScoreTerm("preference", w["preference"], preference, p_detail),
        )

    # -- load balance ------------------------------------------------------------------------

    def balance(self, i: int, used: int, extra: int) -> tuple[int, float]:
        """Scaled reward and unweighted value of ``extra`` minutes on top of ``used`` minutes
        already given to instructor ``i`` in this plan: lower tiers fill first."""
        inst = self.instructors[i]
        reward, value, skip, left = 0, 0.0, used, extra
        for cap, coef, per_minute in zip(
            inst.tier_caps, inst.tier_coefs, inst.tier_values, strict=True
        ):
            if skip >= cap:
                skip -= cap
                continue
            take = min(cap - skip, left)
            skip = 0
            reward += take * coef
            value += take * per_minute
            left -= take
            if not left:
                break
        weight = self.weights["load_balance"]
        if weight > 0:
            # Shown as the objective counts it (per-minute rewards are rounded to 1/SCALE).
            value = reward / (SCALE * weight)
        return reward, value

    def balance_term(self, i: int, value: float, detail: str) -> ScoreTerm:
        return ScoreTerm("load_balance", self.weights["load_balance"], value, detail)

    def load_detail(self, i: int, used_seconds: int) -> str:
        inst = self.instructors[i].source
        load = inst.current_load_minutes * 60 + used_seconds
        if inst.load_limit_minutes is None:
            return f"load {_minutes(load)}, no limit"
        return f"load {_minutes(load)} of {_minutes(inst.load_limit_minutes * 60)}"

    # -- explanations ------------------------------------------------------------------------

    def checks(self, b: int, i: int, *, used_seconds: int = 0) -> list[ConstraintCheck]:
        """Every hard constraint for the pair, satisfied or not, with details."""
        lesson = self.lessons[b]
        level = f"{lesson.subject}/{lesson.level}" if lesson.level else lesson.subject
        capacity = self.instructors[i].capacity
        fits = capacity is None or used_seconds + self.durations[b] <= capacity
        return [
            ConstraintCheck("qualified", self._qualified(b, i), f"teaches {level}"),
            ConstraintCheck(
                "not_excluded",
                not self._excluded(b, i),
                "not excluded by the learners" if not self._excluded(b, i) else "excluded",
            ),
            ConstraintCheck(
                "available",
                self._available(b, i),
                "inside an availability window"
                if self._available(b, i)
                else "outside availability",
            ),
            ConstraintCheck(
                "no_overlap",
                self._free(b, i),
                "free at that time" if self._free(b, i) else "busy at that time",
            ),
            ConstraintCheck(
                "within_load_limit",
                fits,
                self.load_detail(i, used_seconds + self.durations[b]),
            ),
        ]

    def explain(self, p: int, balance_reward: int, balance_value: float, *, used: int = 0):
        """The explanation of choosing pair ``p``; ``used`` is the instructor's plan load in
        seconds before this lesson."""
        pair = self.pairs[p]
        terms = (
            *pair.terms,
            self.balance_term(
                pair.instructor,
                balance_value,
                self.load_detail(pair.instructor, used + self.durations[pair.lesson]),
            ),
        )
        scaled = [round(SCALE * t.contribution) for t in pair.terms] + [balance_reward]
        checks = self.checks(pair.lesson, pair.instructor, used_seconds=used)
        score = sum(scaled) / SCALE
        return MatchExplanation(
            constraints_met=[c.name for c in checks],
            score_terms={t.name: s / SCALE for t, s in zip(terms, scaled, strict=True)},
            reason=f"{self.instructors[pair.instructor].source.instructor_id}: score "
            f"{score:.3f} ({', '.join(t.detail for t in terms if t.value > 0) or 'no bonus'})",
            constraints=checks,
            terms=terms,
            score=score,
        )

    def why_unassigned(self, b: int, *, planned: bool) -> MatchExplanation:
        """Why lesson ``b`` got no one: no eligible instructor, or (``planned``) all of them
        were given other lessons at that time or reached their load limit."""
        lesson = self.lessons[b]
        eligible = len(self.pairs_of_lesson[b])
        if eligible and planned:
            reason = (
                f"all {eligible} eligible instructors are taken by other lessons at that time "
                "or reach their load limit"
            )
        else:
            qualified = [
                i for i in self.by_subject.get(lesson.subject, ()) if self._qualified(b, i)
            ]
            if not qualified:
                level = f" at level {lesson.level!r}" if lesson.level else ""
                reason = f"no instructor is qualified for {lesson.subject!r}{level}"
            else:
                failed: dict[str, int] = {}
                for i in qualified:
                    for check in self.checks(b, i):
                        if not check.satisfied:
                            failed[check.name] = failed.get(check.name, 0) + 1
                parts = ", ".join(f"{n} fail {name}" for name, n in sorted(failed.items()))
                reason = f"none of the {len(qualified)} qualified instructors can take it: {parts}"
        return MatchExplanation(reason=reason)

    def ineligible(self, b: int) -> list[MatchCandidate]:
        out = []
        eligible = {self.pairs[p].instructor for p in self.pairs_of_lesson[b]}
        for i in range(len(self.instructors)):
            if i in eligible:
                continue
            checks = self.checks(b, i)
            failed = [c.name for c in checks if not c.satisfied]
            out.append(
                MatchCandidate(
                    self.instructors[i].source.instructor_id,
                    0,
                    MatchExplanation(
                        constraints_met=[c.name for c in checks if c.satisfied],
                        reason="fails " + ", ".join(failed),
                        constraints=checks,
                    ),
                )
            )
            if len(out) >= _MAX_INELIGIBLE:
                break
        return out

    # -- one lesson --------------------------------------------------------------------------

    def rank_candidates(self, b: int) -> list[tuple[int, int, int, float]]:
        """Eligible pairs of lesson ``b`` as (pair, total scaled score, balance reward,
        balance value), best first; ties go to the instructor listed first."""
        ranked = []
        for p in self.pairs_of_lesson[b]:
            pair = self.pairs[p]
            reward, value = self.balance(pair.instructor, 0, self.minutes[b])
            ranked.append((p, pair.score + reward, reward, value))
        ranked.sort(key=lambda r: (-r[1], self.pairs[r[0]].instructor))
        return ranked

    def match_one(self, lesson: LessonRequest) -> MatchAssignment:
        b = next(
            (n for n, known in enumerate(self.lessons) if known.booking_id == lesson.booking_id),
            None,
        )
        if b is None:
            raise ValueError("lesson is not part of the prepared problem")
        ranked = self.rank_candidates(b)
        ineligible = self.ineligible(b)
        if not ranked:
            return MatchAssignment(
                lesson.booking_id,
                None,
                self.why_unassigned(b, planned=False),
                ineligible=ineligible,
            )
        candidates = [
            MatchCandidate(
                self.instructors[self.pairs[p].instructor].source.instructor_id,
                rank,
                self.explain(p, reward, value),
            )
            for rank, (p, _, reward, value) in enumerate(
                ranked[: self.problem.max_alternatives + 1], start=1
            )
        ]
        best = candidates[0]
        return MatchAssignment(
            lesson.booking_id,
            best.instructor_id,
            best.explanation,
            alternatives=candidates[1:],
            ineligible=ineligible,
        )

    # -- whole plans -------------------------------------------------------------------------

    def evaluate(self, chosen: Mapping[int, int]) -> tuple[int, list[MatchAssignment]]:
        """Scaled objective and explained assignments of a plan (lesson -> pair)."""
        per_instructor: dict[int, list[int]] = {}
        for b, p in chosen.items():
            per_instructor.setdefault(self.pairs[p].instructor, []).append(b)
        objective = -self.penalty * len(self.lessons)
        shares: dict[int, tuple[int, float]] = {}
        used_before: dict[int, int] = {}
        for i, lessons in per_instructor.items():
            lessons.sort(key=lambda b: (self.starts[b], b))
            total = sum(self.minutes[b] for b in lessons)
            reward, value = self.balance(i, 0, total)
            objective += reward
            # The instructor's reward is shared out by minutes, so the lessons' explanations
            # add up to the objective.
            given = 0
            used = 0
            for n, b in enumerate(lessons):
                share = (
                    reward - given
                    if n == len(lessons) - 1
                    else reward * self.minutes[b] // max(1, total)
                )
                given += share
                shares[b] = (share, value * self.minutes[b] / max(1, total))
                used_before[b] = used
                used += self.durations[b]
        out = []
        for b, lesson in enumerate(self.lessons):
            p = chosen.get(b)
            if p is None:
                out.append(
                    MatchAssignment(lesson.booking_id, None, self.why_unassigned(b, planned=True))
                )
                continue
            objective += self.pairs[p].score
            reward, value = shares[b]
            out.append(
                MatchAssignment(
                    lesson.booking_id,
                    self.instructors[self.pairs[p].instructor].source.instructor_id,
                    self.explain(p, reward, value, used=used_before[b]),
                )
            )
        return objective, out

    def greedy(self) -> dict[int, int]:
        """One lesson at a time in start order, each to its best instructor still free: the
        way round-robin schedulers assign."""
        order = sorted(range(len(self.lessons)), key=lambda b: (self.starts[b], b))
        return self._one_at_a_time(order, in_start_order=True)

    def scarce_first(self) -> dict[int, int]:
        """The lessons with the fewest eligible instructors first: a better starting point for
        the solver than start order, which spends scarce instructors on easy lessons."""
        order = sorted(
            range(len(self.lessons)),
            key=lambda b: (len(self.pairs_of_lesson[b]), self.starts[b], b),
        )
        return self._one_at_a_time(order, in_start_order=False)

    def guided(self, values: Sequence[float]) -> dict[int, int]:
        """A plan rounded from a relaxation: the pairs in order of their relaxed values (then
        of their scores), each taken while its lesson is unassigned and its instructor free
        and within load. A near-integral relaxation rounds to a near-optimal plan."""
        order = sorted(
            range(len(self.pairs)), key=lambda p: (-round(values[p], 6), -self.pairs[p].score, p)
        )
        taken: list[list[tuple[int, int]]] = [[] for _ in self.instructors]
        used = [0] * len(self.instructors)
        chosen: dict[int, int] = {}
        for p in order:
            b, i = self.pairs[p].lesson, self.pairs[p].instructor
            if b in chosen:
                continue
            capacity = self.instructors[i].capacity
            if capacity is not None and used[i] + self.durations[b] > capacity:
                continue
            start, end = self.starts[b], self.ends[b]
            slots = taken[i]
            k = bisect.bisect_left(slots, (start, end))
            # Sorted and disjoint: only the neighbours can overlap.
            if k < len(slots) and slots[k][0] < end:
                continue
            if k > 0 and slots[k - 1][1] > start:
                continue
            slots.insert(k, (start, end))
            used[i] += self.durations[b]
            chosen[b] = p
        return chosen

    def _one_at_a_time(self, order: list[int], *, in_start_order: bool) -> dict[int, int]:
        taken: list[list[tuple[int, int]]] = [[] for _ in self.instructors]
        busy_until = [-(2**62)] * len(self.instructors)
        used = [0] * len(self.instructors)
        used_minutes = [0] * len(self.instructors)
        chosen: dict[int, int] = {}
        for b in order:
            best: tuple[int, int] | None = None
            for p in self.pairs_of_lesson[b]:
                i = self.pairs[p].instructor
                if in_start_order:
                    # Lessons come in start order: an earlier one overlaps iff it ends later.
                    if busy_until[i] > self.starts[b]:
                        continue
                elif any(s < self.ends[b] and self.starts[b] < e for s, e in taken[i]):
                    continue
                capacity = self.instructors[i].capacity
                if capacity is not None and used[i] + self.durations[b] > capacity:
                    continue
                reward, _ = self.balance(i, used_minutes[i], self.minutes[b])
                score = self.pairs[p].score + reward
                if best is None or score > best[0]:
                    best = (score, p)
            if best is None:
                continue
            p = best[1]
            i = self.pairs[p].instructor
            chosen[b] = p
            busy_until[i] = max(busy_until[i], self.ends[b])
            taken[i].append((self.starts[b], self.ends[b]))
            used[i] += self.durations[b]
            used_minutes[i] += self.minutes[b]
        return chosen


def _prefix_max(values: Sequence[int]) -> list[int]:
    out, best = [], -(2**62)
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


def prepare(problem: MatchProblem, extra: LessonRequest | None = None) -> Prepared:
    """Prepare ``problem``; for a single ``match``, only ``extra`` is considered."""
    if extra is not None:
        problem = MatchProblem(
            [extra],
            problem.instructors,
            problem.weights,
            problem.time_limit_seconds,
            problem.level_order,
            problem.max_alternatives,
        )
    return Prepared(problem)
