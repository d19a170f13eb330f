"""media.v1 protos <-> media domain values, and the media parts of the participant connection."""

from __future__ import annotations

from datetime import timedelta

from classwire.api.common.v1 import common_pb2
from classwire.api.media.v1 import resources_pb2 as pb
from classwire.api.media.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2 as session_api

from ..domain import media as m
from .common import set_duration, set_time


def track_to_proto(view: m.TrackView) -> pb.Track:
    row = view.row
    message = pb.Track(
        id=row.id,
        session_id=row.session_id,
        participant_id=row.participant_id,
        identity=row.identity,
        source=row.source,
        name=row.name,
        mime_type=row.mime_type,
        state=pb.TRACK_STATE_UNPUBLISHED if row.unpublish_time else pb.TRACK_STATE_PUBLISHED,
        muted=row.muted,
        width=row.width,
        height=row.height,
        subscriber_count=view.subscriber_count,
    )
    if row.muted and row.muted_by:
        actor = row.muted_by
        message.muted_by.CopyFrom(
            common_pb2.Actor(
                kind=actor.get("kind", 0),
                # An API key's id is not shown to participants or partners.
                id=""
                if actor.get("kind") == common_pb2.Actor.KIND_API_KEY
                else actor.get("id", ""),
                identity=actor.get("identity", ""),
            )
        )
    set_time(message.publish_time, row.publish_time)
    set_time(message.unpublish_time, row.unpublish_time)
    return message


def subscription_to_proto(row) -> pb.Subscription:
    message = pb.Subscription(
        track_id=row.track_id,
        subscriber_participant_id=row.subscriber_participant_id,
        publisher_participant_id=row.publisher_participant_id,
        automatic=row.automatic,
    )
    set_time(message.subscribe_time, row.subscribe_time)
    return message


def speaking_interval_to_proto(row) -> pb.SpeakingInterval:
    message = pb.SpeakingInterval(
        participant_id=row.participant_id, identity=row.identity, track_id=row.track_id
    )
    set_time(message.start_time, row.start_time)
    set_time(message.end_time, row.end_time)
    return message


def quality_sample_to_proto(row) -> pb.QualitySample:
    message = pb.QualitySample(
        participant_id=row.participant_id,
        identity=row.identity,
        direction=row.direction,
        track_id=row.track_id,
        packet_loss_ratio=row.packet_loss_ratio,
        bitrate_bps=row.bitrate_bps,
    )
    set_time(message.sample_time, row.sample_time)
    set_duration(message.period, timedelta(seconds=row.period_seconds))
    if row.jitter_ms is not None:
        set_duration(message.jitter, timedelta(milliseconds=row.jitter_ms))
    if row.round_trip_time_ms is not None:
        set_duration(message.round_trip_time, timedelta(milliseconds=row.round_trip_time_ms))
    return message


def _summary(samples) -> pb.QualitySummary:
    summary = pb.QualitySummary(sample_count=len(samples))
    if not samples:
        return summary
    losses = [x.packet_loss_ratio for x in samples]
    summary.mean_packet_loss_ratio = sum(losses) / len(losses)
    summary.max_packet_loss_ratio = max(losses)
    jitters = [x.jitter_ms for x in samples if x.jitter_ms is not None]
    if jitters:
        set_duration(summary.mean_jitter, timedelta(milliseconds=sum(jitters) / len(jitters)))
    rtts = [x.round_trip_time_ms for x in samples if x.round_trip_time_ms is not None]
    if rtts:
        set_duration(summary.mean_round_trip_time, timedelta(milliseconds=sum(rtts) / len(rtts)))
    summary.mean_bitrate_bps = int(sum(x.bitrate_bps for x in samples) / len(samples))
    summary.latest.CopyFrom(quality_sample_to_proto(samples[-1]))
    return summary


def media_stats_to_proto(view: m.MediaStatsView) -> pb.MediaStats:
    message = pb.MediaStats(
        session_id=view.session_id,
        published_track_count=view.published,
        subscription_count=view.subscriptions,
    )
    set_time(message.compute_time, view.compute_time)
    for p in view.participants:
        message.participants.append(
            pb.ParticipantMediaStats(
                participant_id=p.participant_id,
                identity=p.identity,
                upstream=_summary(p.upstream),
                downstream=_summary(p.downstream),
                published_track_count=p.published,
                subscribed_track_count=p.subscribed,
                reconnect_count=p.reconnect_count,
            )
        )
    return message


def talk_time_to_response(entries, total: timedelta) -> api.GetTalkTimeResponse:
    response = api.GetTalkTimeResponse()
    for e in entries:
        item = response.participants.add(
            participant_id=e.participant.id,
            identity=e.participant.identity,
            role=e.participant.role,
            interval_count=e.interval_count,
            talk_share=e.share,
        )
        set_duration(item.talk_duration, e.duration)
    set_duration(response.total_talk_duration, total)
    return response


# The participant connection ------------------------------------------------------------------


def action_args(kind: str, message) -> dict:
    """The domain arguments of a media action of ConnectRequest."""
    if kind == "session_description":
        return {"target": message.target, "type": message.type, "sdp": message.sdp}
    if kind == "ice_candidate":
        return {
            "target": message.target,
            "candidate": message.candidate,
            "sdp_mid": message.sdp_mid,
            "sdp_mline_index": message.sdp_mline_index,
        }
    if kind == "publish_track":
        return {
            "publication": m.Publication(
                client_track_id=message.client_track_id,
                source=message.source,
                name=message.name,
                muted=message.muted,
                width=message.width,
                height=message.height,
                preferred_mime_types=tuple(message.preferred_mime_types),
            )
        }
    if kind in ("unpublish_track", "mute_track", "unmute_track"):
        return {"track_id": message.track_id}
    if kind in ("subscribe", "unsubscribe"):
        return {"track_ids": tuple(message.track_ids)}
    return {}


def connect_response(item) -> session_api.ConnectResponse | None:
    """A media push as a ConnectResponse, or None when `item` is not one."""
    if isinstance(item, m.SignalDescription):
        return session_api.ConnectResponse(
            action_id=item.action_id,
            session_description=pb.SessionDescription(
                target=item.target, type=item.type, sdp=item.sdp
            ),
        )
    if isinstance(item, m.SignalCandidate):
        return session_api.ConnectResponse(
            ice_candidate=pb.IceCandidate(
                target=item.target,
                candidate=item.candidate,
                sdp_mid=item.sdp_mid,
                sdp_mline_index=item.sdp_mline_index,
            )
        )
    if isinstance(item, m.PublishTrackResult):
        return session_api.ConnectResponse(
            action_id=item.action_id,
            publish_track_result=session_api.ConnectResponse.PublishTrackResult(
                client_track_id=item.client_track_id, track=track_to_proto(item.track)
            ),
        )
    return None
