"""DataService's workflows and notifications: ListWorkflows, GetWorkflow, UpdateWorkflow,
ListNotifications, GetNotification, and the notification templates. Merged into the DataService
servicer through `notification_methods(platform)`."""

from __future__ import annotations

from datetime import UTC, datetime

from classwire.api.data.v1 import service_pb2 as api

from ..convert import notifications as conv
from ..convert.events import time_range_from_proto
from ..domain import paging
from ..domain.errors import FieldViolation, InvalidArgument, Violations
from ..domain.notifications import TEMPLATE_FIELDS, check_template_request
from ..domain.workflows import check_workflow_name
from ..events.workflow_runner import start_notifications
from ..rpc.context import principal
from .unimplemented import delegates

__all__ = ["NotificationsHandler", "notification_methods", "start_notifications"]

READ, ADMIN = "data:read", "admin"
WORKFLOW_PATHS = ("enabled", "settings")


def _mask(mask, allowed: tuple[str, ...], field: str = "update_mask") -> list[str]:
    """The mask's paths; empty means every updatable field (as the RPC comments say)."""
    paths = list(mask.paths)
    if not paths:
        return list(allowed)
    problems = Violations()
    for i, path in enumerate(paths):
        if path not in allowed:
            problems.add(f"{field}.paths[{i}]", f"{path!r} cannot be updated")
    if problems.items:
        raise InvalidArgument(problems.items, reason="UPDATE_MASK_INVALID")
    return list(dict.fromkeys(paths))


class NotificationsHandler:
    IMPLEMENTED = (
        "ListWorkflows",
        "GetWorkflow",
        "UpdateWorkflow",
        "ListNotifications",
        "GetNotification",
        "ListNotificationTemplates",
        "GetNotificationTemplate",
        "UpdateNotificationTemplate",
        "ResetNotificationTemplate",
    )

    def __init__(self, platform) -> None:
        self.platform = platform

    @property
    def notifications(self):
        return self.platform.notifications

    @property
    def workflows(self):
        return self.platform.workflows

    # -- workflows --------------------------------------------------------------------------

    async def ListWorkflows(self, request, context):
        caller = principal()
        caller.require(READ)
        limit = paging.page_size(request.page_size)
        views = await self.workflows.list(caller.tenant_id)
        start = 0
        if request.page_token:
            # Workflows are few and sorted by name: the token carries the last name.
            _, last = paging.decode(request.page_token, "workflows")
            start = next((i + 1 for i, v in enumerate(views) if v.name == last), len(views))
        chosen = views[start : start + limit]
        token = ""
        if start + limit < len(views):
            token = paging.encode(EPOCH, chosen[-1].name, "workflows")
        return api.ListWorkflowsResponse(
            workflows=[conv.workflow(v) for v in chosen], next_page_token=token
        )

    async def GetWorkflow(self, request, context):
        caller = principal()
        caller.require(READ)
        check_workflow_name(request.name)
        return api.GetWorkflowResponse(
            workflow=conv.workflow(await self.workflows.get(caller.tenant_id, request.name))
        )

    async def UpdateWorkflow(self, request, context):
        caller = principal()
        caller.require(ADMIN)
        check_workflow_name(request.workflow.name, "workflow.name")
        paths = _mask(request.update_mask, WORKFLOW_PATHS)
        settings = conv.settings_from_proto(request.workflow.settings)
        async with self.platform.uow(caller.tenant_id) as uow:
            view = await self.workflows.update(
                uow, request.workflow.name, request.workflow.enabled, settings, paths
            )
        return api.UpdateWorkflowResponse(workflow=conv.workflow(view))

    # -- notifications ----------------------------------------------------------------------

    async def ListNotifications(self, request, context):
        caller = principal()
        caller.require(READ)
        start, end = time_range_from_proto(request.create_time_range, "create_time_range")
        rows, token = await self.notifications.list_notifications(
            caller.tenant_id,
            recipient_id=request.recipient_id,
            session_id=request.session_id,
            workflow=request.workflow,
            state=request.state,
            start=start,
            end=end,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return api.ListNotificationsResponse(
            notifications=[conv.notification(r) for r in rows], next_page_token=token
        )

    async def GetNotification(self, request, context):
        caller = principal()
        caller.require(READ)
        if not request.notification_id:
            raise InvalidArgument(FieldViolation("notification_id", "is required"))
        row = await self.notifications.get_notification(caller.tenant_id, request.notification_id)
        return api.GetNotificationResponse(notification=conv.notification(row))

    # -- templates --------------------------------------------------------------------------

    async def ListNotificationTemplates(self, request, context):
        caller = principal()
        caller.require(READ)
        templates, token = await self.notifications.list_templates(
            caller.tenant_id, request.locale, request.page_size, request.page_token
        )
        return api.ListNotificationTemplatesResponse(
            templates=[conv.template(t) for t in templates], next_page_token=token
        )

    async def GetNotificationTemplate(self, request, context):
        caller = principal()
        caller.require(READ)
        if not request.name:
            raise InvalidArgument(FieldViolation("name", "is required"))
        value = await self.notifications.get_template(
            caller.tenant_id, request.name, request.locale
        )
        return api.GetNotificationTemplateResponse(template=conv.template(value))

    async def UpdateNotificationTemplate(self, request, context):
        caller = principal()
        caller.require(ADMIN)
        t = request.template
        check_template_request(t.name, t.locale)
        paths = _mask(request.update_mask, TEMPLATE_FIELDS)
        values = {name: getattr(t, name) for name in TEMPLATE_FIELDS}
        async with self.platform.uow(caller.tenant_id) as uow:
            value = await self.notifications.update_template(uow, t.name, t.locale, values, paths)
        return api.UpdateNotificationTemplateResponse(template=conv.template(value))

    async def ResetNotificationTemplate(self, request, context):
        caller = principal()
        caller.require(ADMIN)
        if not request.name:
            raise InvalidArgument(FieldViolation("name", "is required"))
        async with self.platform.uow(caller.tenant_id) as uow:
            value = await self.notifications.reset_template(uow, request.name, request.locale)
        return api.ResetNotificationTemplateResponse(template=conv.template(value))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def notification_methods(platform) -> dict:
    """DataService methods for workflows and notifications, for unimplemented_servicer's
    `implemented`. `platform` must have been through start_notifications."""
    return delegates(NotificationsHandler(platform), NotificationsHandler.IMPLEMENTED)
