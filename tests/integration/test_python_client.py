"""The Python SDK (classwire.client) against a real server: credentials, typed rich errors,
default deadlines, and the blocking channel against `classwire serve` in a child process."""

from __future__ import annotations

import socket

import grpc
import pytest
from support.subprocess_server import subprocess_server

from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.platform.v1 import resources_pb2 as platform_pb
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.session.v1 import service_pb2 as session_api
from classwire.api.session.v1 import service_pb2_grpc as session_grpc
from classwire.client import (
    ClasswireError,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unimplemented,
    connect,
    connect_sync,
    from_rpc_error,
)

DOMAIN = "classwire.dev"


def platform(channel) -> platform_grpc.PlatformServiceStub:
    return platform_grpc.PlatformServiceStub(channel)


async def test_call_with_api_key(server):
    async with server.channel() as channel:
        call = platform(channel).GetTenant(platform_api.GetTenantRequest())
        response = await call
        # The server names every call in its trailers; the SDK surfaces the same id on errors.
        request_id = (await call.trailing_metadata()).get("x-request-id")
    assert response.tenant.id == server.tenant_id
    assert request_id


async def test_missing_credentials_is_unauthenticated(server):
    async with connect(server.address, secure=False) as channel:
        with pytest.raises(Unauthenticated) as raised:
            await platform(channel).GetTenant(platform_api.GetTenantRequest())
    error = raised.value
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "CREDENTIALS_MISSING"
    assert error.domain == DOMAIN
    assert error.request_id
    # Existing `except grpc.RpcError` / `except AioRpcError` handlers still catch it.
    assert isinstance(error, grpc.RpcError)
    assert isinstance(error, grpc.aio.AioRpcError)


async def test_wrong_api_key_is_unauthenticated(server):
    wrong = server.api_key[:-4] + ("AAAA" if not server.api_key.endswith("AAAA") else "BBBB")
    async with server.channel(wrong) as channel:
        with pytest.raises(Unauthenticated) as raised:
            await platform(channel).GetTenant(platform_api.GetTenantRequest())
    assert raised.value.reason == "API_KEY_INVALID"


async def test_per_call_credential_overrides_the_channels(server):
    # A shared channel can act with another credential for a single call.
    async with server.channel() as channel:
        with pytest.raises(Unauthenticated) as raised:
            await platform(channel).GetTenant(
                platform_api.GetTenantRequest(), metadata=(("authorization", "Bearer cw.key_0.x"),)
            )
    assert raised.value.reason == "API_KEY_INVALID"


async def test_invalid_argument_carries_field_violations(server):
    async with server.channel() as channel:
        with pytest.raises(InvalidArgument) as raised:
            await platform(channel).CreateApiKey(
                platform_api.CreateApiKeyRequest(
                    display_name="ci", scopes=["roster:read", "teleport"]
                )
            )
    error = raised.value
    assert error.domain == DOMAIN
    assert error.reason
    assert [v.field for v in error.field_violations] == ["scopes[1]"]
    assert isinstance(error.field_violations[0], FieldViolation)
    assert "teleport" in error.field_violations[0].description
    assert "scopes[1]" in str(error)


async def test_unknown_id_is_not_found(server):
    async with server.channel() as channel:
        with pytest.raises(NotFound) as raised:
            await platform(channel).GetApiKey(
                platform_api.GetApiKeyRequest(id="key_00000000000000000000000000000000")
            )
    assert raised.value.reason == "API_KEY_NOT_FOUND"
    assert raised.value.domain == DOMAIN


async def test_unknown_method_is_unimplemented(server):
    # A client built against a newer contract than the server's gets a typed error.
    async with server.channel() as channel:
        call = channel.unary_unary(
            "/classwire.api.media.v1.MediaService/NoSuchMethod",
            request_serializer=media_api.ListRecordingsRequest.SerializeToString,
            response_deserializer=media_api.ListRecordingsResponse.FromString,
        )
        with pytest.raises(Unimplemented):
            await call(media_api.ListRecordingsRequest(session_id="ses_x"))


