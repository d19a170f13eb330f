"""SchedulingService: validate -> scheduling domain -> convert. RPCs not listed in
SchedulingHandler.IMPLEMENTED still answer UNIMPLEMENTED."""

from __future__ import annotations

from classwire.api.scheduling.v1 import resources_pb2 as pb
from classwire.api.scheduling.v1 import service_pb2 as api
from classwire.api.scheduling.v1 import service_pb2_grpc

from ..convert import scheduling as conv
from ..convert.common import mask_paths, time_or_none
from ..domain import scheduling as d
from ..domain.errors import FieldViolation, InvalidArgument
from ..rpc.context import principal
from .idempotency import key_for, respond
from .unimplemented import delegates, unimplemented_servicer

SERVICE = "classwire.api.scheduling.v1.SchedulingService"


def _key(method: str, request, response_type, convert):
    return key_for(
        f"{SERVICE}/{method}",
        request,
        response_type,
        to_response=convert,
        from_response=lambda m: m,
    )


def _unsupported(request, *names: str) -> None:
    """Fields of the contract this release cannot honour are refused, never ignored."""
    bad = []
    for name in names:
        head, _, tail = name.partition(".")
        message = request
        if tail:
            if not message.HasField(head):
                continue
            message, name = getattr(message, head), tail
        value = getattr(message, name)
        present = message.HasField(name) if hasattr(value, "ListFields") else bool(value)
        if present:
            bad.append(FieldViolation(f"{head}.{name}" if tail else name, "is not supported yet"))
    if bad:
        raise InvalidArgument(bad)


