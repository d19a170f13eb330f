"""Maps event payload messages to their place in the `Event` envelope.

The envelope groups payloads by area (`Event.session.participant_joined`, ...); this index is
built from the descriptors, so a new payload in any area file flows through with no new code.
"""

from __future__ import annotations

from google.protobuf.message import Message

from classwire.api.events.v1 import event_pb2

# payload full name -> (envelope field of the area, field within the area message)
_PLACES: dict[str, tuple[str, str]] = {}
for _area_field in event_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields:
    for _field in _area_field.message_type.fields:
        if _field.message_type is not None:
            _PLACES[_field.message_type.full_name] = (_area_field.name, _field.name)


def event_types() -> list[str]:
    """Every event type name, as filters and webhooks match on it."""
    return sorted(_PLACES)


def is_event_type(name: str) -> bool:
    return name in _PLACES


def wrap(payload: Message, envelope: event_pb2.Event) -> str:
    """Puts `payload` in its place in `envelope` and returns the event type name."""
    name = payload.DESCRIPTOR.full_name
    try:
        area, field = _PLACES[name]
    except KeyError:
        raise ValueError(
            f"{name} is not an event payload of classwire.api.events.v1.Event"
        ) from None
    getattr(getattr(envelope, area), field).CopyFrom(payload)
    return name


def unwrap(envelope: event_pb2.Event) -> Message | None:
    """The payload message of an envelope, or None when it is empty."""
    area = envelope.WhichOneof("payload")
    if area is None:
        return None
    group = getattr(envelope, area)
    field = group.WhichOneof(group.DESCRIPTOR.oneofs[0].name) if group.DESCRIPTOR.oneofs else None
    return getattr(group, field) if field else None
