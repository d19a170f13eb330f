"""PlatformService: tenants, API keys, signing keys, webhook endpoints, usage."""

from __future__ import annotations

from google.protobuf.message import Message

from classwire.api.platform.v1 import resources_pb2 as pb
from classwire.api.platform.v1 import service_pb2 as api
from classwire.api.platform.v1 import service_pb2_grpc

from ..convert import data as delivery_conv
from ..convert import platform as conv
from ..convert.common import duration_or_none, mask_paths, time_or_none
from ..domain.errors import FieldViolation, InvalidArgument
from ..domain.platform import PlatformDomain, TenantSettings
from ..domain.usage import UsageDomain
from ..domain.webhook_deliveries import WebhookDeliveries
from ..events import webhooks
from ..rpc.context import principal
from .idempotency import key_for, respond

SERVICE = "classwire.api.platform.v1.PlatformService"
TENANT_MASK = {
    "display_name",
    "settings",
    *(f"settings.{f.name}" for f in pb.TenantSettings.DESCRIPTOR.fields),
}
ENDPOINT_MASK = {"url", "event_types", "description", "state"}


def _created_tenant(result) -> api.CreateTenantResponse:
    return api.CreateTenantResponse(
        tenant=conv.tenant_to_proto(result.tenant),
        admin_api_key=conv.api_key_to_proto(result.api_key),
        admin_api_key_secret=result.secret,
    )


def _created_key(result) -> api.CreateApiKeyResponse:
    return api.CreateApiKeyResponse(
        api_key=conv.api_key_to_proto(result.api_key), secret=result.secret
    )


def _created_endpoint(result) -> api.CreateWebhookEndpointResponse:
    return api.CreateWebhookEndpointResponse(
        endpoint=conv.endpoint_to_proto(result.endpoint), secret=result.secret
    )


