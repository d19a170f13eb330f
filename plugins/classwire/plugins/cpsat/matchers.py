"""The greedy and CP-SAT matchers."""

from __future__ import annotations

import asyncio
import math
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
# From this size on, the linear relaxation supplies the bound and a starting plan.
_RELAX_LESSONS = 200
# Relaxed values above this put a pair in the model the search works on.
_SUPPORT = 1e-3


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

    From a few hundred lessons on, the model's linear relaxation is solved first (PDLP): its
    prices give the reported bound (proven by weak duality, recomputed from the prices rather
    than taken from the solver), its rounding the starting plan, and its support the pairs
    the search improves that plan over. On a school's week this closes the gap to about 1%
    where CP-SAT's own bound, on two cores, stayed near the trivial one.

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
        if not prepared.pairs:
            objective, assignments = prepared.evaluate({})
            value = objective / SCALE
            return MatchPlan(assignments, value, value, True, MatchStatus.OPTIMAL, 0.0)
        # The best of the one-at-a-time plans starts the search, so the answer is never worse
        # than the greedy baseline.
        plans = [prepared.greedy(), prepared.scarce_first()]
        relaxed_bound = None
        only = None
        if len(prepared.lessons) >= _RELAX_LESSONS:
            # CP-SAT's own bound on a model this size stays near the trivial one within a
            # minute on few cores, and its search barely moves from the hint. The linear
            # relaxation gives a proven bound and, rounded, a plan close to it; the search
            # then improves that plan by large-neighbourhood search over the pairs the
            # relaxation uses (and those of the starting plans), a far smaller model.
            values, relaxed_bound = relaxation(prepared, problem.time_limit_seconds / 3)
            if relaxed_bound is not None:
                plans.append(prepared.guided(values))
                only = {p for p, v in enumerate(values) if v > _SUPPORT}
                for plan in plans:
                    only.update(plan.values())
        hint = max(plans, key=lambda plan: prepared.evaluate(plan)[0])

        model, x = build_model(prepared, hint, only)

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
        if only is not None:
            # The restricted model's bound says nothing of the whole problem: only search.
            params.use_lns_only = True
        offset = prepared.penalty * len(prepared.lessons)
        callback = None
        if relaxed_bound is not None and self.relative_gap_limit > 0:
            # CP-SAT's gap limit measures against its own bound: stop on the proven one too.
            reported = relaxed_bound - offset
            target = offset + reported - self.relative_gap_limit * abs(reported)
            callback = _stop_at(target, cp_model)
        if stop is not None and stop.is_set():
            params.max_time_in_seconds = 0.1  # cancelled while the relaxation ran
        watcher = None
        if stop is not None:
            watcher = threading.Thread(target=_stop_when, args=(stop, solver), daemon=True)
            watcher.start()
        try:
            status = solver.solve(model, callback)
        finally:
            if stop is not None:
                stop.set()
                assert watcher is not None
                watcher.join()

        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            chosen = {
                prepared.pairs[p].lesson: p
                for p, var in enumerate(x)
                if var is not None and solver.boolean_value(var)
            }
            match_status = (
                MatchStatus.OPTIMAL if status == cp_model.OPTIMAL else MatchStatus.FEASIBLE
            )
        else:
            # No solution within the limit (stopped very early): the greedy plan is still a
            # valid one, and the solver's bound still holds.
            chosen, match_status = hint, MatchStatus.FEASIBLE
        objective, assignments = prepared.evaluate(chosen)
        if only is not None:
            # Optimal on the restricted model is not optimal on the whole problem.
            match_status = MatchStatus.FEASIBLE
            bound = relaxed_bound
        else:
            bound = round(solver.best_objective_bound)
        bound = max(bound - offset, objective)
        optimal = match_status == MatchStatus.OPTIMAL or bound == objective
        return MatchPlan(
            assignments,
            objective / SCALE,
            bound / SCALE,
            optimal,
            MatchStatus.OPTIMAL if optimal else match_status,
            time.perf_counter() - started,
        )


def build_model(prepared: Prepared, hint: Mapping[int, int], only: set[int] | None = None):
    """The CP-SAT model of a prepared problem, hinted with ``hint`` (lesson -> pair), over
    the pairs in ``only`` (default: all). Returns the model and its pair variables, in
    ``prepared.pairs`` order (None for a pair left out)."""
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    x = [
        model.new_bool_var("") if only is None or p in only else None
        for p in range(len(prepared.pairs))
    ]
    for pairs in prepared.pairs_of_lesson:
        pairs = [p for p in pairs if x[p] is not None]
        if len(pairs) > 1:
            model.add_at_most_one(x[p] for p in pairs)
    pairs_of_instructor: list[list[int]] = [[] for _ in prepared.instructors]
    for p, pair in enumerate(prepared.pairs):
        if x[p] is not None:
            pairs_of_instructor[pair.instructor].append(p)
    objective_vars: list[Any] = [v for v in x if v is not None]
    objective_coefs = [
        pair.score for pair, v in zip(prepared.pairs, x, strict=True) if v is not None
    ]
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
        if var is not None:
            model.add_hint(var, p in chosen_pairs)
    model.maximize(cp_model.LinearExpr.weighted_sum(objective_vars, objective_coefs))
    return model, x


