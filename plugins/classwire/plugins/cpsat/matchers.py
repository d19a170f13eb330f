"""The greedy and CP-SAT matchers."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from classwire.plugins.cpsat.scoring import SCALE, Prepared, prepare
from classwire.server.plugins.types import (
    ConfigError,
    LessonRequest,
    MatchAssignment,
    Matcher,
    MatchPlan,
    MatchProblem,
    MatchStatus,
)

__all__ = ["CpSatMatcher", "GreedyMatcher"]

# Problems this small are solved on the event loop: a thread hop costs more than the work.
_INLINE_LESSONS = 50


class _Base(Matcher):
    """Single-lesson matching, the same for both: rank the eligible instructors by score."""

    async def match(self, lesson: LessonRequest, problem: MatchProblem) -> MatchAssignment:
        return prepare(problem, lesson).match_one(lesson)

    async def assign(self, problem: MatchProblem) -> MatchPlan:
        if len(problem.lessons) <= _INLINE_LESSONS:
            return self._assign(problem, None)
        stop = threading.Event()
        try:
            # Shielded so that a cancelled caller stops the search instead of abandoning a
            # thread that keeps both cores busy.
            return await asyncio.shield(asyncio.to_thread(self._assign, problem, stop))
        except asyncio.CancelledError:
            stop.set()
            raise

    def _assign(self, problem: MatchProblem, stop: threading.Event | None) -> MatchPlan:
        raise NotImplementedError


class GreedyMatcher(_Base):
    """One lesson at a time, in start order, each to its best instructor still free.

    Fast and simple, but blind to what later lessons need: the baseline the CP-SAT matcher is
    measured against, and a choice for teams that want predictable, instant answers.
    """

    def _assign(self, problem: MatchProblem, stop: threading.Event | None) -> MatchPlan:
        started = time.perf_counter()
        prepared = Prepared(problem)
        objective, assignments = prepared.evaluate(prepared.greedy())
        return MatchPlan(
            assignments,
            objective / SCALE,
            bound=None,
            optimal=False,
            status=MatchStatus.FEASIBLE,
            solve_seconds=time.perf_counter() - started,
        )


class CpSatMatcher(_Base):
    """Global assignment with OR-Tools CP-SAT.

    One boolean per eligible (lesson, instructor) pair; at most one instructor per lesson; per
    instructor, at most one lesson of every maximal group of overlapping lessons (found with a
    time-sorted sweep) and the load limit; a concave load-balance reward in tiers. The greedy
    plan is the search's starting hint, so the answer is never worse than greedy.

    :param workers: search workers (default: the machine's cores, at most 8).
    :param seed: the solver's random seed.
    :param relative_gap_limit: stop once the proven gap is this small (0.0: prove optimality or
        run to the problem's time limit).
    :param deterministic: interleave the workers' search in fixed batches, so that the same
        problem, seed and worker count give the same plan whenever the search ends before the
        time limit.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        seed: int = 0,
        relative_gap_limit: float = 0.0,
        deterministic: bool = True,
    ) -> None:
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.seed = seed
        self.relative_gap_limit = relative_gap_limit
        self.deterministic = deterministic

    def _assign(self, problem: MatchProblem, stop: threading.Event | None) -> MatchPlan:
        # Imported here so that the greedy matcher works without OR-Tools installed.
        from ortools.sat.python import cp_model

        started = time.perf_counter()
        prepared = Prepared(problem)
        # The better of two one-at-a-time plans starts the search, so the answer is never
        # worse than the greedy baseline.
        hint = max(
            (prepared.greedy(), prepared.scarce_first()),
            key=lambda plan: prepared.evaluate(plan)[0],
        )
        if not prepared.pairs:
            objective, assignments = prepared.evaluate({})
            value = objective / SCALE
            return MatchPlan(assignments, value, value, True, MatchStatus.OPTIMAL, 0.0)

        model = cp_model.CpModel()
        x = [model.new_bool_var("") for _ in prepared.pairs]
        for pairs in prepared.pairs_of_lesson:
            if len(pairs) > 1:
                model.add_at_most_one(x[p] for p in pairs)
        pairs_of_instructor: list[list[int]] = [[] for _ in prepared.instructors]
        for p, pair in enumerate(prepared.pairs):
            pairs_of_instructor[pair.instructor].append(p)
        objective_vars: list[Any] = list(x)
        objective_coefs = [pair.score for pair in prepared.pairs]
        hint_minutes = [0] * len(prepared.instructors)
        for b, p in hint.items():
            hint_minutes[prepared.pairs[p].instructor] += prepared.minutes[b]
        for i, pairs in enumerate(pairs_of_instructor):
            if not pairs:
                continue
            for clique in _overlap_cliques(prepared, pairs):
                model.add_at_most_one(x[p] for p in clique)
            capacity = prepared.instructors[i].capacity
            durations = [prepared.durations[prepared.pairs[p].lesson] for p in pairs]
            if capacity is not None and sum(durations) > capacity:
                model.add(
                    cp_model.LinearExpr.weighted_sum([x[p] for p in pairs], durations) <= capacity
                )
            inst = prepared.instructors[i]
            if any(inst.tier_coefs):
                tiers = [model.new_int_var(0, cap, "") for cap in inst.tier_caps]
                minutes = [prepared.minutes[prepared.pairs[p].lesson] for p in pairs]
                # Rewarded minutes never exceed the minutes taught; the solver fills the
                # better-paid lower tiers first.
                model.add(
                    cp_model.LinearExpr.sum(tiers)
                    <= cp_model.LinearExpr.weighted_sum([x[p] for p in pairs], minutes)
                )
                objective_vars.extend(tiers)
                objective_coefs.extend(inst.tier_coefs)
                left = hint_minutes[i]
                for var, cap in zip(tiers, inst.tier_caps, strict=True):
                    take = min(cap, left)
                    model.add_hint(var, take)
                    left -= take
        chosen_pairs = set(hint.values())
        for p, var in enumerate(x):
            model.add_hint(var, p in chosen_pairs)
        model.maximize(cp_model.LinearExpr.weighted_sum(objective_vars, objective_coefs))

        solver = cp_model.CpSolver()
        params = solver.parameters
        params.num_workers = self.workers
        params.random_seed = self.seed
        params.max_time_in_seconds = max(
            0.1, problem.time_limit_seconds - (time.perf_counter() - started)
        )
        params.relative_gap_limit = self.relative_gap_limit
        if self.deterministic:
            params.interleave_search = True
        # Symmetry detection and repeated presolve rounds cost a large model a third of its
        # time limit for little gain on assignment problems.
        params.symmetry_level = 0
        params.max_presolve_iterations = 1
        watcher = None
        if stop is not None:
            watcher = threading.Thread(target=_stop_when, args=(stop, solver), daemon=True)
            watcher.start()
        try:
            status = solver.solve(model)
        finally:
            if stop is not None:
                stop.set()
                assert watcher is not None
                watcher.join()

        offset = prepared.penalty * len(prepared.lessons)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            chosen = {
                prepared.pairs[p].lesson: p for p, var in enumerate(x) if solver.boolean_value(var)
            }
            match_status = (
                MatchStatus.OPTIMAL if status == cp_model.OPTIMAL else MatchStatus.FEASIBLE
            )
        else:
            # No solution within the limit (stopped very early): the greedy plan is still a
            # valid one, and the solver's bound still holds.
            chosen, match_status = hint, MatchStatus.FEASIBLE
        objective, assignments = prepared.evaluate(chosen)
        bound = round(solver.best_objective_bound) - offset
        bound = max(bound, objective)
        optimal = match_status == MatchStatus.OPTIMAL or bound == objective
        return MatchPlan(
            assignments,
            objective / SCALE,
            bound / SCALE,
            optimal,
            MatchStatus.OPTIMAL if optimal else match_status,
            time.perf_counter() - started,
        )


def _stop_when(stop: threading.Event, solver: Any) -> None:
    stop.wait()
    solver.stop_search()


def _overlap_cliques(prepared: Prepared, pairs: list[int]) -> list[list[int]]:
    """Maximal groups of mutually overlapping lessons among ``pairs`` (one instructor's).

    Intervals overlap pairwise iff they share a point, so a sweep over start and end times
    finds every maximal group: the active set just before the first end after a run of starts.
    Half-open intervals: at equal times ends come before starts.
    """
    events = []
    for p in pairs:
        b = prepared.pairs[p].lesson
        events.append((prepared.starts[b], 1, p))
        events.append((prepared.ends[b], 0, p))
    events.sort()
    active: dict[int, None] = {}
    cliques = []
    grew = False
    for _, kind, p in events:
        if kind:
            active[p] = None
            grew = True
        else:
            if grew and len(active) > 1:
                cliques.append(list(active))
            grew = False
            del active[p]
    return cliques


def options_to_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the ``[providers.cpsat]`` options."""
    known = {"workers", "seed", "relative_gap_limit", "deterministic"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError("providers.cpsat", f"unknown option(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    if "workers" in options:
        workers = options["workers"]
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError("providers.cpsat.workers", "must be a positive integer")
        kwargs["workers"] = workers
    if "seed" in options:
        seed = options["seed"]
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError("providers.cpsat.seed", "must be an integer")
        kwargs["seed"] = seed
    if "relative_gap_limit" in options:
        gap = options["relative_gap_limit"]
        if not isinstance(gap, int | float) or isinstance(gap, bool) or not 0 <= gap < 1:
            raise ConfigError("providers.cpsat.relative_gap_limit", "must be in [0, 1)")
        kwargs["relative_gap_limit"] = float(gap)
    if "deterministic" in options:
        if not isinstance(options["deterministic"], bool):
            raise ConfigError("providers.cpsat.deterministic", "must be true or false")
        kwargs["deterministic"] = options["deterministic"]
    return kwargs
