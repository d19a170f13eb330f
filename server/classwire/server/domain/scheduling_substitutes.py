"""Substitutes for an absent instructor: ranked proposals from the matcher, assignment of one
substitute to one booking (the regular instructor stays on the series and is kept as
`substituted_instructor_id`), and the tenant's no-show policy run when a no-show is detected
or marked."""

from __future__ import annotations

import structlog

from classwire.api.events.v1 import scheduling_events_pb2 as ev
from classwire.api.scheduling.v1 import resources_pb2 as pb

from ..events.outbox import UnitOfWork
from ..store import scheduling_repositories as srepo
from ..store.scheduling_models import SchedBooking, SchedSubstituteProposal
from ..store.types import utcnow
from .auth import Principal
from .errors import DomainError, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from .ids import new_id
from .scheduling_matching import MatchOptionsInput, explanation_json

log = structlog.get_logger(__name__)

READ, WRITE = "scheduling:read", "scheduling:write"
OPEN, ASSIGNED, CLOSED = (
    pb.SUBSTITUTE_PROPOSAL_STATE_OPEN,
    pb.SUBSTITUTE_PROPOSAL_STATE_ASSIGNED,
    pb.SUBSTITUTE_PROPOSAL_STATE_CLOSED,
)
MAX_CANDIDATES = 50


def _require_substitutable(row: SchedBooking) -> None:
    if row.state == pb.BOOKING_STATE_CANCELLED:
        raise FailedPrecondition("the booking is cancelled", reason="BOOKING_CANCELLED")
    if row.state == pb.BOOKING_STATE_COMPLETED or row.end_time <= utcnow():
        raise FailedPrecondition("the booking is over", reason="BOOKING_COMPLETED")
    if not row.instructor_id:
        raise FailedPrecondition("the booking has no instructor", reason="NO_INSTRUCTOR_ASSIGNED")