async def test_stream_errors_decode_with_from_rpc_error(server):
    # Stream errors surface while iterating, after any interceptor has returned: the caller
    # decodes them with from_rpc_error.
    async with server.channel() as channel:
        stream = session_grpc.SessionServiceStub(channel).WatchSession(
            session_api.WatchSessionRequest(session_id="ses_x")
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stream:
                pass
    error = from_rpc_error(raised.value)
    assert isinstance(error, NotFound)
    assert error.reason == "SESSION_NOT_FOUND"
    assert error.request_id


async def test_typed_errors_can_be_turned_off(server):
    async with connect(
        server.address, api_key=server.api_key, secure=False, typed_errors=False
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await platform(channel).GetApiKey(platform_api.GetApiKeyRequest(id="key_missing"))
    assert not isinstance(raised.value, ClasswireError)
    assert from_rpc_error(raised.value).reason == "API_KEY_NOT_FOUND"


async def test_rate_limit_carries_retry_delay(server):
    # A tenant of its own with a tiny bucket, so other tests keep the server default.
    async with server.channel() as channel:
        created = await platform(channel).CreateTenant(
            platform_api.CreateTenantRequest(
                display_name="rate limited",
                settings=platform_pb.TenantSettings(rate_limit_per_second=0.5, rate_limit_burst=1),
            )
        )
    async with server.channel(created.admin_api_key_secret) as channel:
        await platform(channel).GetTenant(platform_api.GetTenantRequest())
        with pytest.raises(ResourceExhausted) as raised:
            await platform(channel).GetTenant(platform_api.GetTenantRequest())
    delay = raised.value.retry_delay
    assert delay is not None
    # One token refills in 2 s at 0.5/s; the bucket was just emptied.
    assert 0 < delay.total_seconds() <= 2


def _method_name(details) -> str:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    return method.rsplit("/", 1)[-1]


class _SeenUnary(grpc.aio.UnaryUnaryClientInterceptor):
    """Records the deadline each call leaves the SDK with (caller interceptors run after it)."""

    def __init__(self, seen: dict) -> None:
        self.seen = seen

    async def intercept_unary_unary(self, continuation, details, request):
        self.seen[_method_name(details)] = details.timeout
        return await continuation(details, request)


class _SeenStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, seen: dict) -> None:
        self.seen = seen

    async def intercept_unary_stream(self, continuation, details, request):
        self.seen[_method_name(details)] = details.timeout
        return await continuation(details, request)


async def test_default_deadline_applies_to_unary_calls_only(server):
    seen: dict[str, float | None] = {}
    async with connect(
        server.address,
        api_key=server.api_key,
        secure=False,
        default_timeout=12.5,
        interceptors=[_SeenUnary(seen), _SeenStream(seen)],
    ) as channel:
        await platform(channel).GetTenant(platform_api.GetTenantRequest())
        await platform(channel).ListApiKeys(platform_api.ListApiKeysRequest(), timeout=3)
        stream = session_grpc.SessionServiceStub(channel).WatchSession(
            session_api.WatchSessionRequest(session_id="ses_x")
        )
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in stream:
                pass
    assert seen == {"GetTenant": 12.5, "ListApiKeys": 3, "WatchSession": None}


async def test_default_deadline_is_enforced(server):
    # A deadline no call can meet: a call that relies on the default fails client-side, one
    # that names its own deadline succeeds, and a stream (no default deadline) reaches the server.
    # A loopback server can answer within the deadline's resolution, so the call that must miss
    # it waits for a port nobody listens on (wait_for_ready) until the default deadline fires.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_address = f"127.0.0.1:{probe.getsockname()[1]}"
    async with connect(
        dead_address, api_key=server.api_key, secure=False, default_timeout=0.2
    ) as channel:
        with pytest.raises(DeadlineExceeded) as raised:
            await platform(channel).GetTenant(platform_api.GetTenantRequest(), wait_for_ready=True)
        assert raised.value.reason == ""  # the server never answered
    async with connect(
        server.address, api_key=server.api_key, secure=False, default_timeout=1e-6
    ) as channel:
        response = await platform(channel).GetTenant(platform_api.GetTenantRequest(), timeout=10)
        assert response.tenant.id == server.tenant_id
        stream = session_grpc.SessionServiceStub(channel).WatchSession(
            session_api.WatchSessionRequest(session_id="ses_x")
        )
        with pytest.raises(grpc.aio.AioRpcError) as stream_error:
            async for _ in stream:
                pass
    assert stream_error.value.code() is grpc.StatusCode.NOT_FOUND


# -- the blocking channel, against a server in a child process ---------------------------------


@pytest.fixture(scope="module")
def child_server(tmp_path_factory):
    with subprocess_server(tmp_path_factory.mktemp("child-server")) as running:
        yield running


def test_connect_sync_calls_and_typed_errors(child_server):
    assert child_server.api_key and child_server.api_key.startswith("cw.key_")
    with connect_sync(child_server.address, api_key=child_server.api_key) as channel:
        stub = platform(channel)
        tenant = stub.GetTenant(platform_api.GetTenantRequest()).tenant
        assert tenant.id.startswith("ten_")

        with pytest.raises(NotFound) as not_found:
            stub.GetApiKey(platform_api.GetApiKeyRequest(id="key_missing"))
        assert not_found.value.reason == "API_KEY_NOT_FOUND"
        assert not_found.value.request_id

        with pytest.raises(InvalidArgument) as invalid:
            stub.CreateApiKey(platform_api.CreateApiKeyRequest(display_name="ci", scopes=["nope"]))
        assert invalid.value.field_violations[0].field == "scopes[0]"

        # with_call goes through the same interceptor.
        response, call = stub.ListApiKeys.with_call(platform_api.ListApiKeysRequest())
        assert response.api_keys
        assert dict(call.trailing_metadata()).get("x-request-id")  # sync API: a tuple of pairs


def test_connect_sync_without_key_is_unauthenticated(child_server):
    # The plain gRPC idiom, `except grpc.RpcError`, still catches the typed error.
    with connect_sync(child_server.address) as channel, pytest.raises(grpc.RpcError) as raised:
        platform(channel).GetTenant(platform_api.GetTenantRequest())
    assert isinstance(raised.value, Unauthenticated)
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.reason == "CREDENTIALS_MISSING"


def test_connect_sync_default_deadline(child_server):
    # A loopback server can answer inside a tiny deadline's resolution, so the call that must
    # miss its default deadline waits (wait_for_ready) on a port nobody listens on.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_address = f"127.0.0.1:{probe.getsockname()[1]}"
    with connect_sync(dead_address, api_key=child_server.api_key, default_timeout=0.2) as channel:
        with pytest.raises(DeadlineExceeded):
            platform(channel).GetTenant(platform_api.GetTenantRequest(), wait_for_ready=True)
    with connect_sync(
        child_server.address, api_key=child_server.api_key, default_timeout=1e-6
    ) as channel:
        # A call that names its own deadline is not bound by the default.
        assert platform(channel).GetTenant(platform_api.GetTenantRequest(), timeout=10).tenant.id
