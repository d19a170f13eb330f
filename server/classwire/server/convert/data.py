"""Protos of the data-and-integrations capability: ingest results (data.v1), webhook
deliveries and usage (platform.v1)."""

from __future__ import annotations

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.platform.v1 import resources_pb2 as platform_pb

from ..domain.ingest import IngestOutcome
from ..domain.usage import UsageDayView
from ..domain.webhook_deliveries import DeliveryView
from .common import set_time


def ingest_result(outcome: IngestOutcome) -> data_pb.IngestEventResult:
    result = data_pb.IngestEventResult(index=outcome.index, client_event_id=outcome.client_event_id)
    if outcome.kind == "accepted":
        result.accepted.CopyFrom(
            data_pb.IngestAccepted(event_id=outcome.event_id, sequence=outcome.sequence)
        )
    elif outcome.kind == "duplicate":
        result.duplicate.CopyFrom(
            data_pb.IngestDuplicate(event_id=outcome.event_id, sequence=outcome.sequence)
        )
    else:
        result.rejected.CopyFrom(
            data_pb.IngestRejected(
                reason=outcome.reason,
                message=outcome.message,
                field_violations=[
                    data_pb.FieldViolation(
                        field=v.field, description=v.description, reason=v.reason
                    )
                    for v in outcome.violations
                ],
            )
        )
    return result


def ingest_counts(outcomes: list[IngestOutcome]) -> dict[str, int]:
    counts = {"accepted_count": 0, "duplicate_count": 0, "rejected_count": 0}
    for outcome in outcomes:
        counts[f"{outcome.kind}_count"] += 1
    return counts


def delivery_to_proto(view: DeliveryView) -> platform_pb.WebhookDelivery:
    d = view.delivery
    message = platform_pb.WebhookDelivery(
        id=d.id,
        endpoint_id=d.endpoint_id,
        event_id=d.event_id,
        event_type=d.event_type,
        event_sequence=d.event_sequence,
        state=d.state,
    )
    for attempt in view.attempts:
        item = message.attempts.add(http_status=attempt.http_status, error=attempt.error)
        set_time(item.attempt_time, attempt.attempt_time)
        item.latency.FromMicroseconds(attempt.latency_us)
    if d.state == platform_pb.WEBHOOK_DELIVERY_STATE_PENDING:
        set_time(message.next_attempt_time, d.next_attempt_time)
    set_time(message.create_time, d.create_time)
    return message


def usage_day_to_proto(view: UsageDayView) -> platform_pb.UsageDay:
    message = platform_pb.UsageDay(
        session_minutes=view.session_minutes,
        participant_minutes=view.participant_minutes,
        recording_minutes=view.recording_minutes,
        transcription_minutes=view.transcription_minutes,
        api_calls=view.api_calls,
    )
    set_time(message.day_time, view.day)
    return message
