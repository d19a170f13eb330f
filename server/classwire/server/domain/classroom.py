"""Classroom interactions, all server-side: hand raise, chat, reactions, polls and breakouts.

The participant connection (domain/presence) calls these for the actions participants send on
their stream; the unary SessionService RPCs call them for backend callers. Every change is
written with its event in one unit of work; participants receive it from the event log.
"""

from __future__ import annotations

from ..domain.auth import Principal
from ..domain.errors import Unimplemented
from ..events.outbox import UnitOfWorkFactory
from ..store.engine import Database


class Classroom:
    def __init__(self, db: Database, uow: UnitOfWorkFactory, sessions) -> None:
        self.db = db
        self.uow = uow
        self.sessions = sessions

    async def raise_hand(self, principal: Principal, session_id: str) -> None:
        raise Unimplemented("hand raise is not available yet", reason="NOT_YET_AVAILABLE")

    async def lower_hand(
        self, principal: Principal, session_id: str, participant_id: str | None
    ) -> None:
        """Lowers one participant's hand, or every hand when participant_id is None."""
        raise Unimplemented("hand raise is not available yet", reason="NOT_YET_AVAILABLE")

    async def send_chat(self, principal: Principal, session_id: str, message) -> object:
        """`message` is a classwire.api.session.v1 chat message draft (text, audience, to)."""
        raise Unimplemented("chat is not available yet", reason="NOT_YET_AVAILABLE")

    async def react(self, principal: Principal, session_id: str, reaction) -> None:
        raise Unimplemented("reactions are not available yet", reason="NOT_YET_AVAILABLE")

    async def answer_poll(self, principal: Principal, session_id: str, answer) -> None:
        raise Unimplemented("polls are not available yet", reason="NOT_YET_AVAILABLE")
