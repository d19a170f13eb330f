"""A server restart in the middle of a live session: participant streams end with UNAVAILABLE
(SERVER_SHUTTING_DOWN), and after the restart each participant resumes with its resume token,
as the same participant, with the pushes it missed replayed from the durable log."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.common.v1 import common_pb2
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2_grpc
from tests.support.subprocess_server import free_port, fresh_database, subprocess_server


def _auth(credential):
    return (("authorization", f"Bearer {credential}"),)


class Client:
    def __init__(self, address, token):
        self.address, self.token = address, token
        self.resume_token, self.last_sequence = "", 0

    async def connect(self, resume=False):
        self.channel = grpc.aio.insecure_channel(self.address)
        self.out: asyncio.Queue = asyncio.Queue()
        join = api.ConnectRequest.Join()
        if resume:
            join.resume_token, join.after_sequence = self.resume_token, self.last_sequence
        self.out.put_nowait(api.ConnectRequest(join=join))

        async def requests():
            while (item := await self.out.get()) is not None:
                yield item

        self.call = service_pb2_grpc.SessionServiceStub(self.channel).Connect(
            requests(), metadata=_auth(self.token)
        )
        joined = (await self.call.read()).joined
        self.resume_token = joined.resume_token
        if not joined.resumed:
            self.last_sequence = joined.last_sequence
        return joined

    async def read(self):
        message = await self.call.read()
        if message.sequence:
            self.last_sequence = message.sequence
        return message

    async def close(self):
        self.out.put_nowait(None)
        self.call.cancel()
        await self.channel.close()


async def test_participants_resume_after_a_server_restart(tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    with fresh_database() as url:
        with subprocess_server(
            tmp_path, port=port, data_dir=data_dir, database_url=url, expect_api_key=True
        ) as first:
            key = first.api_key
            async with grpc.aio.insecure_channel(first.address) as channel:
                sessions = service_pb2_grpc.SessionServiceStub(channel)
                start = timestamp_pb2.Timestamp()
                start.FromDatetime(datetime.now(UTC) + timedelta(minutes=1))
                end = timestamp_pb2.Timestamp()
                end.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
                grace = duration_pb2.Duration(seconds=120)
                session = (
                    await sessions.CreateSession(
                        api.CreateSessionRequest(
                            session=pb.Session(
                                title="Restart",
                                scheduled_start_time=start,
                                scheduled_end_time=end,
                                settings=pb.SessionSettings(
                                    reconnect_grace=grace, learners_join_before_instructor=True
                                ),
                            )
                        ),
                        metadata=_auth(key),
                    )
                ).session
                tokens = [
                    (
                        await sessions.CreateJoinToken(
                            api.CreateJoinTokenRequest(
                                session_id=session.id,
                                identity=identity,
                                display_name=identity,
                                role=role,
                            ),
                            metadata=_auth(key),
                        )
                    ).token
                    for identity, role in (
                        ("teacher", common_pb2.PARTICIPANT_ROLE_INSTRUCTOR),
                        ("kid", common_pb2.PARTICIPANT_ROLE_LEARNER),
                    )
                ]
            host, kid = Client(first.address, tokens[0]), Client(first.address, tokens[1])
            host_joined = await host.connect()
            kid_joined = await kid.connect()
            first.stop()  # SIGTERM: drains
            for client in (host, kid):
                try:
                    while True:
                        await client.read()
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    status = rpc_status.from_call(exc)
                    info = error_details_pb2.ErrorInfo()
                    status.details[0].Unpack(info)
                    assert info.reason == "SERVER_SHUTTING_DOWN"
                with contextlib.suppress(Exception):
                    await client.close()
        with subprocess_server(
            tmp_path, port=port, data_dir=data_dir, database_url=url, expect_api_key=False
        ):
            resumed_host = await host.connect(resume=True)
            resumed_kid = await kid.connect(resume=True)
            assert resumed_host.resumed and resumed_kid.resumed
            assert resumed_host.participant_id == host_joined.participant_id
            assert resumed_kid.participant_id == kid_joined.participant_id
            # The kid missed the host's reconnecting and resume: replayed, then live pushes.
            kinds = []
            while "participant_resumed" not in kinds or len(kinds) < 2:
                message = await asyncio.wait_for(kid.read(), 10)
                if message.WhichOneof("message") == "event":
                    kinds.append(message.event.session.WhichOneof("payload"))
            assert "participant_reconnecting" in kinds
            assert "participant_joined" not in kinds  # a resume is no second join
            for client in (host, kid):
                await client.close()
