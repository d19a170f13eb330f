"""The pinned verb mapping `classwire-xapi/1`: which classwire events become which xAPI 1.0.3
statements, with the vocabulary of the virtual-classroom profile
(https://w3id.org/xapi/virtual-classroom) and the ADL verbs it reuses.

This table is frozen: a change makes a new MAPPING_VERSION (and a CHANGELOG entry), because the
statement ids derive from the verb IRIs, so changing a verb changes what an LRS holds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

MAPPING_VERSION = "classwire-xapi/1"
XAPI_VERSION = "1.0.3"
PROFILE_ID = "https://w3id.org/xapi/virtual-classroom"
DEFAULT_HOME_PAGE = "https://classwire.dev/tenants/{tenant_id}"
# Statement ids and registrations are UUID v5 names under this namespace.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://classwire.dev/xapi")

EV = "classwire.api.events.v1."
VC = "https://w3id.org/xapi/virtual-classroom/"
ADL = "http://adlnet.gov/expapi/verbs/"

ACTIVITY_CLASSROOM = VC + "activity-types/virtual-classroom"
ACTIVITY_POLL = "http://adlnet.gov/expapi/activities/cmi.interaction"
ACTIVITY_MESSAGE = "https://w3id.org/xapi/acrossx/activities/message"
ACTIVITY_PROFILE = "http://adlnet.gov/expapi/activities/profile"
EXT_EVENT_ID = "https://classwire.dev/xapi/extensions/event-id"
EXT_EVENT_SEQUENCE = "https://classwire.dev/xapi/extensions/event-sequence"


@dataclass(frozen=True)
class Verb:
    id: str
    display: str


INITIALIZED = Verb(ADL + "initialized", "initialized")
JOINED = Verb("http://activitystrea.ms/join", "joined")
LEFT = Verb("http://activitystrea.ms/leave", "left")
TERMINATED = Verb(ADL + "terminated", "terminated")
RAISED_HAND = Verb(VC + "verbs/raised-hand", "raised hand")
LOWERED_HAND = Verb(VC + "verbs/lowered-hand", "lowered hand")
MUTED = Verb(VC + "verbs/muted", "muted")
UNMUTED = Verb(VC + "verbs/unmuted", "unmuted")
STARTED_CAMERA = Verb(VC + "verbs/started-camera", "started camera")
STOPPED_CAMERA = Verb(VC + "verbs/stopped-camera", "stopped camera")
SHARED_SCREEN = Verb(VC + "verbs/shared-screen", "shared screen")
UNSHARED_SCREEN = Verb(VC + "verbs/unshared-screen", "unshared screen")
ASKED = Verb(ADL + "asked", "asked")
ANSWERED = Verb(ADL + "answered", "answered")
POSTED = Verb("https://w3id.org/xapi/acrossx/verbs/posted", "posted")
ATTENDED = Verb(ADL + "attended", "attended")


@dataclass(frozen=True)
class MappingRow:
    event_type: str
    condition: str
    verb: Verb
    object_type: str


# The rows GetXapiVerbMapping returns, in the documented order.
MAPPING: tuple[MappingRow, ...] = (
    MappingRow(
        EV + "SessionStateChanged", "state == SESSION_STATE_LIVE", INITIALIZED, ACTIVITY_CLASSROOM
    ),
    MappingRow(EV + "ParticipantJoined", "", JOINED, ACTIVITY_CLASSROOM),
    MappingRow(EV + "ParticipantLeft", "", LEFT, ACTIVITY_CLASSROOM),
    MappingRow(EV + "SessionEnded", "", TERMINATED, ACTIVITY_CLASSROOM),
    MappingRow(EV + "HandRaised", "", RAISED_HAND, ACTIVITY_CLASSROOM),
    MappingRow(EV + "HandLowered", "", LOWERED_HAND, ACTIVITY_CLASSROOM),
    MappingRow(EV + "TrackMuted", "source == TRACK_SOURCE_MICROPHONE", MUTED, ACTIVITY_CLASSROOM),
    MappingRow(
        EV + "ParticipantMuted", "TRACK_SOURCE_MICROPHONE in sources", MUTED, ACTIVITY_CLASSROOM
    ),
    MappingRow(
        EV + "TrackUnmuted", "source == TRACK_SOURCE_MICROPHONE", UNMUTED, ACTIVITY_CLASSROOM
    ),
    MappingRow(
        EV + "TrackPublished",
        "source == TRACK_SOURCE_MICROPHONE && !muted",
        UNMUTED,
        ACTIVITY_CLASSROOM,
    ),
    MappingRow(
        EV + "TrackPublished",
        "source == TRACK_SOURCE_CAMERA && !muted",
        STARTED_CAMERA,
        ACTIVITY_CLASSROOM,
    ),
    MappingRow(
        EV + "TrackUnmuted", "source == TRACK_SOURCE_CAMERA", STARTED_CAMERA, ACTIVITY_CLASSROOM
    ),
    MappingRow(
        EV + "TrackMuted", "source == TRACK_SOURCE_CAMERA", STOPPED_CAMERA, ACTIVITY_CLASSROOM
    ),
    MappingRow(
        EV + "TrackUnpublished",
        "source == TRACK_SOURCE_CAMERA",
        STOPPED_CAMERA,
        ACTIVITY_CLASSROOM,
    ),
    MappingRow(
        EV + "ParticipantMuted",
        "TRACK_SOURCE_CAMERA in sources",
        STOPPED_CAMERA,
        ACTIVITY_CLASSROOM,
    ),
    MappingRow(
        EV + "TrackPublished", "source == TRACK_SOURCE_SCREEN", SHARED_SCREEN, ACTIVITY_CLASSROOM
    ),
    MappingRow(
        EV + "TrackUnpublished",
        "source == TRACK_SOURCE_SCREEN",
        UNSHARED_SCREEN,
        ACTIVITY_CLASSROOM,
    ),
    MappingRow(EV + "PollCreated", "", ASKED, ACTIVITY_POLL),
    MappingRow(EV + "PollAnswered", "poll is not anonymous", ANSWERED, ACTIVITY_POLL),
    MappingRow(
        EV + "ChatMessagePosted", "audience == CHAT_AUDIENCE_EVERYONE", POSTED, ACTIVITY_MESSAGE
    ),
    MappingRow(
        EV + "SessionReportReady",
        "one per person with status ATTENDANCE_STATUS_PRESENT",
        ATTENDED,
        ACTIVITY_CLASSROOM,
    ),
)

MAPPED_TYPES: frozenset[str] = frozenset(row.event_type for row in MAPPING)
