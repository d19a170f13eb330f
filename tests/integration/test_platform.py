"""PlatformService over real gRPC: tenancy, API keys, scopes, errors, idempotency, paging."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.platform.v1 import resources_pb2 as pb
from classwire.api.platform.v1 import service_pb2 as api
from classwire.api.platform.v1 import service_pb2_grpc


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


async def raw_call(server, method, request, credential):
    """Calls without the SDK, so the wire behaviour itself is checked."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.PlatformServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential}"),) if credential else ()
        return await getattr(stub, method)(request, metadata=metadata)


async def expect_error(awaitable, code: grpc.StatusCode):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    return caught.value


@pytest.fixture(scope="module")
async def second_tenant(server):
    """Another tenant with its own admin key, created through the API."""
    response = await raw_call(
        server, "CreateTenant", api.CreateTenantRequest(display_name="Other school"), server.api_key
    )
    return response


async def test_get_own_tenant(server):
    response = await raw_call(server, "GetTenant", api.GetTenantRequest(), server.api_key)
    assert response.tenant.id == server.tenant_id
    assert response.tenant.settings.reconnect_grace.seconds == 20


async def test_missing_and_bad_credentials_are_unauthenticated(server):
    err = await expect_error(
        raw_call(server, "GetTenant", api.GetTenantRequest(), None), grpc.StatusCode.UNAUTHENTICATED
    )
    assert details(err)[0].reason == "CREDENTIALS_MISSING"
    forged = server.api_key[:-4] + "AAAA"
    err = await expect_error(
        raw_call(server, "GetTenant", api.GetTenantRequest(), forged),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert details(err)[0].reason == "API_KEY_INVALID"
    err = await expect_error(
        raw_call(server, "GetTenant", api.GetTenantRequest(), "not-a-token"),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert details(err)[0].domain == "classwire.dev"


async def test_another_tenants_resources_are_not_found(server, second_tenant):
    other_key = second_tenant.admin_api_key_secret
    assert second_tenant.tenant.id != server.tenant_id
    mine = await raw_call(
        server,
        "CreateWebhookEndpoint",
        api.CreateWebhookEndpointRequest(
            endpoint=pb.WebhookEndpoint(url="https://example.com/hooks")
        ),
        server.api_key,
    )
    # The other tenant sees exactly what it would see for an id that does not exist.
    foreign = await expect_error(
        raw_call(
            server,
            "GetWebhookEndpoint",
            api.GetWebhookEndpointRequest(id=mine.endpoint.id),
            other_key,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    missing = await expect_error(
        raw_call(
            server, "GetWebhookEndpoint", api.GetWebhookEndpointRequest(id="whe_missing"), other_key
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert details(foreign)[0].reason == details(missing)[0].reason
    listed = await raw_call(
        server, "ListWebhookEndpoints", api.ListWebhookEndpointsRequest(), other_key
    )
    assert mine.endpoint.id not in [e.id for e in listed.endpoints]
    await expect_error(
        raw_call(server, "RevokeApiKey", api.RevokeApiKeyRequest(id=mine.endpoint.id), other_key),
        grpc.StatusCode.NOT_FOUND,
    )
    # A tenant id of someone else is NOT_FOUND without the operator scope.
    await expect_error(
        raw_call(server, "GetTenant", api.GetTenantRequest(id=server.tenant_id), other_key),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_api_key_lifecycle_and_scopes(server):
    created = await raw_call(
        server,
        "CreateApiKey",
        api.CreateApiKeyRequest(display_name="reader", scopes=["platform:read"]),
        server.api_key,
    )
    assert created.secret.startswith("cw.")
    assert list(created.api_key.scopes) == ["platform:read"]
    reader = created.secret
    # Reading works; writing is PERMISSION_DENIED with the missing scope named.
    await raw_call(server, "ListApiKeys", api.ListApiKeysRequest(), reader)
    err = await expect_error(
        raw_call(
            server,
            "CreateWebhookEndpoint",
            api.CreateWebhookEndpointRequest(
                endpoint=pb.WebhookEndpoint(url="https://example.com/x")
            ),
            reader,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    info = details(err)[0]
    assert info.reason == "MISSING_SCOPE" and info.metadata["scope"] == "platform:write"
    # Only the hash is stored: the secret never comes back.
    fetched = await raw_call(
        server, "GetApiKey", api.GetApiKeyRequest(id=created.api_key.id), server.api_key
    )
    assert fetched.api_key.id == created.api_key.id
    assert created.secret not in str(fetched)
    # Revocation takes effect at once on this replica.
    revoked = await raw_call(
        server, "RevokeApiKey", api.RevokeApiKeyRequest(id=created.api_key.id), server.api_key
    )
    assert revoked.api_key.HasField("revoke_time")
    server.server.platform.authenticator.evict(created.api_key.id)
    await expect_error(
        raw_call(server, "ListApiKeys", api.ListApiKeysRequest(), reader),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # Revoking again is idempotent.
    again = await raw_call(
        server, "RevokeApiKey", api.RevokeApiKeyRequest(id=created.api_key.id), server.api_key
    )
    assert again.api_key.revoke_time == revoked.api_key.revoke_time


async def test_last_use_time_is_recorded(server):
    created = await raw_call(
        server,
        "CreateApiKey",
        api.CreateApiKeyRequest(display_name="tracked", scopes=["platform:read"]),
        server.api_key,
    )
    assert not created.api_key.HasField("last_use_time")
    await raw_call(server, "ListApiKeys", api.ListApiKeysRequest(), created.secret)
    import asyncio

    for _ in range(50):
        fetched = await raw_call(
            server, "GetApiKey", api.GetApiKeyRequest(id=created.api_key.id), server.api_key
        )
        if fetched.api_key.HasField("last_use_time"):
            break
        await asyncio.sleep(0.05)
    assert fetched.api_key.HasField("last_use_time")


async def test_invalid_input_has_field_violations(server):
    err = await expect_error(
        raw_call(
            server,
            "CreateApiKey",
            api.CreateApiKeyRequest(display_name="", scopes=["session:read", "everything"]),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    info, bad = details(err)
    assert info.reason == "INVALID_ARGUMENT"
    assert [v.field for v in bad.field_violations] == ["display_name"]
    err = await expect_error(
        raw_call(
            server,
            "CreateApiKey",
            api.CreateApiKeyRequest(display_name="x", scopes=["session:read", "everything"]),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v.field for v in details(err)[1].field_violations] == ["scopes[1]"]


@pytest.mark.parametrize(
    "url, field",
    [
        ("ftp://example.com/hook", "endpoint.url"),
        ("not a url", "endpoint.url"),
        ("", "endpoint.url"),
    ],
)
async def test_webhook_url_validation(server, url, field):
    err = await expect_error(
        raw_call(
            server,
            "CreateWebhookEndpoint",
            api.CreateWebhookEndpointRequest(endpoint=pb.WebhookEndpoint(url=url)),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in [v.field for v in details(err)[1].field_violations]


async def test_webhook_pointing_at_the_platform_is_refused(server):
    port = server.address.rsplit(":", 1)[1]
    for host in ("127.0.0.1", "localhost", "[::1]"):
        err = await expect_error(
            raw_call(
                server,
                "CreateWebhookEndpoint",
                api.CreateWebhookEndpointRequest(
                    endpoint=pb.WebhookEndpoint(url=f"http://{host}:{port}/hook")
                ),
                server.api_key,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "this platform" in details(err)[1].field_violations[0].description


async def test_unknown_event_type_filter_is_refused(server):
    err = await expect_error(
        raw_call(
            server,
            "CreateWebhookEndpoint",
            api.CreateWebhookEndpointRequest(
                endpoint=pb.WebhookEndpoint(
                    url="https://example.com/h",
                    event_types=["classwire.api.events.v1.TenantCreated", "nope"],
                )
            ),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v.field for v in details(err)[1].field_violations] == ["endpoint.event_types[1]"]


async def test_request_id_makes_creates_idempotent(server):
    request_id = str(uuid.uuid4())
    request = api.CreateApiKeyRequest(
        request_id=request_id, display_name="retry", scopes=["data:read"]
    )
    first = await raw_call(server, "CreateApiKey", request, server.api_key)
    second = await raw_call(server, "CreateApiKey", request, server.api_key)
    assert second.api_key == first.api_key
    assert first.secret and second.secret == ""  # shown once
    listed = await raw_call(
        server, "ListApiKeys", api.ListApiKeysRequest(page_size=500), server.api_key
    )
    assert [k.display_name for k in listed.api_keys].count("retry") == 1
    changed = api.CreateApiKeyRequest(
        request_id=request_id, display_name="other", scopes=["data:read"]
    )
    err = await expect_error(
        raw_call(server, "CreateApiKey", changed, server.api_key), grpc.StatusCode.ALREADY_EXISTS
    )
    assert details(err)[0].reason == "REQUEST_ID_REUSED"


async def test_concurrent_retries_create_once(server):
    import asyncio

    request = api.CreateWebhookEndpointRequest(
        request_id=str(uuid.uuid4()),
        endpoint=pb.WebhookEndpoint(url="https://example.com/concurrent"),
    )
    results = await asyncio.gather(
        *[raw_call(server, "CreateWebhookEndpoint", request, server.api_key) for _ in range(8)]
    )
    assert len({r.endpoint.id for r in results}) == 1
    assert sum(1 for r in results if r.secret) == 1


async def test_pagination_is_stable_and_opaque(server, second_tenant):
    key = second_tenant.admin_api_key_secret
    for i in range(7):
        await raw_call(
            server,
            "CreateWebhookEndpoint",
            api.CreateWebhookEndpointRequest(
                endpoint=pb.WebhookEndpoint(url=f"https://example.com/p{i}")
            ),
            key,
        )
    seen, token = [], ""
    while True:
        page = await raw_call(
            server,
            "ListWebhookEndpoints",
            api.ListWebhookEndpointsRequest(page_size=3, page_token=token),
            key,
        )
        seen += [e.url for e in page.endpoints]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"https://example.com/p{i}" for i in range(7)]
    err = await expect_error(
        raw_call(
            server,
            "ListWebhookEndpoints",
            api.ListWebhookEndpointsRequest(page_token="garbage"),
            key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(err)[1].field_violations[0].field == "page_token"


async def test_field_mask_update(server):
    created = await raw_call(
        server,
        "CreateWebhookEndpoint",
        api.CreateWebhookEndpointRequest(
            endpoint=pb.WebhookEndpoint(url="https://example.com/m", description="before")
        ),
        server.api_key,
    )
    updated = await raw_call(
        server,
        "UpdateWebhookEndpoint",
        api.UpdateWebhookEndpointRequest(
            endpoint=pb.WebhookEndpoint(
                id=created.endpoint.id,
                url="https://ignored.example.com",
                description="after",
                state=pb.WEBHOOK_ENDPOINT_STATE_DISABLED,
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["description", "state"]),
        ),
        server.api_key,
    )
    assert updated.endpoint.description == "after"
    assert updated.endpoint.url == "https://example.com/m"  # not in the mask: unchanged
    assert updated.endpoint.state == pb.WEBHOOK_ENDPOINT_STATE_DISABLED
    err = await expect_error(
        raw_call(
            server,
            "UpdateWebhookEndpoint",
            api.UpdateWebhookEndpointRequest(
                endpoint=pb.WebhookEndpoint(id=created.endpoint.id),
                update_mask=field_mask_pb2.FieldMask(paths=["id"]),
            ),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(err)[1].field_violations[0].field == "update_mask.paths[0]"


async def test_tenant_settings_update_validates(server, second_tenant):
    key = second_tenant.admin_api_key_secret
    request = api.UpdateTenantRequest(
        tenant=pb.Tenant(settings=pb.TenantSettings(default_time_zone="Mars/Olympus")),
        update_mask=field_mask_pb2.FieldMask(paths=["settings.default_time_zone"]),
    )
    err = await expect_error(
        raw_call(server, "UpdateTenant", request, key), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(err)[1].field_violations[0].field == "tenant.settings.default_time_zone"
    request.tenant.settings.default_time_zone = "Europe/Berlin"
    updated = await raw_call(server, "UpdateTenant", request, key)
    assert updated.tenant.settings.default_time_zone == "Europe/Berlin"
    assert updated.tenant.settings.reconnect_grace.seconds == 20  # untouched


async def test_webhook_secret_rotation_keeps_old_secret_for_overlap(server):
    created = await raw_call(
        server,
        "CreateWebhookEndpoint",
        api.CreateWebhookEndpointRequest(
            endpoint=pb.WebhookEndpoint(url="https://example.com/rot")
        ),
        server.api_key,
    )
    assert created.secret.startswith("whsec_")
    rotated = await raw_call(
        server,
        "RotateWebhookSecret",
        api.RotateWebhookSecretRequest(id=created.endpoint.id),
        server.api_key,
    )
    assert rotated.secret.startswith("whsec_") and rotated.secret != created.secret
    assert len(rotated.endpoint.secrets) == 2
    old = [s for s in rotated.endpoint.secrets if s.HasField("expire_time")]
    assert len(old) == 1


async def test_operator_scope_cannot_be_granted_through_the_api(server):
    err = await expect_error(
        raw_call(
            server,
            "CreateApiKey",
            api.CreateApiKeyRequest(display_name="x", scopes=["operator"]),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert details(err)[1].field_violations[0].field == "scopes[0]"


async def test_tenant_admin_cannot_create_tenants(server, second_tenant):
    err = await expect_error(
        raw_call(
            server,
            "CreateTenant",
            api.CreateTenantRequest(display_name="x"),
            second_tenant.admin_api_key_secret,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert details(err)[0].metadata["scope"] == "operator"


async def test_authentication_comes_before_validation(server):
    from classwire.api.data.v1 import service_pb2 as data_api
    from classwire.api.data.v1 import service_pb2_grpc as data_grpc

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = data_grpc.DataServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitRating(data_api.SubmitRatingRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitRating(
                data_api.SubmitRatingRequest(),
                metadata=(("authorization", f"Bearer {server.api_key}"),),
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
