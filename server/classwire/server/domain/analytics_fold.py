"""Folds events into the analytics rollup rows: one row per session and one per (session, person).

Pure logic over plain dicts (the columns of store/analytics_models.py): the rollup consumer loads
the rows a batch of events touches, folds the batch here, and writes the changed rows back in the
transaction that advances its cursor. Breakout rooms fold into their root session, so a learner
moved to a room stays one attendance.
"""

from __future__ import annotations

from collections.abc import Iterable

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import event_pb2

LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER
INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_INSTRUCTOR
CO_INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_CO_INSTRUCTOR
TEACHING = (INSTRUCTOR, CO_INSTRUCTOR)
CAMERA = common_pb2.TRACK_SOURCE_CAMERA
ENDED_LEAVE = common_pb2.LEAVE_REASON_SESSION_ENDED
MOVED_LEAVE = common_pb2.LEAVE_REASON_MOVED
ENDED = common_pb2.SESSION_STATE_ENDED
CANCELLED = common_pb2.SESSION_STATE_CANCELLED

# Lateness and early leaves are counted beyond these (no tenant setting names them yet).
LATE_GRACE_MS = 5 * 60_000
EARLY_LEAVE_GRACE_MS = 5 * 60_000
SLOT_MS = 15 * 60_000  # every IANA zone's offset is a multiple of 15 minutes

PREFIX = "classwire.api.events.v1."
# The event types the fold reads; the consumer skips the others without parsing them.
FOLDED_TYPES = frozenset(
    PREFIX + name
    for name in (
        "SessionCreated",
        "SessionUpdated",
        "SessionStateChanged",
        "SessionEnded",
        "SessionCancelled",
        "JoinTokenIssued",
        "ParticipantJoined",
        "ParticipantLeft",
        "ParticipantReconnecting",
        "AttendanceIntervalRecorded",
        "HandRaised",
        "ChatMessagePosted",
        "ReactionSent",
        "PollCreated",
        "PollAnswered",
        "SpeakingIntervalRecorded",
        "TrackPublished",
        "TrackUnpublished",
        "RatingSubmitted",
        "RatingDeleted",
    )
)

COUNTERS = (
    "present_ms",
    "talk_ms",
    "camera_ms",
    "late_ms",
    "chat_messages",
    "hand_raises",
    "reactions",
    "polls_offered",
    "polls_answered",
    "graded_answers",
    "correct_answers",
    "disconnects",
    "rating_count",
    "rating_sum",
    "rating_1",
    "rating_2",
    "rating_3",
    "rating_4",
    "rating_5",
)


def ms(stamp) -> int:
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


def slot_of(start_ms: int) -> int:
    """The 15-minute slot (epoch seconds) a scheduled start falls in."""
    return (start_ms - start_ms % SLOT_MS) // 1000


def session_id_of(envelope: event_pb2.Event, payload) -> str:
    return envelope.session_id or getattr(payload, "session_id", "") or ""