class SubstitutesMixin:
    """Part of SchedulingDomain (uses MatchingMixin's _build, _solve_one, _assign_in)."""

    async def _rank_substitutes(
        self, session, row: SchedBooking, options: MatchOptionsInput, max_candidates: int
    ):
        from .scheduling_matching import _lesson_of

        built = await self._build(
            session,
            row.tenant_id,
            [_lesson_of(row)],
            options,
            reconsidered=[row.id],
            excluded=[row.instructor_id],
            max_alternatives=max_candidates,
        )
        result = await self._solve_one(built)
        ranked = []
        if result.instructor_id:
            ranked.append((result.instructor_id, explanation_json(result.explanation)))
            ranked.extend(
                (c.instructor_id, explanation_json(c.explanation)) for c in result.alternatives
            )
        return built.matcher, ranked[:max_candidates]

    async def _propose_in(
        self, uow: UnitOfWork, row: SchedBooking, options: MatchOptionsInput, max_candidates: int
    ) -> SchedSubstituteProposal:
        matcher, ranked = await self._rank_substitutes(uow.session, row, options, max_candidates)
        proposal = SchedSubstituteProposal(
            id=new_id("sub"),
            tenant_id=row.tenant_id,
            booking_id=row.id,
            absent_instructor_id=row.instructor_id,
            candidates=[
                {"instructor_id": iid, "rank": i + 1, "explanation": e}
                for i, (iid, e) in enumerate(ranked)
            ],
            matcher=matcher,
            state=OPEN,
            assigned_instructor_id="",
            create_time=utcnow(),
        )
        uow.session.add(proposal)
        await uow.session.flush()
        uow.emit(
            ev.SubstituteProposed(
                proposal_id=proposal.id,
                booking_id=row.id,
                absent_instructor_id=row.instructor_id,
                candidate_instructor_ids=[iid for iid, _ in ranked],
                matcher=matcher,
            )
        )
        return proposal

    async def propose_substitute(
        self, principal: Principal, ref, options: MatchOptionsInput, max_candidates: int
    ) -> SchedSubstituteProposal:
        principal.require(WRITE)
        if max_candidates < 0:
            raise InvalidArgument(FieldViolation("max_candidates", "must not be negative"))
        async with self._scope(principal) as uow:
            row = await self._resolve(uow.session, principal.tenant_id, ref, lock=True)
            _require_substitutable(row)
            return await self._propose_in(
                uow, row, options, min(max_candidates or 5, MAX_CANDIDATES)
            )

    async def get_proposal(self, principal: Principal, proposal_id: str):
        principal.require(READ)
        async with self.db.reader() as session:
            row = await srepo.proposal(session, principal.tenant_id, proposal_id)
        if row is None:
            raise NotFound(
                f"substitute proposal {proposal_id!r} not found",
                reason="SUBSTITUTE_PROPOSAL_NOT_FOUND",
            )
        return row

    async def assign_substitute(
        self,
        principal: Principal,
        ref,
        *,
        instructor_id: str = "",
        proposal_id: str = "",
        options: MatchOptionsInput | None = None,
        reason: str = "",
    ) -> SchedBooking:
        principal.require(WRITE)
        if not (instructor_id or proposal_id or options is not None):
            raise InvalidArgument(
                FieldViolation("choice", "name an instructor, a proposal or match options")
            )
        async with self._scope(principal) as uow:
            row = await self._resolve(uow.session, principal.tenant_id, ref, lock=True)
            _require_substitutable(row)
            await self._substitute_in(
                uow,
                row,
                instructor_id=instructor_id,
                proposal_id=proposal_id,
                options=options,
                reason=reason,
            )
            return row

    async def _substitute_in(
        self,
        uow: UnitOfWork,
        row: SchedBooking,
        *,
        instructor_id: str = "",
        proposal_id: str = "",
        options: MatchOptionsInput | None = None,
        reason: str = "",
    ) -> None:
        session, tenant = uow.session, row.tenant_id
        absent = row.instructor_id
        proposal = None
        matcher = ""
        explanation = None
        if proposal_id:
            proposal = await srepo.proposal(session, tenant, proposal_id, lock=True)
            if proposal is None or proposal.booking_id != row.id:
                raise NotFound(
                    f"substitute proposal {proposal_id!r} not found",
                    reason="SUBSTITUTE_PROPOSAL_NOT_FOUND",
                )
            if proposal.state != OPEN:
                raise FailedPrecondition("the proposal is closed", reason="PROPOSAL_CLOSED")
            matcher = proposal.matcher
            # The best candidate still eligible now: each is re-checked as it is tried.
            last_error: DomainError | None = None
            for candidate in proposal.candidates:
                try:
                    async with session.begin_nested():
                        await self._assign_in(
                            uow,
                            row,
                            candidate["instructor_id"],
                            method=pb.ASSIGNMENT_METHOD_SUBSTITUTE,
                            matcher=matcher,
                            explanation=candidate.get("explanation"),
                            reason=reason,
                            substitute=True,
                        )
                    instructor_id = candidate["instructor_id"]
                    break
                except DomainError as exc:
                    last_error = exc
            if not instructor_id:
                raise FailedPrecondition(
                    "no candidate of the proposal is still eligible"
                    + (f": {last_error.message}" if last_error else ""),
                    reason="NO_ELIGIBLE_INSTRUCTOR",
                )
        else:
            if options is not None:
                matcher, ranked = await self._rank_substitutes(session, row, options, 1)
                if not ranked:
                    raise FailedPrecondition(
                        "no eligible substitute", reason="NO_ELIGIBLE_INSTRUCTOR"
                    )
                instructor_id, explanation = ranked[0]
            if instructor_id == absent:
                raise InvalidArgument(
                    FieldViolation("instructor_id", "is the instructor being replaced")
                )
            await self._assign_in(
                uow,
                row,
                instructor_id,
                method=pb.ASSIGNMENT_METHOD_SUBSTITUTE,
                matcher=matcher,
                explanation=explanation,
                reason=reason,
                substitute=True,
            )
        for open_one in await srepo.open_proposals(session, tenant, row.id):
            if proposal is not None and open_one.id == proposal.id:
                open_one.state = ASSIGNED
                open_one.assigned_instructor_id = instructor_id
            else:
                open_one.state = CLOSED
        await session.flush()
        uow.emit(
            ev.SubstituteAssigned(
                booking_id=row.id,
                series_id=row.series_id or "",
                absent_instructor_id=absent,
                substitute_instructor_id=instructor_id,
                proposal_id=proposal.id if proposal else "",
                session_id=row.session_id,
            )
        )

    async def run_no_show_policy(self, uow: UnitOfWork, row: SchedBooking, action: int) -> None:
        """What the tenant's policy does after an instructor no-show, in the detecting unit
        of work. A matcher failure leaves the detection event standing and staff alerted."""
        if action not in (
            pb.NO_SHOW_ACTION_PROPOSE_SUBSTITUTE,
            pb.NO_SHOW_ACTION_ASSIGN_SUBSTITUTE,
        ):
            return
        try:
            async with uow.session.begin_nested():
                if action == pb.NO_SHOW_ACTION_PROPOSE_SUBSTITUTE:
                    await self._propose_in(uow, row, MatchOptionsInput(), 5)
                else:
                    await self._substitute_in(
                        uow, row, options=MatchOptionsInput(), reason="instructor no-show"
                    )
        except DomainError as exc:
            log.warning(
                "no-show policy could not act",
                booking_id=row.id,
                reason=exc.reason,
                detail=exc.message,
            )
