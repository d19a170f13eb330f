"""Instructor matchers: ``cpsat`` (global assignment with OR-Tools CP-SAT) and ``greedy`` (one
lesson at a time, the baseline).

Both pick a single lesson's instructor the same way: among those qualified, not excluded,
available, free and within their load limit, the best score (continuity, language, preference,
load balance), with the constraints checked, the weighted terms and ranked alternatives.

Options of ``[providers.cpsat]``: ``workers`` (search threads; default the machine's cores, at
most 8), ``seed`` (default 0), ``relative_gap_limit`` (stop once the proven gap is this small;
default 0.0), ``deterministic`` (default true: the same problem, seed and worker count give the
same plan whenever the search ends before the time limit). ``greedy`` takes no options.
"""

from __future__ import annotations

from collections.abc import Callable

from classwire.plugins.cpsat.matchers import CpSatMatcher, GreedyMatcher, options_to_kwargs
from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import ConfigError, ProviderContext

__all__ = ["CpSatMatcher", "GreedyMatcher", "classwire_register_matchers"]


def create_cpsat(context: ProviderContext) -> CpSatMatcher:
    try:
        import ortools.sat.python.cp_model  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "providers.matcher", "the cpsat matcher needs OR-Tools: pip install ortools"
        ) from exc
    return CpSatMatcher(**options_to_kwargs(context.options))


def create_greedy(context: ProviderContext) -> GreedyMatcher:
    if context.options:
        raise ConfigError(
            "providers.greedy", f"unknown option(s): {', '.join(sorted(context.options))}"
        )
    return GreedyMatcher()


@hookimpl
def classwire_register_matchers(register: Callable[..., None]) -> None:
    register("cpsat", create_cpsat, description="global assignment with OR-Tools CP-SAT")
    register("greedy", create_greedy, description="one lesson at a time, in start order")