class PlatformHandler(service_pb2_grpc.PlatformServiceServicer):
    def __init__(self, domain: PlatformDomain, usage: UsageDomain) -> None:
        self.domain = domain
        self.usage = usage

    async def CreateTenant(self, request, context):
        caller = principal()
        caller.require("operator")
        key = key_for(
            f"{SERVICE}/CreateTenant",
            request,
            api.CreateTenantResponse,
            to_response=_created_tenant,
            from_response=lambda m: m,
            strip=lambda m: m.ClearField("admin_api_key_secret"),
        )
        result = await self.domain.create_tenant(
            caller, request.display_name, conv.settings_from_proto(request.settings), key
        )
        return respond(result, api.CreateTenantResponse, _created_tenant)

    async def GetTenant(self, request, context):
        view = await self.domain.get_tenant(principal(), request.id)
        return api.GetTenantResponse(tenant=conv.tenant_to_proto(view))

    async def ListTenants(self, request, context):
        views, token = await self.domain.list_tenants(
            principal(), request.page_size, request.page_token
        )
        return api.ListTenantsResponse(
            tenants=[conv.tenant_to_proto(v) for v in views], next_page_token=token
        )

    async def UpdateTenant(self, request, context):
        paths = mask_paths(request.update_mask, TENANT_MASK)
        name = request.tenant.display_name if "display_name" in paths else None
        settings_update = None
        if "settings" in paths:

            def settings_update(current):
                return conv.settings_from_proto(request.tenant.settings)
        elif any(p.startswith("settings.") for p in paths):
            fields = [p.removeprefix("settings.") for p in paths if p.startswith("settings.")]

            def settings_update(current):
                # Start from the current values and overwrite only the named fields.
                merged = conv.settings_to_proto(current)
                for field in fields:
                    value = getattr(request.tenant.settings, field)
                    if isinstance(value, Message):
                        if request.tenant.settings.HasField(field):
                            getattr(merged, field).CopyFrom(value)
                        else:
                            merged.ClearField(field)
                    else:
                        setattr(merged, field, value)
                return conv.settings_from_proto(merged, base=TenantSettings())

        view = await self.domain.update_tenant(
            principal(), request.tenant.id, name, settings_update, paths
        )
        return api.UpdateTenantResponse(tenant=conv.tenant_to_proto(view))

    async def CreateApiKey(self, request, context):
        key = key_for(
            f"{SERVICE}/CreateApiKey",
            request,
            api.CreateApiKeyResponse,
            to_response=_created_key,
            from_response=lambda m: m,
            strip=lambda m: m.ClearField("secret"),
        )
        result = await self.domain.create_api_key(
            principal(),
            request.display_name,
            list(request.scopes),
            time_or_none(request, "expire_time"),
            key,
        )
        return respond(result, api.CreateApiKeyResponse, _created_key)

    async def GetApiKey(self, request, context):
        key = await self.domain.get_api_key(principal(), request.id)
        return api.GetApiKeyResponse(api_key=conv.api_key_to_proto(key))

    async def ListApiKeys(self, request, context):
        keys, token = await self.domain.list_api_keys(
            principal(), request.page_size, request.page_token
        )
        return api.ListApiKeysResponse(
            api_keys=[conv.api_key_to_proto(k) for k in keys], next_page_token=token
        )

    async def RevokeApiKey(self, request, context):
        key = await self.domain.revoke_api_key(principal(), request.id)
        return api.RevokeApiKeyResponse(api_key=conv.api_key_to_proto(key))

    async def RotateSigningKey(self, request, context):
        key = await self.domain.rotate_signing_key(principal())
        return api.RotateSigningKeyResponse(signing_key=conv.signing_key_to_proto(key, key.id))

    async def ListSigningKeys(self, request, context):
        keys, primary, token = await self.domain.list_signing_keys(
            principal(), request.page_size, request.page_token
        )
        return api.ListSigningKeysResponse(
            signing_keys=[conv.signing_key_to_proto(k, primary) for k in keys],
            next_page_token=token,
        )

    async def RetireSigningKey(self, request, context):
        key = await self.domain.retire_signing_key(principal(), request.id)
        return api.RetireSigningKeyResponse(signing_key=conv.signing_key_to_proto(key, ""))

    async def CreateWebhookEndpoint(self, request, context):
        key = key_for(
            f"{SERVICE}/CreateWebhookEndpoint",
            request,
            api.CreateWebhookEndpointResponse,
            to_response=_created_endpoint,
            from_response=lambda m: m,
            strip=lambda m: m.ClearField("secret"),
        )
        e = request.endpoint
        result = await self.domain.create_webhook_endpoint(
            principal(), e.url, list(e.event_types), e.description, key
        )
        return respond(result, api.CreateWebhookEndpointResponse, _created_endpoint)

    async def GetWebhookEndpoint(self, request, context):
        view = await self.domain.get_webhook_endpoint(principal(), request.id)
        return api.GetWebhookEndpointResponse(endpoint=conv.endpoint_to_proto(view))

    async def ListWebhookEndpoints(self, request, context):
        views, token = await self.domain.list_webhook_endpoints(
            principal(), request.page_size, request.page_token
        )
        return api.ListWebhookEndpointsResponse(
            endpoints=[conv.endpoint_to_proto(v) for v in views], next_page_token=token
        )

    async def UpdateWebhookEndpoint(self, request, context):
        paths = mask_paths(request.update_mask, ENDPOINT_MASK)
        e = request.endpoint
        enabled = None
        if "state" in paths:
            if e.state == pb.WEBHOOK_ENDPOINT_STATE_UNSPECIFIED:
                raise InvalidArgument(
                    FieldViolation("endpoint.state", "must be ENABLED or DISABLED")
                )
            enabled = e.state == pb.WEBHOOK_ENDPOINT_STATE_ENABLED
        view = await self.domain.update_webhook_endpoint(
            principal(),
            e.id,
            url=e.url if "url" in paths else None,
            event_types=list(e.event_types) if "event_types" in paths else None,
            description=e.description if "description" in paths else None,
            enabled=enabled,
            changed_paths=paths,
        )
        return api.UpdateWebhookEndpointResponse(endpoint=conv.endpoint_to_proto(view))

    async def DeleteWebhookEndpoint(self, request, context):
        await self.domain.delete_webhook_endpoint(principal(), request.id)
        return api.DeleteWebhookEndpointResponse()

    async def RotateWebhookSecret(self, request, context):
        view, secret = await self.domain.rotate_webhook_secret(
            principal(), request.id, duration_or_none(request, "overlap")
        )
        return api.RotateWebhookSecretResponse(endpoint=conv.endpoint_to_proto(view), secret=secret)

    async def ListWebhookDeliveries(self, request, context):
        views, token = await self._deliveries().list_deliveries(
            principal(), request.endpoint_id, request.state, request.page_size, request.page_token
        )
        return api.ListWebhookDeliveriesResponse(
            deliveries=[delivery_conv.delivery_to_proto(v) for v in views], next_page_token=token
        )

    async def RedeliverWebhook(self, request, context):
        view = await self._deliveries().redeliver(
            principal(), request.endpoint_id, request.event_id
        )
        return api.RedeliverWebhookResponse(delivery=delivery_conv.delivery_to_proto(view))

    async def GetUsage(self, request, context):
        days = await self.usage.get_usage(
            principal(),
            time_or_none(request, "start_time"),
            time_or_none(request, "end_time"),
        )
        return api.GetUsageResponse(days=[delivery_conv.usage_day_to_proto(d) for d in days])

    def _deliveries(self) -> WebhookDeliveries:
        # Stateless over the platform domain's database and units of work.
        return WebhookDeliveries(self.domain.db, self.domain.uow, queued=webhooks.nudge)