def relaxation(prepared: Prepared, time_limit: float) -> tuple[list[float], int | None]:
    """The model's linear relaxation, solved approximately with PDLP (a first-order LP method
    that handles this size in seconds where simplex takes most of a minute).

    Returns the relaxed pair values, to round into a starting plan, and a proven upper bound on
    the model's objective (offset included) or None. The bound does not trust the solver's
    tolerances: for any row prices y >= 0, weak duality gives
    ``max c'v <= b'y + sum_j ub_j * max(0, c_j - (A'y)_j)`` over the box 0 <= v <= ub, so it is
    recomputed here from the returned prices, exactly enough for integers, and stays valid
    however far PDLP was from optimal.
    """
    from ortools.linear_solver import pywraplp

    solver = pywraplp.Solver.CreateSolver("PDLP")
    if solver is None:
        return [0.0] * len(prepared.pairs), None
    n = len(prepared.pairs)
    cost = [pair.score for pair in prepared.pairs]
    upper = [1] * n
    rows: list[tuple[list[int], list[int], int]] = []  # (columns, coefficients, right side)
    for pairs in prepared.pairs_of_lesson:
        if len(pairs) > 1:
            rows.append((pairs, [1] * len(pairs), 1))
    pairs_of_instructor: list[list[int]] = [[] for _ in prepared.instructors]
    for p, pair in enumerate(prepared.pairs):
        pairs_of_instructor[pair.instructor].append(p)
    for i, pairs in enumerate(pairs_of_instructor):
        if not pairs:
            continue
        for clique in _overlap_cliques(prepared, pairs):
            rows.append((clique, [1] * len(clique), 1))
        capacity = prepared.instructors[i].capacity
        durations = [prepared.durations[prepared.pairs[p].lesson] for p in pairs]
        if capacity is not None and sum(durations) > capacity:
            rows.append((pairs, durations, capacity))
        inst = prepared.instructors[i]
        if any(inst.tier_coefs):
            tiers = list(range(len(cost), len(cost) + len(inst.tier_caps)))
            cost.extend(inst.tier_coefs)
            upper.extend(inst.tier_caps)
            minutes = [-prepared.minutes[prepared.pairs[p].lesson] for p in pairs]
            rows.append((tiers + pairs, [1] * len(tiers) + minutes, 0))
    variables = [solver.NumVar(0, u, "") for u in upper]
    objective = solver.Objective()
    for var, c in zip(variables, cost, strict=True):
        objective.SetCoefficient(var, c)
    objective.SetMaximization()
    constraints = []
    for columns, coefs, rhs in rows:
        row = solver.Constraint(-solver.infinity(), rhs)
        for j, a in zip(columns, coefs, strict=True):
            row.SetCoefficient(variables[j], a)
        constraints.append(row)
    solver.SetTimeLimit(max(1, int(time_limit * 1000)))
    solver.SetSolverSpecificParametersAsString(
        "termination_criteria { simple_optimality_criteria {"
        " eps_optimal_relative: 1e-5 eps_optimal_absolute: 1e-5 } }"
    )
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return [0.0] * n, None
    values = [v.solution_value() for v in variables[:n]]
    duals = [c.dual_value() for c in constraints]
    bound = None
    # Whatever the solver's sign convention, both readings are valid prices: keep the lower.
    for sign in (1.0, -1.0):
        prices = [max(0.0, sign * d) for d in duals]
        reduced = [float(c) for c in cost]
        for (columns, coefs, _), y in zip(rows, prices, strict=True):
            if y:
                for j, a in zip(columns, coefs, strict=True):
                    reduced[j] -= a * y
        total = math.fsum(
            [rhs * y for (_, _, rhs), y in zip(rows, prices, strict=True)]
            + [u * r for u, r in zip(upper, reduced, strict=True) if r > 0]
        )
        # The objective is an integer: round down, after a margin for floating-point error.
        candidate = math.floor(total + 1e-9 * abs(total) + 1)
        bound = candidate if bound is None else min(bound, candidate)
    return values, bound


def _stop_at(target: float, cp_model) -> Any:
    """A solution callback that stops the search at the first solution worth ``target``."""

    class StopAt(cp_model.CpSolverSolutionCallback):
        def on_solution_callback(self) -> None:
            if self.objective_value >= target:
                self.stop_search()

    return StopAt()


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
