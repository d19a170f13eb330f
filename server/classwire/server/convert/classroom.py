"""session.v1 protos <-> classroom domain values (hands, chat, polls, breakouts).

The `*_from_action` functions serve the participant connection: its ConnectRequest actions
carry the same fields as the unary requests.
"""

from __future__ import annotations

from classwire.api.common.v1 import common_pb2
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api

from ..domain.classroom import (
    BreakoutPlanInput,
    BreakoutsView,
    ChatDraft,
    HandEntry,
    ManualRoom,
    PollAnswerInput,
    PollDraft,
    PollView,
    option_counts,
)
from ..store.classroom_models import ChatMessageRow
from .common import duration_or_none, set_time


def hand_entry_to_proto(entry: HandEntry) -> pb.HandQueueEntry:
    message = pb.HandQueueEntry(
        participant_id=entry.participant_id,
        identity=entry.identity,
        display_name=entry.display_name,
        position=entry.position,
    )
    set_time(message.raise_time, entry.raise_time)
    return message


def hand_queue_to_proto(entries: list[HandEntry]) -> list[pb.HandQueueEntry]:
    return [hand_entry_to_proto(e) for e in entries]


# Chat -------------------------------------------------------------------------------------------


def chat_draft_from_request(request: api.SendChatMessageRequest) -> ChatDraft:
    return ChatDraft(
        text=request.text,
        audience=request.audience,
        recipient_participant_id=request.recipient_participant_id,
        reply_to_message_id=request.reply_to_message_id,
        sender_display_name=request.sender_display_name,
    )


def chat_draft_from_action(action: api.ConnectRequest.SendChat) -> ChatDraft:
    return ChatDraft(
        text=action.text,
        audience=action.audience,
        recipient_participant_id=action.recipient_participant_id,
        reply_to_message_id=action.reply_to_message_id,
    )


def _actor(kind: int, actor_id: str, identity: str, for_participant: bool) -> common_pb2.Actor:
    # Participants see that a backend service acted, never which API key.
    if for_participant and kind == common_pb2.Actor.KIND_API_KEY:
        actor_id = ""
    return common_pb2.Actor(kind=kind, id=actor_id, identity=identity)


def chat_to_proto(row: ChatMessageRow, for_participant: bool = False) -> pb.ChatMessage:
    message = pb.ChatMessage(
        id=row.id,
        session_id=row.session_id,
        sender=_actor(row.sender_kind, row.sender_id, row.sender_identity, for_participant),
        sender_participant_id=row.sender_participant_id,
        sender_display_name=row.sender_display_name,
        audience=row.audience,
        recipient_participant_id=row.recipient_participant_id,
        text=row.text,
        reply_to_message_id=row.reply_to_message_id,
    )
    set_time(message.send_time, row.send_time)
    set_time(message.delete_time, row.delete_time)
    if row.deleted_by:
        message.deleted_by.CopyFrom(
            _actor(
                row.deleted_by.get("kind", 0),
                row.deleted_by.get("id", ""),
                row.deleted_by.get("identity", ""),
                for_participant,
            )
        )
    return message


# Polls ------------------------------------------------------------------------------------------


def poll_draft_from_proto(message: pb.Poll) -> PollDraft:
    # Output-only fields (id, session_id, state, created_by, times, results) are ignored, as
    # CreatePollRequest.poll documents.
    return PollDraft(
        question=message.question,
        options=tuple((o.id, o.text) for o in message.options),
        correct_option_ids=tuple(message.correct_option_ids),
        anonymous=message.anonymous,
        max_selections=message.max_selections,
        results_visibility=message.results_visibility,
        duration=duration_or_none(message, "duration"),
    )


def poll_answer_from_request(request: api.AnswerPollRequest) -> PollAnswerInput:
    return PollAnswerInput(poll_id=request.poll_id, option_ids=tuple(request.option_ids))


poll_answer_from_action = poll_answer_from_request  # ConnectRequest.AnswerPoll: same fields


def poll_to_proto(view: PollView, for_participant: bool = False) -> pb.Poll:
    row = view.poll
    message = pb.Poll(
        id=row.id,
        session_id=row.session_id,
        question=row.question,
        options=[pb.PollOption(id=o["id"], text=o["text"]) for o in row.options],
        correct_option_ids=row.correct_option_ids if view.show_correct else [],
        anonymous=row.anonymous,
        max_selections=row.max_selections,
        results_visibility=row.results_visibility,
        state=row.state,
        created_by=_actor(
            row.created_by.get("kind", 0),
            row.created_by.get("id", ""),
            row.created_by.get("identity", ""),
            for_participant,
        ),
    )
    if row.duration_seconds is not None:
        message.duration.FromNanoseconds(round(row.duration_seconds * 1e9))
    set_time(message.create_time, row.create_time)
    set_time(message.close_time, row.close_time)
    message.results.CopyFrom(poll_results_to_proto(view))
    return message


def poll_results_to_proto(view: PollView) -> pb.PollResults:
    """The results as far as the viewer may see them (also for PollResultsUpdate pushes)."""
    row = view.poll
    results = pb.PollResults(answer_count=len(view.answers), eligible_count=view.eligible_count)
    if not view.show_results:
        return results
    correct = set(row.correct_option_ids) if view.show_correct else set()
    results.options.extend(
        pb.PollOptionResult(option_id=oid, count=n, correct=oid in correct)
        for oid, n in option_counts(row, view.answers)
    )
    if view.show_correct:
        results.correct_count = sum(1 for a in view.answers if a.correct)
    if view.show_answers:
        for a in view.answers:
            answer = pb.PollAnswer(
                participant_id=a.participant_id,
                identity=a.identity,
                option_ids=a.option_ids,
                correct=a.correct and view.show_correct,
            )
            set_time(answer.answer_time, a.answer_time)
            results.answers.append(answer)
    return results


# Breakouts --------------------------------------------------------------------------------------


def plan_from_proto(plan: pb.BreakoutPlan) -> BreakoutPlanInput:
    which = plan.WhichOneof("assignment")
    duration = duration_or_none(plan, "duration")
    if which == "manual":
        # BreakoutRoom.session_id is output only: the server creates the rooms.
        return BreakoutPlanInput(
            manual=tuple(
                ManualRoom(room.name, tuple(room.participant_ids)) for room in plan.manual.rooms
            ),
            duration=duration,
        )
    if which == "split":
        return BreakoutPlanInput(
            split=True,
            room_count=plan.split.room_count,
            room_names=tuple(plan.split.room_names),
            strategy=plan.split.strategy,
            roles=tuple(plan.split.roles),
            duration=duration,
        )
    return BreakoutPlanInput(duration=duration)


def breakouts_to_proto(view: BreakoutsView) -> pb.Breakouts:
    message = pb.Breakouts(
        session_id=view.round.session_id,
        state=view.round.state,
        rooms=[
            pb.BreakoutRoom(session_id=room.id, name=room.breakout_name, participant_ids=members)
            for room, members in view.rooms
        ],
    )
    set_time(message.open_time, view.round.open_time)
    set_time(message.close_time, view.round.close_time)
    return message
