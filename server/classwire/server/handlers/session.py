"""SessionService: sessions (create, get, list), join tokens and the session watch stream.
Every other RPC of the service answers UNIMPLEMENTED until the live-classroom capability."""

from __future__ import annotations

from classwire.api.session.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2_grpc

from ..convert import events as event_conv
from ..convert import session as conv
from ..domain.event_log import EventLog
from ..domain.sessions import SessionsDomain
from ..rpc.context import principal
from .idempotency import key_for
from .unimplemented import delegates, unimplemented_servicer

SERVICE = "classwire.api.session.v1.SessionService"


def _created_session(view) -> api.CreateSessionResponse:
    return api.CreateSessionResponse(session=conv.session_to_proto(view))


def _respond(result, response_type, convert):
    # A replayed request (same request_id) comes back as the stored response itself.
    return result if isinstance(result, response_type) else convert(result)


class SessionHandler:
    IMPLEMENTED = (
        "CreateSession",
        "GetSession",
        "ListSessions",
        "CreateJoinToken",
        "RevokeJoinToken",
        "WatchSession",
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
        return _respond(result, api.CreateSessionResponse, _created_session)

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
        return _respond(result, api.CreateJoinTokenResponse, conv.token_to_response)

    async def RevokeJoinToken(self, request, context):
        await self.sessions.revoke_join_token(principal(), request.session_id, request.token_id)
        return api.RevokeJoinTokenResponse()

    async def WatchSession(self, request, context):
        stream = self.event_log.watch_session(
            principal(), request.session_id, request.after_sequence, tuple(request.event_types)
        )
        async for item in stream:
            yield event_conv.watch_session_response(item)


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