class Fold:
    """The rows one batch touches, and which of them changed."""

    def __init__(
        self,
        tenant_id: str,
        sessions: Iterable[dict],
        attendances: Iterable[dict],
        assigned: dict[str, list[str]] | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.sessions = {row["session_id"]: row for row in sessions}
        self.rows: dict[str, dict[str, dict]] = {}
        for row in attendances:
            self.rows.setdefault(row["session_id"], {})[row["identity"]] = row
        # Instructors assigned to new sessions, read from the session's state when created.
        self.assigned = assigned or {}
        self.dirty_sessions: set[str] = set()
        self.dirty_rows: set[tuple[str, str]] = set()

    # -- rows ----------------------------------------------------------------------------------

    def _session(self, session_id: str, at_ms: int) -> dict:
        row = self.sessions.get(session_id)
        if row is None:
            row = {
                "tenant_id": self.tenant_id,
                "session_id": session_id,
                "root_session_id": session_id,
                "class_id": "",
                "course_id": "",
                "scheduled_start_ms": None,
                "scheduled_end_ms": None,
                "state": 0,
                "state_json": {},
            }
            self.sessions[session_id] = row
            self.dirty_sessions.add(session_id)
        if row["scheduled_start_ms"] is None and "first_ms" not in row["state_json"]:
            row["state_json"] = {**row["state_json"], "first_ms": at_ms}
        return row

    def _root(self, session_id: str, at_ms: int) -> dict:
        row = self._session(session_id, at_ms)
        root_id = row["root_session_id"]
        return row if root_id == session_id else self._session(root_id, at_ms)

    def _state(self, root: dict) -> dict:
        """The root session's working state, marked changed (copied so a reload compares)."""
        self.dirty_sessions.add(root["session_id"])
        state = root["state_json"]
        if not state.get("_copied"):
            state = {
                "_copied": True,
                **{
                    k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                    for k, v in state.items()
                },
            }
            root["state_json"] = state
        return state

    def _context(self, root: dict) -> dict:
        start = root["scheduled_start_ms"]
        end = root["scheduled_end_ms"]
        if start is None:
            start = root["state_json"].get("first_ms", 0)
        instructors = root["state_json"].get("instructors") or []
        return {
            "class_id": root["class_id"],
            "course_id": root["course_id"],
            "instructor": instructors[0] if instructors else "",
            "slot": slot_of(start),
            "scheduled_ms": max(0, (end or start) - start),
            "cancelled": root["state"] == CANCELLED,
            "ended": root["state"] == ENDED,
        }

    def _row(self, root: dict, identity: str, role: int = 0) -> dict:
        rows = self.rows.setdefault(root["session_id"], {})
        row = rows.get(identity)
        if row is None:
            row = {
                "tenant_id": self.tenant_id,
                "session_id": root["session_id"],
                "identity": identity,
                "role": role,
                "display_name": "",
                "expected": False,
                "attended": False,
                "present": False,
                "late": False,
                "left_early": False,
                "talk_share": 0.0,
                "camera_since_ms": None,
                **dict.fromkeys(COUNTERS, 0),
                **self._context(root),
            }
            rows[identity] = row
        elif role and not row["role"]:
            row["role"] = role
        self.dirty_rows.add((root["session_id"], identity))
        return row

    def _restamp(self, root: dict) -> None:
        """Copies the session's context (schedule, class, instructor, state) to its rows."""
        context = self._context(root)
        for identity, row in self.rows.get(root["session_id"], {}).items():
            if any(row[k] != v for k, v in context.items()):
                row.update(context)
                self.dirty_rows.add((root["session_id"], identity))

    def _add_instructor(self, root: dict, identity: str, role: int = INSTRUCTOR) -> None:
        if not identity:
            return
        state = root["state_json"]
        if identity in (state.get("instructors") or []):
            return
        state = self._state(root)
        state.setdefault("instructors", []).append(identity)
        row = self._row(root, identity, role)
        row["expected"] = True
        if len(state["instructors"]) == 1:
            self._restamp(root)

    def _by_participant(self, root: dict, participant_id: str) -> str:
        return (root["state_json"].get("participants") or {}).get(participant_id, "")

    def _close_camera(self, row: dict, at_ms: int) -> None:
        if row["camera_since_ms"] is not None:
            row["camera_ms"] += max(0, at_ms - row["camera_since_ms"])
            row["camera_since_ms"] = None

    def _talk_shares(self, root: dict) -> None:
        teaching = root["state_json"].get("instructor_talk_ms", 0)
        for identity, row in self.rows.get(root["session_id"], {}).items():
            if row["role"] == LEARNER:
                total = row["talk_ms"] + teaching
                share = row["talk_ms"] / total if total else 0.0
                if share != row["talk_share"]:
                    row["talk_share"] = share
                    self.dirty_rows.add((root["session_id"], identity))

    # -- events --------------------------------------------------------------------------------

    def apply(self, envelope: event_pb2.Event, payload) -> None:
        name = envelope.type.removeprefix(PREFIX)
        handler = getattr(self, f"_on_{name}", None)
        session_id = session_id_of(envelope, payload)
        if handler is None or not session_id:
            return
        at = ms(envelope.occur_time)
        if name == "SessionCreated":
            self._on_SessionCreated(session_id, at, payload)
            return
        handler(self._root(session_id, at), at, payload)

    def _on_SessionCreated(self, session_id: str, at: int, p) -> None:
        row = self._session(session_id, at)
        self.dirty_sessions.add(session_id)
        if p.parent_session_id:
            parent = self._root(p.parent_session_id, at)
            row["root_session_id"] = parent["session_id"]
            return
        row["class_id"] = p.class_id
        row["course_id"] = p.course_id
        if p.HasField("scheduled_start_time"):
            row["scheduled_start_ms"] = ms(p.scheduled_start_time)
        if p.HasField("scheduled_end_time"):
            row["scheduled_end_ms"] = ms(p.scheduled_end_time)
        row["state"] = p.state
        self._restamp(row)
        for identity in self.assigned.get(session_id, []):
            self._add_instructor(row, identity)

    def _on_SessionUpdated(self, root: dict, at: int, p) -> None:
        paths = set(p.update_mask.paths)
        if not paths & {"scheduled_start_time", "scheduled_end_time"}:
            return
        if p.HasField("scheduled_start_time"):
            root["scheduled_start_ms"] = ms(p.scheduled_start_time)
        if p.HasField("scheduled_end_time"):
            root["scheduled_end_ms"] = ms(p.scheduled_end_time)
        self.dirty_sessions.add(root["session_id"])
        self._restamp(root)

    def _on_SessionStateChanged(self, root: dict, at: int, p) -> None:
        if p.state in (ENDED, CANCELLED) or root["state"] in (ENDED, CANCELLED):
            return  # the terminal moves come with SessionEnded / SessionCancelled
        root["state"] = p.state
        self.dirty_sessions.add(root["session_id"])

    def _on_SessionEnded(self, root: dict, at: int, p) -> None:
        root["state"] = ENDED
        self.dirty_sessions.add(root["session_id"])
        for row in self.rows.get(root["session_id"], {}).values():
            self._close_camera(row, at)
            row["present"] = False
        self._restamp(root)
        self._talk_shares(root)

    def _on_SessionCancelled(self, root: dict, at: int, p) -> None:
        root["state"] = CANCELLED
        self.dirty_sessions.add(root["session_id"])
        self._restamp(root)

    def _on_JoinTokenIssued(self, root: dict, at: int, p) -> None:
        state = self._state(root)
        state.setdefault("participants", {})[p.participant_id] = p.identity
        if p.role in TEACHING:
            self._add_instructor(root, p.identity, p.role)
        self._row(root, p.identity, p.role)["expected"] = True

    def _on_ParticipantJoined(self, root: dict, at: int, p) -> None:
        participants = root["state_json"].get("participants") or {}
        if participants.get(p.participant_id) != p.identity:
            self._state(root).setdefault("participants", {})[p.participant_id] = p.identity
        if p.role in TEACHING:
            self._add_instructor(root, p.identity, p.role)
        row = self._row(root, p.identity, p.role)
        row["display_name"] = p.display_name[:100]
        if not row["attended"]:
            row["attended"] = True
            start = root["scheduled_start_ms"]
            if start is not None:
                row["late_ms"] = max(0, at - start)
                row["late"] = row["late_ms"] > LATE_GRACE_MS
        row["present"] = True
        row["left_early"] = False

    def _on_ParticipantLeft(self, root: dict, at: int, p) -> None:
        if p.reason == MOVED_LEAVE or not p.identity:
            return  # a move to or from a breakout room is no leave of the session
        row = self._row(root, p.identity)
        row["present"] = False
        self._close_camera(row, at)
        end = root["scheduled_end_ms"]
        row["left_early"] = bool(
            p.reason != ENDED_LEAVE
            and root["state"] != ENDED
            and end is not None
            and end - at > EARLY_LEAVE_GRACE_MS
        )

    def _on_ParticipantReconnecting(self, root: dict, at: int, p) -> None:
        identity = self._by_participant(root, p.participant_id)
        if identity:
            self._row(root, identity)["disconnects"] += 1

    def _on_AttendanceIntervalRecorded(self, root: dict, at: int, p) -> None:
        if p.identity:
            row = self._row(root, p.identity, p.role)
            row["present_ms"] += max(0, ms(p.leave_time) - ms(p.join_time))

    def _on_HandRaised(self, root: dict, at: int, p) -> None:
        if p.identity:
            self._row(root, p.identity)["hand_raises"] += 1

    def _on_ChatMessagePosted(self, root: dict, at: int, p) -> None:
        if p.sender_identity:
            self._row(root, p.sender_identity)["chat_messages"] += 1

    def _on_ReactionSent(self, root: dict, at: int, p) -> None:
        if p.identity:
            self._row(root, p.identity)["reactions"] += 1

    def _on_PollCreated(self, root: dict, at: int, p) -> None:
        self._state(root).setdefault("polls", {})[p.poll_id] = sorted(p.correct_option_ids)
        for identity, row in self.rows.get(root["session_id"], {}).items():
            if row["present"]:
                row["polls_offered"] += 1
                self.dirty_rows.add((root["session_id"], identity))

    def _on_PollAnswered(self, root: dict, at: int, p) -> None:
        if not p.identity:
            return  # anonymous polls attribute no answer
        state = self._state(root)
        correct_ids = (state.get("polls") or {}).get(p.poll_id) or []
        answers = state.setdefault("answers", {})
        key = f"{p.poll_id}/{p.identity}"
        row = self._row(root, p.identity)
        previous = answers.get(key, "none")
        now = (sorted(p.option_ids) == correct_ids) if correct_ids else None
        if previous == "none":
            row["polls_answered"] += 1
            if now is not None:
                row["graded_answers"] += 1
        if now is not None:
            row["correct_answers"] += int(now) - int(bool(previous is True))
        answers[key] = now

    def _on_SpeakingIntervalRecorded(self, root: dict, at: int, p) -> None:
        identity = p.identity or self._by_participant(root, p.participant_id)
        if not identity:
            return
        spoken = max(0, ms(p.end_time) - ms(p.start_time))
        row = self._row(root, identity)
        row["talk_ms"] += spoken
        if row["role"] in TEACHING:
            state = self._state(root)
            state["instructor_talk_ms"] = state.get("instructor_talk_ms", 0) + spoken
        if root["state"] == ENDED:
            self._talk_shares(root)

    def _on_TrackPublished(self, root: dict, at: int, p) -> None:
        if p.source != CAMERA:
            return
        identity = p.identity or self._by_participant(root, p.participant_id)
        if identity:
            row = self._row(root, identity)
            if row["camera_since_ms"] is None:
                row["camera_since_ms"] = at

    def _on_TrackUnpublished(self, root: dict, at: int, p) -> None:
        if p.source != CAMERA:
            return
        identity = self._by_participant(root, p.participant_id)
        if identity:
            self._close_camera(self._row(root, identity), at)

    def _rate(self, root: dict, instructor: str, score: int, sign: int) -> None:
        if not instructor or not 1 <= score <= 5:
            return
        row = self._row(root, instructor)
        row["rating_count"] += sign
        row["rating_sum"] += sign * score
        row[f"rating_{score}"] += sign

    def _on_RatingSubmitted(self, root: dict, at: int, p) -> None:
        ratings = self._state(root).setdefault("ratings", {})
        old = ratings.get(p.rating_id)
        if old:
            self._rate(root, old[0], old[1], -1)
        self._rate(root, p.instructor_identity, p.score, +1)
        ratings[p.rating_id] = [p.instructor_identity, p.score]

    def _on_RatingDeleted(self, root: dict, at: int, p) -> None:
        ratings = self._state(root).setdefault("ratings", {})
        old = ratings.pop(p.rating_id, None)
        if old:
            self._rate(root, old[0], old[1], -1)

    # -- output --------------------------------------------------------------------------------

    def changed(self) -> tuple[list[dict], list[dict]]:
        sessions = []
        for session_id in sorted(self.dirty_sessions):
            row = dict(self.sessions[session_id])
            row["state_json"] = {k: v for k, v in row["state_json"].items() if k != "_copied"}
            sessions.append(row)
        rows = [self.rows[s][i] for s, i in sorted(self.dirty_rows)]
        return sessions, rows
