"""SessionService RPCs for classroom interactions (hands, chat, reactions, polls, breakouts).

`classroom_methods` returns servicer methods by RPC name; session_servicer merges them with the
session lifecycle's own. Hands are raised on the participant connection only (no unary RPC).
"""

from __future__ import annotations

from classwire.api.session.v1 import service_pb2 as api

from ..convert import classroom as conv
from ..convert.common import duration_or_none, time_or_none
from ..domain.auth import Principal
from ..domain.classroom import Classroom
from ..domain.errors import FieldViolation, InvalidArgument
from ..rpc.context import principal
from .idempotency import key_for, respond
from .unimplemented import delegates

SERVICE = "classwire.api.session.v1.SessionService"


def _method(name: str, caller: Principal) -> str:
    # Request ids are the caller's own: two participants may pick the same one.
    suffix = f"#{caller.participant.participant_id}" if caller.participant else ""
    return f"{SERVICE}/{name}{suffix}"


def _write_scope(caller: Principal) -> None:
    # API keys are checked before the request_id is looked at; participants by permission.
    if caller.participant is None:
        caller.require("session:write")


class ClassroomHandler:
    IMPLEMENTED = (
        "GetHandQueue",
        "LowerHand",
        "SendChatMessage",
        "DeleteChatMessage",
        "ListChatMessages",
        "SendReaction",
        "CreatePoll",
        "GetPoll",
        "ListPolls",
        "AnswerPoll",
        "ClosePoll",
        "CreateBreakouts",
        "GetBreakouts",
        "MoveParticipant",
        "BroadcastToBreakouts",
        "CloseBreakouts",
    )

    def __init__(self, classroom: Classroom) -> None:
        self.classroom = classroom

    # Hands --------------------------------------------------------------------------------------

    async def GetHandQueue(self, request, context):
        entries = await self.classroom.get_hand_queue(principal(), request.session_id)
        return api.GetHandQueueResponse(entries=conv.hand_queue_to_proto(entries))

    async def LowerHand(self, request, context):
        caller = principal()
        target = request.WhichOneof("target")
        if target == "all":
            if not request.all:
                raise InvalidArgument(FieldViolation("all", "must be true when set"))
            who = None
        elif target == "participant_id" and request.participant_id:
            who = request.participant_id
        elif caller.participant is not None:
            who = caller.participant.participant_id  # no target: the caller's own hand
        else:
            raise InvalidArgument(FieldViolation("participant_id", "set participant_id or all"))
        entries = await self.classroom.lower_hand(caller, request.session_id, who)
        return api.LowerHandResponse(entries=conv.hand_queue_to_proto(entries))

    # Chat ---------------------------------------------------------------------------------------

    async def SendChatMessage(self, request, context):
        caller = principal()
        _write_scope(caller)
        as_participant = caller.participant is not None

        def to_response(row) -> api.SendChatMessageResponse:
            return api.SendChatMessageResponse(message=conv.chat_to_proto(row, as_participant))

        key = key_for(
            _method("SendChatMessage", caller),
            request,
            api.SendChatMessageResponse,
            to_response=to_response,
            from_response=lambda m: m,
        )
        result = await self.classroom.send_chat(
            caller, request.session_id, conv.chat_draft_from_request(request), key
        )
        return respond(result, api.SendChatMessageResponse, to_response)

    async def DeleteChatMessage(self, request, context):
        caller = principal()
        row = await self.classroom.delete_chat_message(caller, request.message_id)
        return api.DeleteChatMessageResponse(
            message=conv.chat_to_proto(row, caller.participant is not None)
        )

    async def ListChatMessages(self, request, context):
        caller = principal()
        rows, token = await self.classroom.list_chat_messages(
            caller,
            request.session_id,
            include_deleted=request.include_deleted,
            send_time_from=time_or_none(request, "send_time_from"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        as_participant = caller.participant is not None
        return api.ListChatMessagesResponse(
            messages=[conv.chat_to_proto(r, as_participant) for r in rows],
            next_page_token=token,
        )

    # Reactions ----------------------------------------------------------------------------------

    async def SendReaction(self, request, context):
        await self.classroom.react(principal(), request.session_id, request.emoji)
        return api.SendReactionResponse()

    # Polls --------------------------------------------------------------------------------------

    async def CreatePoll(self, request, context):
        caller = principal()
        _write_scope(caller)
        as_participant = caller.participant is not None

        def to_response(view) -> api.CreatePollResponse:
            return api.CreatePollResponse(poll=conv.poll_to_proto(view, as_participant))

        key = key_for(
            _method("CreatePoll", caller),
            request,
            api.CreatePollResponse,
            to_response=to_response,
            from_response=lambda m: m,
        )
        result = await self.classroom.create_poll(
            caller, request.session_id, conv.poll_draft_from_proto(request.poll), key
        )
        return respond(result, api.CreatePollResponse, to_response)

    async def GetPoll(self, request, context):
        caller = principal()
        view = await self.classroom.get_poll(caller, request.poll_id)
        return api.GetPollResponse(poll=conv.poll_to_proto(view, caller.participant is not None))

    async def ListPolls(self, request, context):
        caller = principal()
        views, token = await self.classroom.list_polls(
            caller,
            request.session_id,
            states=tuple(request.states),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        as_participant = caller.participant is not None
        return api.ListPollsResponse(
            polls=[conv.poll_to_proto(v, as_participant) for v in views], next_page_token=token
        )

    async def AnswerPoll(self, request, context):
        caller = principal()
        view = await self.classroom.answer_poll(
            caller, None, conv.poll_answer_from_request(request)
        )
        return api.AnswerPollResponse(poll=conv.poll_to_proto(view, True))

    async def ClosePoll(self, request, context):
        caller = principal()
        view = await self.classroom.close_poll(caller, request.poll_id)
        return api.ClosePollResponse(poll=conv.poll_to_proto(view, caller.participant is not None))

    # Breakouts ----------------------------------------------------------------------------------

    async def CreateBreakouts(self, request, context):
        caller = principal()
        _write_scope(caller)

        def to_response(view) -> api.CreateBreakoutsResponse:
            return api.CreateBreakoutsResponse(breakouts=conv.breakouts_to_proto(view))

        key = key_for(
            _method("CreateBreakouts", caller),
            request,
            api.CreateBreakoutsResponse,
            to_response=to_response,
            from_response=lambda m: m,
        )
        result = await self.classroom.create_breakouts(
            caller, request.session_id, conv.plan_from_proto(request.plan), key
        )
        return respond(result, api.CreateBreakoutsResponse, to_response)

    async def GetBreakouts(self, request, context):
        view = await self.classroom.get_breakouts(principal(), request.session_id)
        return api.GetBreakoutsResponse(breakouts=conv.breakouts_to_proto(view))

    async def MoveParticipant(self, request, context):
        view = await self.classroom.move_participant(
            principal(), request.session_id, request.participant_id, request.to_session_id
        )
        return api.MoveParticipantResponse(breakouts=conv.breakouts_to_proto(view))

    async def BroadcastToBreakouts(self, request, context):
        rooms = await self.classroom.broadcast(principal(), request.session_id, request.text)
        return api.BroadcastToBreakoutsResponse(session_ids=rooms)

    async def CloseBreakouts(self, request, context):
        view = await self.classroom.close_breakouts(
            principal(), request.session_id, duration_or_none(request, "countdown")
        )
        return api.CloseBreakoutsResponse(breakouts=conv.breakouts_to_proto(view))


def classroom_methods(platform) -> dict:
    """Servicer methods by RPC name; also registers the classroom's durable timer kinds."""
    platform.classroom.use_timers(platform.timers)
    handler = ClassroomHandler(platform.classroom)
    return delegates(handler, ClassroomHandler.IMPLEMENTED)