class SchedulingHandler:
    IMPLEMENTED = (
        "GetSchedulingSettings",
        "UpdateSchedulingSettings",
        "GetAvailability",
        "SetAvailability",
        "ListAvailabilities",
        "GetFreeBusy",
        "FindSlots",
        "CreateBooking",
        "GetBooking",
        "ListBookings",
        "UpdateBooking",
        "RescheduleBooking",
        "CancelBooking",
        "ReserveSeat",
        "ReleaseSeat",
        "MarkNoShow",
        "CreateSeries",
        "GetSeries",
        "ListSeries",
        "ListOccurrences",
        "UpdateSeries",
        "CancelSeries",
        "GetCalendarFeed",
        "ProvisionSession",
        "MatchInstructor",
        "AssignInstructor",
        "UnassignInstructor",
        "AssignInstructors",
        "GetAssignmentPlan",
        "ApplyAssignmentPlan",
        "ProposeSubstitute",
        "AssignSubstitute",
        "GetSubstituteProposal",
        "CreateCalendarFeedToken",
        "ListCalendarFeedTokens",
        "DeleteCalendarFeedToken",
    )

    def __init__(self, domain: d.SchedulingDomain) -> None:
        self.domain = domain

    # Settings ----------------------------------------------------------------------------------

    async def GetSchedulingSettings(self, request, context):
        data, version, update_time = await self.domain.get_settings(principal())
        return api.GetSchedulingSettingsResponse(
            settings=conv.settings_to_proto(data, version, update_time)
        )

    async def UpdateSchedulingSettings(self, request, context):
        principal().require(d.ADMIN)
        paths = mask_paths(request.update_mask, d.SETTINGS_PATHS)
        data, version, update_time = await self.domain.update_settings(
            principal(), conv.settings_from_proto(request.settings), paths, request.settings.etag
        )
        return api.UpdateSchedulingSettingsResponse(
            settings=conv.settings_to_proto(data, version, update_time)
        )

    # Availability ------------------------------------------------------------------------------

    async def GetAvailability(self, request, context):
        view = await self.domain.get_availability(principal(), request.person_id)
        return api.GetAvailabilityResponse(availability=conv.availability_to_proto(view))

    async def SetAvailability(self, request, context):
        principal().require(d.WRITE)
        paths = (
            mask_paths(request.update_mask, d.AVAILABILITY_PATHS)
            if request.HasField("update_mask") and request.update_mask.paths
            else None
        )
        view = await self.domain.set_availability(
            principal(),
            conv.availability_from_proto(request.availability),
            paths,
            request.availability.etag,
        )
        return api.SetAvailabilityResponse(availability=conv.availability_to_proto(view))

    async def ListAvailabilities(self, request, context):
        views, token = await self.domain.list_availabilities(
            principal(), list(request.person_ids), request.page_size, request.page_token
        )
        return api.ListAvailabilitiesResponse(
            availabilities=[conv.availability_to_proto(v) for v in views], next_page_token=token
        )

    async def GetFreeBusy(self, request, context):
        views = await self.domain.free_busy(
            principal(), list(request.person_ids), conv.interval(request, "window")
        )
        return api.GetFreeBusyResponse(people=[conv.free_busy_to_proto(v) for v in views])

    async def FindSlots(self, request, context):
        principal().require(d.READ)
        _unsupported(request, "match.matcher")
        match = request.match
        weights = None
        if request.HasField("match") and match.HasField("weights"):
            w = match.weights
            weights = {
                "continuity": w.continuity,
                "language": w.language,
                "preference": w.preference,
                "load_balance": w.load_balance,
            }
        query = d.FindSlotsQuery(
            subject=request.subject,
            level=request.level,
            duration=request.duration.ToTimedelta() if request.HasField("duration") else None,
            window=conv.interval(request, "window"),
            learner_id=request.learner_id,
            time_zone=request.time_zone,
            instructor_ids=tuple(request.instructor_ids) or tuple(match.instructor_ids),
            include_group_seats=request.include_group_seats,
            max_candidates=request.max_candidates,
            max_slots=request.max_slots,
            weights=weights,
            excluded_instructor_ids=tuple(match.excluded_instructor_ids),
        )
        slots, tz, truncated = await self.domain.find_slots(principal(), query)
        return api.FindSlotsResponse(
            slots=conv.slots_to_proto(slots), time_zone=tz, truncated=truncated
        )

    # Bookings ----------------------------------------------------------------------------------

    async def CreateBooking(self, request, context):
        caller = principal()
        caller.require(d.WRITE)
        _unsupported(request, "booking.reminder_policy")

        def convert(row):
            return api.CreateBookingResponse(booking=conv.booking_to_proto(row))

        key = _key("CreateBooking", request, api.CreateBookingResponse, convert)
        result = await self.domain.create_booking(
            caller, conv.booking_from_proto(request.booking), key
        )
        return respond(result, api.CreateBookingResponse, convert)

    async def GetBooking(self, request, context):
        row = await self.domain.get_booking(principal(), conv.ref_from_proto(request.booking))
        return api.GetBookingResponse(booking=conv.booking_to_proto(row))

    async def ListBookings(self, request, context):
        rows, token = await self.domain.list_bookings(
            principal(),
            conv.interval(request, "window"),
            states=list(request.states),
            size=request.page_size,
            token=request.page_token,
            person_id=request.person_id,
            instructor_id=request.instructor_id,
            learner_id=request.learner_id,
            class_id=request.class_id,
            series_id=request.series_id,
            subject=request.subject,
            unassigned_only=request.unassigned_only,
        )
        return api.ListBookingsResponse(
            bookings=[conv.booking_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateBooking(self, request, context):
        principal().require(d.WRITE)
        paths = mask_paths(request.update_mask, d.BOOKING_PATHS - {"reminder_policy"})
        row = await self.domain.update_booking(
            principal(),
            request.booking.id,
            conv.booking_from_proto(request.booking),
            paths,
            request.booking.etag,
        )
        return api.UpdateBookingResponse(booking=conv.booking_to_proto(row))

    async def RescheduleBooking(self, request, context):
        principal().require(d.WRITE)
        _unsupported(request, "allow_reassign")
        row, outcome = await self.domain.reschedule(
            principal(),
            conv.ref_from_proto(request.booking),
            time_or_none(request, "new_start_time"),
            time_or_none(request, "new_end_time"),
            request.reason,
            conv.initiator_from_proto(request.initiator),
            request.waive_cutoff,
            request.etag,
        )
        return api.RescheduleBookingResponse(booking=conv.booking_to_proto(row), outcome=outcome)

    async def CancelBooking(self, request, context):
        row, outcome = await self.domain.cancel(
            principal(),
            conv.ref_from_proto(request.booking),
            request.reason,
            conv.initiator_from_proto(request.initiator),
            request.waive_cutoff,
            request.etag,
        )
        return api.CancelBookingResponse(booking=conv.booking_to_proto(row), outcome=outcome)

    async def ReserveSeat(self, request, context):
        caller = principal()
        caller.require(d.WRITE)
        if request.WhichOneof("target") != "booking":
            raise InvalidArgument(
                FieldViolation(
                    "series_id", "series-wide seats are not supported yet; name a booking"
                )
            )

        def convert(row):
            return api.ReserveSeatResponse(booking=conv.booking_to_proto(row))

        key = _key("ReserveSeat", request, api.ReserveSeatResponse, convert)
        result = await self.domain.reserve_seat(
            caller, conv.ref_from_proto(request.booking), request.learner_id, key
        )
        return respond(result, api.ReserveSeatResponse, convert)

    async def ReleaseSeat(self, request, context):
        principal().require(d.WRITE)
        if request.WhichOneof("target") != "booking":
            raise InvalidArgument(
                FieldViolation(
                    "series_id", "series-wide seats are not supported yet; name a booking"
                )
            )
        row, outcome = await self.domain.release_seat(
            principal(),
            conv.ref_from_proto(request.booking),
            request.learner_id,
            request.reason,
            conv.initiator_from_proto(request.initiator),
            request.waive_cutoff,
        )
        return api.ReleaseSeatResponse(booking=conv.booking_to_proto(row), outcome=outcome)

    async def MarkNoShow(self, request, context):
        row = await self.domain.mark_no_show(
            principal(),
            conv.ref_from_proto(request.booking),
            list(request.person_ids),
            request.note,
        )
        return api.MarkNoShowResponse(booking=conv.booking_to_proto(row))

    # Series ------------------------------------------------------------------------------------

    async def CreateSeries(self, request, context):
        caller = principal()
        caller.require(d.WRITE)
        _unsupported(request, "series.reminder_policy")

        def convert(result):
            series, conflicts = result
            return api.CreateSeriesResponse(
                series=conv.series_to_proto(series),
                conflicts=[conv.conflict_to_proto(c) for c in conflicts],
            )

        key = _key("CreateSeries", request, api.CreateSeriesResponse, convert)
        result = await self.domain.create_series(
            caller, conv.series_from_proto(request.series), request.conflict_policy, key
        )
        return respond(result, api.CreateSeriesResponse, convert)

    async def GetSeries(self, request, context):
        row = await self.domain.get_series(principal(), request.series_id)
        return api.GetSeriesResponse(series=conv.series_to_proto(row))

    async def ListSeries(self, request, context):
        rows, token = await self.domain.list_series(
            principal(),
            state=request.state,
            class_id=request.class_id,
            instructor_id=request.instructor_id,
            learner_id=request.learner_id,
            size=request.page_size,
            token=request.page_token,
        )
        return api.ListSeriesResponse(
            series=[conv.series_to_proto(r) for r in rows], next_page_token=token
        )

    async def ListOccurrences(self, request, context):
        rows, token = await self.domain.list_occurrences(
            principal(),
            request.series_id,
            conv.interval(request, "window"),
            request.include_cancelled,
            request.page_size,
            request.page_token,
        )
        return api.ListOccurrencesResponse(
            occurrences=[conv.booking_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateSeries(self, request, context):
        principal().require(d.WRITE)
        # Changing the rule or the times of a series is not supported yet: the mask refuses it.
        paths = mask_paths(request.update_mask, d.SERIES_PATHS - {"reminder_policy"})
        _unsupported(request, "exception_handling", "conflict_policy")
        row = await self.domain.update_series(
            principal(),
            request.series.id,
            conv.series_from_proto(request.series),
            paths,
            time_or_none(request, "apply_from_time"),
            request.series.etag,
        )
        return api.UpdateSeriesResponse(series=conv.series_to_proto(row))

    async def CancelSeries(self, request, context):
        row, outcome = await self.domain.cancel_series(
            principal(),
            request.series_id,
            time_or_none(request, "from_time"),
            request.reason,
            conv.initiator_from_proto(request.initiator),
            request.waive_cutoff,
            request.etag,
        )
        return api.CancelSeriesResponse(series=conv.series_to_proto(row), outcome=outcome)

    # Provisioning ------------------------------------------------------------------------------

    async def ProvisionSession(self, request, context):
        row = await self.domain.provision(principal(), conv.ref_from_proto(request.booking))
        return api.ProvisionSessionResponse(booking=conv.booking_to_proto(row))

    # Calendars ---------------------------------------------------------------------------------

    async def GetCalendarFeed(self, request, context):
        ics = await self.domain.calendar_feed(
            principal(),
            request.person_id,
            conv.interval(request, "window"),
            request.include_cancelled,
        )
        return api.GetCalendarFeedResponse(ics=ics, content_type="text/calendar; charset=utf-8")

    # Matching ----------------------------------------------------------------------------------

    async def MatchInstructor(self, request, context):
        target = request.WhichOneof("target")
        result, matcher = await self.domain.match_instructor(
            principal(),
            conv.ref_from_proto(request.booking) if target == "booking" else None,
            conv.booking_from_proto(request.prospective_booking)
            if target == "prospective_booking"
            else None,
            conv.match_options_from_proto(request),
            request.max_alternatives,
            request.include_ineligible,
        )
        out = api.MatchInstructorResponse(matcher=matcher)
        if result.instructor_id:
            out.chosen.CopyFrom(conv.match_candidate_to_proto(result, rank=1))
        out.alternatives.extend(
            conv.match_candidate_to_proto(c, rank=i + 2) for i, c in enumerate(result.alternatives)
        )
        out.ineligible.extend(conv.match_candidate_to_proto(c, rank=0) for c in result.ineligible)
        return out

    async def AssignInstructor(self, request, context):
        principal().require(d.WRITE)
        target = request.WhichOneof("target")
        choice = request.WhichOneof("choice")
        problems = []
        if target is None:
            problems.append(FieldViolation("target", "name a booking or a series"))
        if choice is None:
            problems.append(FieldViolation("choice", "name an instructor or match options"))
        if problems:
            raise InvalidArgument(problems)
        row, explanation = await self.domain.assign_instructor(
            principal(),
            conv.ref_from_proto(request.booking) if target == "booking" else None,
            request.series_id if target == "series_id" else "",
            request.instructor_id if choice == "instructor_id" else "",
            conv.match_options_from_proto(request) if choice == "match" else None,
            request.reason,
        )
        out = api.AssignInstructorResponse()
        if target == "series_id":
            out.series.CopyFrom(conv.series_to_proto(row))
        else:
            out.booking.CopyFrom(conv.booking_to_proto(row))
        if explanation:
            out.explanation.CopyFrom(conv.explanation_to_proto(explanation))
        return out

    async def UnassignInstructor(self, request, context):
        principal().require(d.WRITE)
        target = request.WhichOneof("target")
        if target is None:
            raise InvalidArgument(FieldViolation("target", "name a booking or a series"))
        row = await self.domain.unassign_instructor(
            principal(),
            conv.ref_from_proto(request.booking) if target == "booking" else None,
            request.series_id if target == "series_id" else "",
            request.reason,
        )
        if target == "series_id":
            return api.UnassignInstructorResponse(series=conv.series_to_proto(row))
        return api.UnassignInstructorResponse(booking=conv.booking_to_proto(row))

    async def AssignInstructors(self, request, context):
        caller = principal()
        caller.require(d.WRITE)
        scope = request.WhichOneof("scope")
        selection = request.selection

        def convert(row):
            return api.AssignInstructorsResponse(plan=conv.plan_to_proto(row))

        key = _key("AssignInstructors", request, api.AssignInstructorsResponse, convert)
        window = conv.interval(selection, "window") if scope == "selection" else None
        if scope == "selection" and window is None:
            raise InvalidArgument(FieldViolation("selection.window", "is required"))
        result = await self.domain.assign_instructors(
            caller,
            booking_ids=list(request.bookings.booking_ids) if scope == "bookings" else None,
            window=window,
            class_ids=list(selection.class_ids),
            subjects=list(selection.subjects),
            include_assigned=request.include_assigned,
            apply=request.mode == pb.ASSIGNMENT_MODE_APPLY,
            options=conv.match_options_from_proto(request),
            time_limit=request.time_limit.ToTimedelta() if request.HasField("time_limit") else None,
            key=key,
        )
        return respond(result, api.AssignInstructorsResponse, convert)

    async def GetAssignmentPlan(self, request, context):
        row = await self.domain.get_plan(principal(), request.plan_id)
        return api.GetAssignmentPlanResponse(plan=conv.plan_to_proto(row))

    async def ApplyAssignmentPlan(self, request, context):
        caller = principal()
        caller.require(d.WRITE)

        def convert(row):
            return api.ApplyAssignmentPlanResponse(plan=conv.plan_to_proto(row))

        key = _key("ApplyAssignmentPlan", request, api.ApplyAssignmentPlanResponse, convert)
        result = await self.domain.apply_plan(caller, request.plan_id, key)
        return respond(result, api.ApplyAssignmentPlanResponse, convert)

    # Substitutes -------------------------------------------------------------------------------

    async def ProposeSubstitute(self, request, context):
        row = await self.domain.propose_substitute(
            principal(),
            conv.ref_from_proto(request.booking),
            conv.match_options_from_proto(request),
            request.max_candidates,
        )
        return api.ProposeSubstituteResponse(proposal=conv.proposal_to_proto(row))

    async def AssignSubstitute(self, request, context):
        choice = request.WhichOneof("choice")
        row = await self.domain.assign_substitute(
            principal(),
            conv.ref_from_proto(request.booking),
            instructor_id=request.instructor_id if choice == "instructor_id" else "",
            proposal_id=request.proposal_id if choice == "proposal_id" else "",
            options=conv.match_options_from_proto(request) if choice == "match" else None,
            reason=request.reason,
        )
        return api.AssignSubstituteResponse(booking=conv.booking_to_proto(row))

    async def GetSubstituteProposal(self, request, context):
        row = await self.domain.get_proposal(principal(), request.proposal_id)
        return api.GetSubstituteProposalResponse(proposal=conv.proposal_to_proto(row))

    # Calendar feed tokens ----------------------------------------------------------------------

    async def CreateCalendarFeedToken(self, request, context):
        caller = principal()
        caller.require(d.WRITE)
        base = self.domain.public_base_url

        def convert(result):
            row, secret = result
            return api.CreateCalendarFeedTokenResponse(
                token=conv.feed_token_to_proto(row, secret, base)
            )

        def strip(response):
            # Only a hash of the secret is kept: a retry returns the token without it.
            response.token.token = ""
            response.token.url = ""

        key = key_for(
            f"{SERVICE}/CreateCalendarFeedToken",
            request,
            api.CreateCalendarFeedTokenResponse,
            to_response=convert,
            from_response=lambda m: m,
            strip=strip,
        )
        result = await self.domain.create_feed_token(caller, request.person_id, request.label, key)
        return respond(result, api.CreateCalendarFeedTokenResponse, convert)

    async def ListCalendarFeedTokens(self, request, context):
        rows, token = await self.domain.list_feed_tokens(
            principal(), request.person_id, request.page_size, request.page_token
        )
        return api.ListCalendarFeedTokensResponse(
            tokens=[conv.feed_token_to_proto(r) for r in rows], next_page_token=token
        )

    async def DeleteCalendarFeedToken(self, request, context):
        await self.domain.delete_feed_token(principal(), request.token_id)
        return api.DeleteCalendarFeedTokenResponse()


def _matcher_factory(platform):
    """Creates matcher providers by name through the plugin manager; each is closed with the
    platform's other providers."""
    config = platform.config

    def create(name: str):
        if name not in platform.plugins.names("matcher"):
            raise LookupError(name)
        provider = platform.plugins.create(
            "matcher",
            name,
            data_dir=config.data_dir,
            database_url=config.effective_database_url,
            options=config.provider_options.get(name, {}),
            key=config.provider_keys.get("matcher", "providers.matcher"),
        )
        platform.providers[f"matcher:{name}"] = provider
        return provider

    return create


def scheduling_servicer(platform) -> object:
    """The servicer, built from the composition root's Platform (db, uow, timers, ...)."""
    domain = d.SchedulingDomain(
        platform.db,
        platform.uow,
        getattr(platform, "timers", None),
        getattr(platform, "sessions", None),
        matcher_factory=_matcher_factory(platform) if hasattr(platform, "plugins") else None,
    )
    config = getattr(platform, "config", None)
    if config is not None:
        domain.default_matcher = config.providers.get("matcher", "") or "cpsat"
    authenticator = getattr(platform, "authenticator", None)
    if authenticator is not None and hasattr(authenticator, "verifiers"):
        from ..domain.scheduling_feeds import FEED_TOKEN_PREFIX

        authenticator.verifiers[FEED_TOKEN_PREFIX] = domain.authenticate_feed_token
    if domain.timers is not None:
        # Before the runner starts (the factory runs while the server is assembled).
        domain.register_timers(domain.timers)
    handler = SchedulingHandler(domain)
    return unimplemented_servicer(
        service_pb2_grpc.SchedulingServiceServicer,
        SERVICE,
        implemented=delegates(handler, SchedulingHandler.IMPLEMENTED),
    )
