"""Protos of notifications and workflows (data.v1) from the domain's rows and views."""

from __future__ import annotations

from google.protobuf import json_format, struct_pb2

from classwire.api.data.v1 import resources_pb2 as data_pb

from ..domain.notifications import Template
from ..domain.workflows import WorkflowView
from .common import set_time


def notification(row) -> data_pb.Notification:
    message = data_pb.Notification(
        notification_id=row.id,
        channel=row.channel,
        recipient_id=row.recipient_id,
        template=row.template,
        locale=row.locale,
        cause=row.cause,
        workflow=row.workflow,
        session_id=row.session_id,
        state=row.state,
        suppression_reason=row.suppression_reason,
        failure_reason=row.failure_reason,
        attempt_count=row.attempt_count,
        subject=row.subject,
    )
    set_time(message.create_time, row.create_time)
    set_time(message.send_time, row.send_time)
    if row.state in (data_pb.NOTIFICATION_STATE_PENDING, data_pb.NOTIFICATION_STATE_DEFERRED):
        set_time(message.next_attempt_time, row.next_attempt_time)
    return message


def template(value: Template) -> data_pb.NotificationTemplate:
    message = data_pb.NotificationTemplate(
        name=value.name,
        locale=value.locale,
        subject=value.subject,
        html_body=value.html_body,
        text_body=value.text_body,
        variables=list(value.variables),
        overridden=value.overridden,
    )
    set_time(message.update_time, value.update_time)
    return message


def _struct(value: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def workflow(view: WorkflowView) -> data_pb.Workflow:
    message = data_pb.Workflow(
        name=view.name,
        description=view.description,
        built_in=view.built_in,
        plugin=view.plugin,
        trigger_event_types=view.trigger_event_types,
        enabled=view.enabled,
        settings=_struct(view.settings),
        settings_schema=_struct(view.settings_schema),
    )
    set_time(message.update_time, view.update_time)
    return message


def settings_from_proto(message: struct_pb2.Struct) -> dict:
    return json_format.MessageToDict(message)
