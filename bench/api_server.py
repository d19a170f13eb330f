"""The servers `bench/api.py` measures, each started in its own process.

echo         a bare grpc.aio server echoing the request bytes: the baseline
classwire    the real server (interceptor stack, auth, SQLite) answering GetApiKey
no-stack     the same handler and database read without the interceptor stack
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

import grpc
from grpc import aio


async def echo(port: int) -> None:
    async def handle(request: bytes, context) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(handle)}
    )
    server = aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"ready": True}), flush=True)
    await server.wait_for_termination()


async def classwire(port: int, with_stack: bool) -> None:
    from classwire.api.platform.v1 import service_pb2_grpc
    from classwire.server.app import Platform, Server
    from classwire.server.config import load_config
    from classwire.server.domain.platform import TenantSettings
    from classwire.server.domain.usage import UsageDomain
    from classwire.server.handlers.platform import PlatformHandler
    from classwire.server.logs import configure_logging
    from classwire.server.rpc import context

    configure_logging("json", "warning")  # keep stdout for the handshake line
    tmp = Path(tempfile.mkdtemp(prefix="classwire-bench-"))
    config = load_config(
        {
            "CLASSWIRE_LISTEN": f"127.0.0.1:{port}",
            "CLASSWIRE_METRICS_LISTEN": "",
            "CLASSWIRE_DATA_DIR": str(tmp),
            "CLASSWIRE_LOG_LEVEL": "warning",
            "CLASSWIRE_BOOTSTRAP": "false",
            # The benchmark measures throughput, not the limiter.
            "CLASSWIRE_RATE_LIMIT_PER_SECOND": "1000000",
            "CLASSWIRE_RATE_LIMIT_BURST": "1000000",
        }
    )
    if with_stack:
        server = Server(config)
        await server.start()
        platform = server.platform
    else:
        platform = await Platform.open(config)
    created = await platform.platform.create_tenant(None, "bench", TenantSettings())
    principal = await platform.authenticator.authenticate(created.secret)
    if not with_stack:
        handler = PlatformHandler(platform.platform, UsageDomain(platform.db, platform.meter))
        original = handler.GetApiKey

        async def get_api_key(request, ctx):
            # What the interceptor would have established, without any of its work.
            context.set_principal(principal)
            return await original(request, ctx)

        handler.GetApiKey = get_api_key
        server = aio.server()
        service_pb2_grpc.add_PlatformServiceServicer_to_server(handler, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
    print(
        json.dumps({"ready": True, "api_key": created.secret, "key_id": created.api_key.id}),
        flush=True,
    )
    await asyncio.Event().wait()


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "echo":
        asyncio.run(echo(port))
    else:
        asyncio.run(classwire(port, with_stack=mode == "classwire"))
