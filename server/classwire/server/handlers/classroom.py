"""SessionService RPCs for classroom interactions (hands, chat, reactions, polls, breakouts).

`classroom_methods` returns servicer methods by RPC name; session_servicer merges them with the
session lifecycle's own. Empty until the interactions land: those RPCs answer UNIMPLEMENTED.
"""

from __future__ import annotations


def classroom_methods(platform) -> dict:
    return {}
