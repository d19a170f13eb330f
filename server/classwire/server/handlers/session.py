"""SessionService: sessions and their lifecycle, join tokens, participants and moderation,
attendance, the session watch stream and the participant connection (Connect). Classroom
interactions (hands, chat, reactions, polls, breakouts) come from handlers/classroom.py."""

from __future__ import annotations

from classwire.api.session.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2_grpc

from ..convert import events as event_conv
from ..convert import session as conv
from ..convert.common import mask_paths
from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.event_log import EventLog
from ..domain.sessions import SessionsDomain
from ..rpc.context import principal
from .idempotency import key_for, respond
from .unimplemented import delegates, unimplemented_servicer

SERVICE = "classwire.api.session.v1.SessionService"


def _created_session(view) -> api.CreateSessionResponse:
    return api.CreateSessionResponse(session=conv.session_to_proto(view))


def _target(request, one: str, every: str) -> str | None:
    which = request.WhichOneof("target")
    if which == one and getattr(request, one):
        return getattr(request, one)
    if which == every and getattr(request, every):
        return None
    raise InvalidArgument(FieldViolation(one, f"set {one} or {every}: true"))


class SessionHandler:
    IMPLEMENTED = (
        "CreateSession",
        "GetSession",
        "ListSessions",
        "UpdateSession",
        "StartSession",
        "EndSession",
        "CancelSession",
        "CreateJoinToken",
        "RevokeJoinToken",
        "GetParticipant",
        "ListParticipants",
        "UpdateParticipant",
        "AdmitParticipant",
        "DenyParticipant",
        "MuteParticipant",
        "RemoveParticipant",
        "SetRoomLock",
        "GetAttendance",
        "WatchSession",
        "Connect",
    )

    def __init__(self, sessions: SessionsDomain, event_log: EventLog) -> None:
        self.sessions = sessions
        self.event_log = event_log

    async def CreateSession(self, request, context):
        caller = principal()
        caller.require("session:write")  # before the request_id is looked at
        key = key_for(
            f"{SERVICE}/CreateSession",
            request,
            api.CreateSessionResponse,
            to_response=_created_session,
            from_response=lambda m: m,
        )
        result = await self.sessions.create_session(
            caller, conv.session_input_from_proto(request.session), key
        )
        return respond(result, api.CreateSessionResponse, _created_session)

    async def GetSession(self, request, context):
        view = await self.sessions.get_session(principal(), request.session_id)
        return api.GetSessionResponse(session=conv.session_to_proto(view))

    async def ListSessions(self, request, context):
        views, token = await self.sessions.list_sessions(
            principal(), conv.filter_from_request(request), request.page_size, request.page_token
        )
        return api.ListSessionsResponse(
            sessions=[conv.session_to_proto(v) for v in views], next_page_token=token
        )

    async def UpdateSession(self, request, context):
        caller = principal()
        caller.require("session:write")
        paths = mask_paths(request.update_mask, conv.SESSION_UPDATABLE)
        if not request.session.id:
            raise InvalidArgument(FieldViolation("session.id", "is required"))
        view = await self.sessions.update_session(
            caller, request.session.id, conv.session_input_from_proto(request.session), paths
        )
        return api.UpdateSessionResponse(session=conv.session_to_proto(view))

    async def StartSession(self, request, context):
        view = await self.sessions.start_session(principal(), request.session_id)
        return api.StartSessionResponse(session=conv.session_to_proto(view))

    async def EndSession(self, request, context):
        view = await self.sessions.end_session(principal(), request.session_id, request.message)
        return api.EndSessionResponse(session=conv.session_to_proto(view))

    async def CancelSession(self, request, context):
        view = await self.sessions.cancel_session(principal(), request.session_id, request.reason)
        return api.CancelSessionResponse(session=conv.session_to_proto(view))

    async def CreateJoinToken(self, request, context):
        caller = principal()
        caller.require("session:write")
        key = key_for(
            f"{SERVICE}/CreateJoinToken",
            request,
            api.CreateJoinTokenResponse,
            to_response=conv.token_to_response,
            from_response=lambda m: m,
            # The token is a secret shown once: a replay returns everything else.
            strip=lambda m: m.ClearField("token"),
        )
        result = await self.sessions.create_join_token(
            caller, conv.join_token_input_from_request(request), key
        )
        return respond(result, api.CreateJoinTokenResponse, conv.token_to_response)

    async def RevokeJoinToken(self, request, context):
        await self.sessions.revoke_join_token(principal(), request.session_id, request.token_id)
        return api.RevokeJoinTokenResponse()

    async def GetParticipant(self, request, context):
        view = await self.sessions.get_participant(
            principal(), request.session_id, request.participant_id
        )
        return api.GetParticipantResponse(participant=conv.participant_to_proto(view))

    async def ListParticipants(self, request, context):
        views, token = await self.sessions.list_participants(
            principal(),
            request.session_id,
            tuple(request.states),
            tuple(request.roles),
            request.room_session_id,
            request.page_size,
            request.page_token,
        )
        return api.ListParticipantsResponse(
            participants=[conv.participant_to_proto(v) for v in views], next_page_token=token
        )

    async def UpdateParticipant(self, request, context):
        paths = mask_paths(request.update_mask, conv.PARTICIPANT_UPDATABLE)
        p = request.participant
        view = await self.sessions.update_participant(
            principal(),
            p.session_id,
            p.id,
            paths,
            role=p.role,
            overrides=conv.overrides_from_proto(p.permission_overrides),
            display_name=p.display_name,
            metadata=dict(p.metadata),
        )
        return api.UpdateParticipantResponse(participant=conv.participant_to_proto(view))

    async def AdmitParticipant(self, request, context):
        views = await self.sessions.admit(
            principal(), request.session_id, _target(request, "participant_id", "all_waiting")
        )
        return api.AdmitParticipantResponse(
            participants=[conv.participant_to_proto(v) for v in views]
        )

    async def DenyParticipant(self, request, context):
        view = await self.sessions.deny(
            principal(), request.session_id, request.participant_id, request.message
        )
        return api.DenyParticipantResponse(participant=conv.participant_to_proto(view))

    async def MuteParticipant(self, request, context):
        await self.sessions.mute(
            principal(),
            request.session_id,
            _target(request, "participant_id", "all_learners"),
            tuple(request.sources),
        )
        return api.MuteParticipantResponse()

    async def RemoveParticipant(self, request, context):
        view = await self.sessions.remove(
            principal(),
            request.session_id,
            request.participant_id,
            request.message,
            request.block_rejoin,
        )
        return api.RemoveParticipantResponse(participant=conv.participant_to_proto(view))

    async def SetRoomLock(self, request, context):
        view = await self.sessions.set_room_lock(
            principal(), request.session_id, request.locked, request.message
        )
        return api.SetRoomLockResponse(session=conv.session_to_proto(view))

    async def GetAttendance(self, request, context):
        view = await self.sessions.get_attendance(principal(), request.session_id)
        return api.GetAttendanceResponse(attendance=conv.attendance_to_proto(view))

    async def WatchSession(self, request, context):
        stream = self.event_log.watch_session(
            principal(), request.session_id, request.after_sequence, tuple(request.event_types)
        )
        async for item in stream:
            yield event_conv.watch_session_response(item)

    async def Connect(self, request_iterator, context):
        async def actions():
            async for request in request_iterator:
                yield conv.action_from_request(request)

        async for item in self.sessions.presence.connect(principal(), actions()):
            yield conv.connect_response(item)


def session_servicer(
    sessions: SessionsDomain, event_log: EventLog, classroom_methods: dict | None = None
) -> object:
    """The SessionService servicer: lifecycle methods here, classroom interactions from
    handlers/classroom.py (merged by RPC name)."""
    handler = SessionHandler(sessions, event_log)
    implemented = delegates(handler, SessionHandler.IMPLEMENTED)
    implemented.update(classroom_methods or {})
    return unimplemented_servicer(
        service_pb2_grpc.SessionServiceServicer, SERVICE, implemented=implemented
    )
