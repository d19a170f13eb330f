"""SessionService over real gRPC: sessions, join tokens and participant-token authentication."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import jwt
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2_grpc
from classwire.server.store.models import LiveSession

INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_INSTRUCTOR
LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER


def details(exc: grpc.aio.AioRpcError):
    """(ErrorInfo, BadRequest or None) decoded from the rich status trailer."""
    status = rpc_status.from_call(exc)
    info, bad = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad


async def call(server, method, request, credential):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.SessionServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential}"),) if credential else ()
        return await getattr(stub, method)(request, metadata=metadata)


async def platform_call(server, method, request, credential):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = platform_grpc.PlatformServiceStub(channel)
        return await getattr(stub, method)(
            request, metadata=(("authorization", f"Bearer {credential}"),)
        )


async def expect_error(awaitable, code: grpc.StatusCode, reason: str | None = None):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert details(caught.value)[0].reason == reason
    return caught.value


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def future(hours: float) -> datetime:
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0)


def new_session(title="Algebra", start_hours=24.0, length_hours=1.0, **fields) -> pb.Session:
    start = future(start_hours)
    return pb.Session(
        title=title,
        scheduled_start_time=ts(start),
        scheduled_end_time=ts(start + timedelta(hours=length_hours)),
        **fields,
    )


async def create(server, credential=None, **fields) -> pb.Session:
    response = await call(
        server,
        "CreateSession",
        api.CreateSessionRequest(session=new_session(**fields)),
        credential or server.api_key,
    )
    return response.session


async def token_for(server, session_id, identity="learner-1", role=LEARNER, credential=None, **kw):
    return await call(
        server,
        "CreateJoinToken",
        api.CreateJoinTokenRequest(
            session_id=session_id, identity=identity, display_name=identity.title(), role=role, **kw
        ),
        credential or server.api_key,
    )


@pytest.fixture(scope="module")
async def other_tenant(server):
    """A second tenant, created through the API by the operator key."""
    return await platform_call(
        server,
        "CreateTenant",
        platform_api.CreateTenantRequest(display_name="Other academy"),
        server.api_key,
    )


async def test_create_and_get_session(server):
    created = await create(
        server,
        class_id="cls_math",
        course_id="crs_algebra",
        instructor_identities=["teacher-a", "teacher-b"],
        capacity=25,
        metadata={"room": "blue"},
        settings=pb.SessionSettings(
            waiting_room=True, reconnect_grace=duration_pb2.Duration(seconds=45)
        ),
    )
    assert created.id.startswith("ses_")
    assert created.state == common_pb2.SESSION_STATE_SCHEDULED
    assert list(created.instructor_identities) == ["teacher-a", "teacher-b"]
    assert created.capacity == 25 and created.metadata["room"] == "blue"
    # Unset durations read back with the values that apply: the documented defaults.
    assert created.settings.reconnect_grace.seconds == 45
    assert created.settings.join_window.seconds == 600
    assert created.settings.empty_room_timeout.seconds == 300
    assert created.settings.waiting_room
    fetched = await call(
        server, "GetSession", api.GetSessionRequest(session_id=created.id), server.api_key
    )
    assert fetched.session == created


async def test_session_whose_join_window_is_open_starts_open(server):
    created = await create(server, start_hours=0.05)  # 3 minutes from now: inside 10 min
    assert created.state == common_pb2.SESSION_STATE_OPEN
    assert created.HasField("open_time")


async def test_request_id_makes_create_idempotent(server):
    class_id = f"cls_{uuid.uuid4().hex[:8]}"
    request = api.CreateSessionRequest(
        request_id=str(uuid.uuid4()), session=new_session(class_id=class_id)
    )
    first = await call(server, "CreateSession", request, server.api_key)
    second = await call(server, "CreateSession", request, server.api_key)
    assert second.session == first.session
    listed = await call(
        server, "ListSessions", api.ListSessionsRequest(class_id=class_id), server.api_key
    )
    assert [s.id for s in listed.sessions] == [first.session.id]
    request.session.title = "Something else"
    await expect_error(
        call(server, "CreateSession", request, server.api_key),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )


async def test_invalid_sessions_report_every_field(server):
    start = future(24)
    session = pb.Session(
        title="",
        scheduled_start_time=ts(start),
        scheduled_end_time=ts(start - timedelta(minutes=1)),
        instructor_identities=["t", "t"],
        settings=pb.SessionSettings(
            reconnect_grace=duration_pb2.Duration(seconds=600),
            join_window=duration_pb2.Duration(seconds=-1),
            role_permissions=[
                pb.RolePermissions(
                    role=LEARNER,
                    overrides=pb.PermissionOverrides(
                        grant=[ev.PARTICIPANT_PERMISSION_CHAT],
                        revoke=[ev.PARTICIPANT_PERMISSION_CHAT],
                    ),
                )
            ],
        ),
        metadata={f"k{i}": "v" for i in range(33)},
    )
    err = await expect_error(
        call(server, "CreateSession", api.CreateSessionRequest(session=session), server.api_key),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    fields = {v.field for v in details(err)[1].field_violations}
    assert fields == {
        "session.title",
        "session.scheduled_end_time",
        "session.instructor_identities[1]",
        "session.settings.reconnect_grace",
        "session.settings.join_window",
        "session.settings.role_permissions[0].overrides.revoke[0]",
        "session.metadata",
    }
    err = await expect_error(
        call(
            server,
            "CreateSession",
            api.CreateSessionRequest(session=pb.Session(title="x")),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert {v.field for v in details(err)[1].field_violations} == {
        "session.scheduled_start_time",
        "session.scheduled_end_time",
    }


async def test_list_pages_in_schedule_order_with_filters(server):
    class_id = f"cls_{uuid.uuid4().hex[:8]}"
    created = []
    for i in range(7):
        created.append(
            await create(
                server,
                title=f"Lesson {i}",
                class_id=class_id,
                # Created out of order: the list follows the schedule, not creation.
                start_hours=48 + (6 - i),
                instructor_identities=["teacher-even" if i % 2 == 0 else "teacher-odd"],
            )
        )
    by_start = sorted(created, key=lambda s: s.scheduled_start_time.ToDatetime())
    seen, token = [], ""
    while True:
        page = await call(
            server,
            "ListSessions",
            api.ListSessionsRequest(class_id=class_id, page_size=3, page_token=token),
            server.api_key,
        )
        assert len(page.sessions) <= 3
        seen += [s.id for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == [s.id for s in by_start]

    even = await call(
        server,
        "ListSessions",
        api.ListSessionsRequest(class_id=class_id, instructor_identity="teacher-even"),
        server.api_key,
    )
    assert {s.title for s in even.sessions} == {"Lesson 0", "Lesson 2", "Lesson 4", "Lesson 6"}

    window = api.ListSessionsRequest(class_id=class_id)
    window.scheduled_start_time_from.CopyFrom(by_start[1].scheduled_start_time)
    window.scheduled_start_time_to.CopyFrom(by_start[4].scheduled_start_time)  # exclusive
    ranged = await call(server, "ListSessions", window, server.api_key)
    assert [s.id for s in ranged.sessions] == [s.id for s in by_start[1:4]]

    states = await call(
        server,
        "ListSessions",
        api.ListSessionsRequest(class_id=class_id, states=[common_pb2.SESSION_STATE_LIVE]),
        server.api_key,
    )
    assert list(states.sessions) == []
    scheduled = await call(
        server,
        "ListSessions",
        api.ListSessionsRequest(class_id=class_id, states=[common_pb2.SESSION_STATE_SCHEDULED]),
        server.api_key,
    )
    assert len(scheduled.sessions) == 7
    course = await call(
        server,
        "ListSessions",
        api.ListSessionsRequest(class_id=class_id, course_id="crs_none"),
        server.api_key,
    )
    assert list(course.sessions) == []
    breakouts = await call(
        server,
        "ListSessions",
        api.ListSessionsRequest(class_id=class_id, parent_session_id=created[0].id),
        server.api_key,
    )
    assert list(breakouts.sessions) == []

    # A token is bound to its filters; bad filters are named.
    first = await call(
        server,
        "ListSessions",
        api.ListSessionsRequest(class_id=class_id, page_size=2),
        server.api_key,
    )
    err = await expect_error(
        call(
            server,
            "ListSessions",
            api.ListSessionsRequest(class_id="cls_other", page_token=first.next_page_token),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    assert details(err)[1].field_violations[0].field == "page_token"
    err = await expect_error(
        call(server, "ListSessions", api.ListSessionsRequest(states=[0, 99]), server.api_key),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v.field for v in details(err)[1].field_violations] == ["states[0]", "states[1]"]
    reversed_range = api.ListSessionsRequest()
    reversed_range.scheduled_start_time_from.CopyFrom(by_start[4].scheduled_start_time)
    reversed_range.scheduled_start_time_to.CopyFrom(by_start[1].scheduled_start_time)
    err = await expect_error(
        call(server, "ListSessions", reversed_range, server.api_key),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(err)[1].field_violations[0].field == "scheduled_start_time_to"


async def test_another_tenants_session_is_not_found(server, other_tenant):
    mine = await create(server)
    other_key = other_tenant.admin_api_key_secret
    foreign = await expect_error(
        call(server, "GetSession", api.GetSessionRequest(session_id=mine.id), other_key),
        grpc.StatusCode.NOT_FOUND,
    )
    missing = await expect_error(
        call(server, "GetSession", api.GetSessionRequest(session_id="ses_missing"), other_key),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details(foreign)[0].reason == details(missing)[0].reason == "SESSION_NOT_FOUND"
    listed = await call(server, "ListSessions", api.ListSessionsRequest(page_size=500), other_key)
    assert mine.id not in [s.id for s in listed.sessions]
    await expect_error(
        token_for(server, mine.id, credential=other_key),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    # The other tenant's own token cannot read this tenant's session either.
    theirs = await create(server, credential=other_key)
    their_token = await token_for(server, theirs.id, credential=other_key)
    await expect_error(
        call(server, "GetSession", api.GetSessionRequest(session_id=mine.id), their_token.token),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_SESSION_MISMATCH",
    )


async def test_join_token_admits_its_participant_to_its_session(server):
    session = await create(server)
    issued = await token_for(server, session.id, identity="learner-7")
    assert issued.token and issued.participant_id.startswith("par_")
    # The JWT carries the registered claims; the header names the tenant's primary key.
    header = jwt.get_unverified_header(issued.token)
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    keys = await platform_call(
        server, "ListSigningKeys", platform_api.ListSigningKeysRequest(), server.api_key
    )
    assert header["alg"] == "HS256"
    assert header["kid"] == next(k.id for k in keys.signing_keys if k.primary)
    assert claims["aud"] == "classwire:participant" and claims["iss"] == server.config.token_issuer
    assert claims["sid"] == session.id and claims["jti"] == issued.token_id
    assert claims["nbf"] <= datetime.now(UTC).timestamp() + 1
    # The default lifetime is the tenant's default_join_token_ttl: 1 hour.
    assert claims["exp"] - claims["nbf"] == 3600
    assert issued.expire_time.seconds == claims["exp"]

    # The participant id is stable for the identity in this session.
    again = await token_for(
        server, session.id, identity="learner-7", ttl=duration_pb2.Duration(seconds=120)
    )
    assert again.participant_id == issued.participant_id and again.token_id != issued.token_id
    other = await token_for(server, session.id, identity="learner-8")
    assert other.participant_id != issued.participant_id

    fetched = await call(
        server, "GetSession", api.GetSessionRequest(session_id=session.id), issued.token
    )
    assert fetched.session.id == session.id

    # The token admits to its own session only, and is no API key.
    session_b = await create(server)
    await expect_error(
        call(server, "GetSession", api.GetSessionRequest(session_id=session_b.id), issued.token),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_SESSION_MISMATCH",
    )
    await expect_error(
        call(server, "GetSession", api.GetSessionRequest(session_id="ses_missing"), issued.token),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_SESSION_MISMATCH",
    )
    await expect_error(
        call(server, "ListSessions", api.ListSessionsRequest(), issued.token),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_SCOPE",
    )
    await expect_error(
        token_for(server, session.id, credential=issued.token),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_SCOPE",
    )


async def test_join_token_validation(server):
    session = await create(server)
    err = await expect_error(
        call(
            server,
            "CreateJoinToken",
            api.CreateJoinTokenRequest(
                session_id=session.id,
                identity="",
                display_name="",
                role=0,
                ttl=duration_pb2.Duration(seconds=25 * 3600),
                permission_overrides=pb.PermissionOverrides(grant=[0]),
                guardian_of_identities=["kid"],
                metadata={f"k{i}": "v" for i in range(17)},
            ),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert {v.field for v in details(err)[1].field_violations} == {
        "identity",
        "display_name",
        "role",
        "ttl",
        "permission_overrides.grant[0]",
        "guardian_of_identities",
        "metadata",
    }
    await expect_error(
        token_for(server, "ses_missing"), grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND"
    )
    # "parent" is no person of the roster, so no guardianship can match.
    await expect_error(
        token_for(
            server,
            session.id,
            identity="parent",
            role=common_pb2.PARTICIPANT_ROLE_GUARDIAN,
            guardian_of_identities=["learner-1"],
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "GUARDIANSHIP_NOT_FOUND",
    )


async def test_ended_and_cancelled_sessions_refuse_tokens(server):
    # EndSession and CancelSession arrive with the live-classroom capability; until then the
    # terminal states are set on the row directly to check that minting refuses them.
    for state, reason in (
        (common_pb2.SESSION_STATE_ENDED, "SESSION_ENDED"),
        (common_pb2.SESSION_STATE_CANCELLED, "SESSION_CANCELLED"),
    ):
        session = await create(server)
        db = server.server.platform.db
        async with db.writer() as s, s.begin():
            row = await s.get(LiveSession, session.id)
            row.state = state
        await expect_error(
            token_for(server, session.id), grpc.StatusCode.FAILED_PRECONDITION, reason
        )


async def test_join_token_request_id_replays_without_the_secret(server):
    session = await create(server)
    request = api.CreateJoinTokenRequest(
        request_id=str(uuid.uuid4()),
        session_id=session.id,
        identity="retry",
        display_name="R",
        role=LEARNER,
    )
    first = await call(server, "CreateJoinToken", request, server.api_key)
    second = await call(server, "CreateJoinToken", request, server.api_key)
    assert first.token and second.token == ""
    assert (second.token_id, second.participant_id) == (first.token_id, first.participant_id)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def test_forged_expired_and_unsigned_tokens_are_unauthenticated(server):
    session = await create(server)
    issued = await token_for(server, session.id)
    request = api.GetSessionRequest(session_id=session.id)
    header_b64, payload_b64, signature = issued.token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))

    # Tampered claims keep the old signature.
    tampered = dict(payload, role=INSTRUCTOR)
    forged = ".".join([header_b64, _b64(json.dumps(tampered).encode()), signature])
    await expect_error(
        call(server, "GetSession", request, forged),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_INVALID",
    )

    # `alg: none` is refused: the algorithm is pinned server-side.
    header = jwt.get_unverified_header(issued.token)
    unsigned = ".".join([_b64(json.dumps(dict(header, alg="none")).encode()), payload_b64, ""])
    await expect_error(
        call(server, "GetSession", request, unsigned),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_INVALID",
    )

    # Signed with a key that is not the tenant's.
    wrong = jwt.encode(
        payload, "not-the-secret" * 4, algorithm="HS256", headers={"kid": header["kid"]}
    )
    await expect_error(
        call(server, "GetSession", request, wrong), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"
    )

    # Expired beyond the 60 s leeway, signed with the tenant's real key (read in-process: the
    # API never shows signing secrets, and the shortest mintable token outlives the leeway).
    key = await server.server.platform.platform.primary_signing_key(server.tenant_id)
    now = int(datetime.now(UTC).timestamp())
    expired = jwt.encode(
        dict(payload, iat=now - 600, nbf=now - 600, exp=now - 120),
        key.secret,
        algorithm="HS256",
        headers={"kid": key.id},
    )
    await expect_error(
        call(server, "GetSession", request, expired),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_EXPIRED",
    )
    # The same claims, still valid, pass: the checks above failed for the reason they name.
    valid = jwt.encode(
        dict(payload, exp=now + 600), key.secret, algorithm="HS256", headers={"kid": key.id}
    )
    assert (await call(server, "GetSession", request, valid)).session.id == session.id


async def test_revoked_join_token_no_longer_admits(server):
    session = await create(server)
    issued = await token_for(server, session.id)
    request = api.GetSessionRequest(session_id=session.id)
    await call(server, "GetSession", request, issued.token)
    revoke = api.RevokeJoinTokenRequest(session_id=session.id, token_id=issued.token_id)
    await call(server, "RevokeJoinToken", revoke, server.api_key)
    await call(server, "RevokeJoinToken", revoke, server.api_key)  # idempotent
    await expect_error(
        call(server, "GetSession", request, issued.token),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_REVOKED",
    )
    await expect_error(
        call(
            server,
            "RevokeJoinToken",
            api.RevokeJoinTokenRequest(session_id=session.id, token_id="nope"),
            server.api_key,
        ),
        grpc.StatusCode.NOT_FOUND,
        "JOIN_TOKEN_NOT_FOUND",
    )
    other = await create(server)
    await expect_error(
        call(
            server,
            "RevokeJoinToken",
            api.RevokeJoinTokenRequest(session_id=other.id, token_id=issued.token_id),
            server.api_key,
        ),
        grpc.StatusCode.NOT_FOUND,
        "JOIN_TOKEN_NOT_FOUND",
    )


async def test_signing_key_rotation_and_retirement(server):
    # A tenant of its own, so retiring its key cannot disturb the other tests' tokens.
    tenant = await platform_call(
        server,
        "CreateTenant",
        platform_api.CreateTenantRequest(display_name="Rotating school"),
        server.api_key,
    )
    key = tenant.admin_api_key_secret
    session = await create(server, credential=key)
    before = await token_for(server, session.id, identity="early", credential=key)
    rotated = await platform_call(
        server, "RotateSigningKey", platform_api.RotateSigningKeyRequest(), key
    )
    after = await token_for(server, session.id, identity="late", credential=key)
    old_kid = jwt.get_unverified_header(before.token)["kid"]
    assert jwt.get_unverified_header(after.token)["kid"] == rotated.signing_key.id != old_kid
    request = api.GetSessionRequest(session_id=session.id)
    # Rotation logs no one out: both keys verify.
    assert (await call(server, "GetSession", request, before.token)).session.id == session.id
    assert (await call(server, "GetSession", request, after.token)).session.id == session.id

    await platform_call(
        server, "RetireSigningKey", platform_api.RetireSigningKeyRequest(id=old_kid), key
    )
    # Retirement evicts at once on this replica once the platform handler does it; until then
    # the test drops the cached key itself.
    server.server.platform.authenticator.evict(old_kid)
    await expect_error(
        call(server, "GetSession", request, before.token),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_INVALID",
    )
    assert (await call(server, "GetSession", request, after.token)).session.id == session.id


async def test_scopes_are_enforced(server):
    reader = await platform_call(
        server,
        "CreateApiKey",
        platform_api.CreateApiKeyRequest(display_name="session reader", scopes=["session:read"]),
        server.api_key,
    )
    session = await create(server)
    await call(server, "GetSession", api.GetSessionRequest(session_id=session.id), reader.secret)
    err = await expect_error(
        call(
            server, "CreateSession", api.CreateSessionRequest(session=new_session()), reader.secret
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_SCOPE",
    )
    assert details(err)[0].metadata["scope"] == "session:write"
    await expect_error(
        token_for(server, session.id, credential=reader.secret), grpc.StatusCode.PERMISSION_DENIED
    )
