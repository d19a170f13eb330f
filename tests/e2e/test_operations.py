"""Operating `classwire serve` as a real process: SIGTERM under load, configuration errors, the
admin CLI, health and reflection, `buf curl`, metrics and logs, and restarts on the same data.

Every server here runs in a child process (tests/support/subprocess_server.py) on a loopback
port, on SQLite or, when CLASSWIRE_TEST_POSTGRES_URL is set, on a fresh PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families
from support.subprocess_server import (
    BOOTSTRAP_PREFIX,
    free_port,
    fresh_database,
    subprocess_server,
)

from classwire.api.platform.v1 import resources_pb2 as platform_pb
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.client import PermissionDenied, connect_sync

REPO = Path(__file__).resolve().parents[2]
BUF = REPO / "node_modules" / ".bin" / "buf"

# Written out rather than taken from the code under test: these names are the public contract.
CLASSWIRE_SERVICES = {
    "classwire.api.platform.v1.PlatformService",
    "classwire.api.roster.v1.RosterService",
    "classwire.api.scheduling.v1.SchedulingService",
    "classwire.api.session.v1.SessionService",
    "classwire.api.media.v1.MediaService",
    "classwire.api.data.v1.DataService",
}
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
GET_TENANT = "/classwire.api.platform.v1.PlatformService/GetTenant"


def platform(channel) -> platform_grpc.PlatformServiceStub:
    return platform_grpc.PlatformServiceStub(channel)


def cli_env(data_dir: Path, database_url: str = "", **settings: str) -> dict[str, str]:
    """The environment of a `classwire` command: only the settings given, so a developer's own
    CLASSWIRE_* variables cannot change what a test sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSWIRE_")}
    env.update(
        {
            "CLASSWIRE_DATA_DIR": str(data_dir),
            "CLASSWIRE_METRICS_LISTEN": "",
            "CLASSWIRE_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if database_url:
        env["CLASSWIRE_DATABASE_URL"] = database_url
    env.update(settings)
    return env


def classwire_command() -> list[str]:
    # The console script users run, when the environment has one; the module otherwise.
    script = Path(sys.executable).parent / "classwire"
    return [str(script)] if script.exists() else [sys.executable, "-m", "classwire.server.cli"]


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*classwire_command(), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def log_records(server) -> list[dict]:
    """The server's structlog JSON lines (anything else on stderr is skipped)."""
    records = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def _timestamp(record: dict) -> float:
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


# -- 1. SIGTERM during a load run ---------------------------------------------------------------

GRACE_SECONDS = 10
# A liveness bound, not a performance claim: the grace period, plus closing the database pool.
EXIT_TIMEOUT = GRACE_SECONDS + 10
LOAD_TASKS = 16


@dataclass
class Outcome:
    method: str
    code: grpc.StatusCode
    # The server's interceptor names every call it starts on with `x-request-id` (the caller's),
    # before authentication and the handler: in the trailers, and for writes also as a header at
    # once. A call that got it back was accepted by the server; one without it never reached a
    # handler. The server's log is the other witness: it names every call it ran.
    request_id: str
    sent_id: str
    details: str
    end: float

    @property
    def accepted(self) -> bool:
        return bool(self.request_id)


async def _one_call(method: str, stub_method, request, metadata) -> Outcome:
    sent_id = uuid.uuid4().hex
    call = stub_method(
        request, metadata=(*metadata, ("x-request-id", sent_id)), timeout=EXIT_TIMEOUT + 10
    )
    try:
        await call
        code, details = grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details() or ""
    # grpc.aio.Metadata iterates as (key, value) pairs in some releases: look the key up.
    request_id = ""
    for metadata in (await call.initial_metadata(), await call.trailing_metadata()):
        if metadata is not None:
            request_id = request_id or metadata.get("x-request-id", "")
    return Outcome(method, code, request_id, sent_id, details, time.monotonic())


def _refused_before_acceptance(outcome: Outcome) -> bool:
    """A failure the server never accepted, as gRPC reports a server that is going away.

    UNAVAILABLE: the listener is closed (connection refused) or the connection is going away.
    CANCELLED with the bare detail "CANCELLED": grpc core's shutdown cancels calls that had
    arrived on the connection but were still queued inside grpc, not yet handed to the
    application (grpc/grpc#41785: it should say UNAVAILABLE). No classwire code ran for them:
    they carry no x-request-id. The SDK retries them (no response headers were sent).
    """
    if outcome.accepted:
        return False
    if outcome.code is grpc.StatusCode.UNAVAILABLE:
        return True
    return outcome.code is grpc.StatusCode.CANCELLED and outcome.details == "CANCELLED"


async def test_sigterm_during_load_drains_in_flight_calls(tmp_path):
    env = {
        "CLASSWIRE_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
        # The load is far beyond the default per-key budget; RESOURCE_EXHAUSTED would only hide
        # what this test is about.
        "CLASSWIRE_RATE_LIMIT_PER_SECOND": "1000000",
        "CLASSWIRE_RATE_LIMIT_BURST": "1000000",
    }
    with subprocess_server(tmp_path, env=env) as server:
        auth = (("authorization", f"Bearer {server.api_key}"),)
        # Several connections, and no retries: every refusal must reach the test as it happened
        # on the wire, never come back as a second attempt of the same call.
        channels = [
            grpc.aio.insecure_channel(server.address, [("grpc.enable_retries", 0)])
            for _ in range(4)
        ]
        stubs = [platform(c) for c in channels]
        created = await stubs[0].CreateApiKey(
            platform_api.CreateApiKeyRequest(display_name="load", scopes=["platform:read"]),
            metadata=auth,
        )
        key_id = created.api_key.id
        outcomes: list[Outcome] = []
        stop = asyncio.Event()

        async def worker(index: int) -> None:
            stub = stubs[index % len(stubs)]
            n = 0
            while not stop.is_set():
                n += 1
                kind = (index + n) % 4
                if kind == 0:
                    outcome = await _one_call(
                        "GetApiKey", stub.GetApiKey, platform_api.GetApiKeyRequest(id=key_id), auth
                    )
                elif kind == 1:
                    outcome = await _one_call(
                        "ListApiKeys",
                        stub.ListApiKeys,
                        platform_api.ListApiKeysRequest(page_size=100),
                        auth,
                    )
                elif kind == 2:
                    outcome = await _one_call(
                        "GetTenant", stub.GetTenant, platform_api.GetTenantRequest(), auth
                    )
                else:
                    # A write. On SQLite writers queue for the single write connection, so these
                    # are the slowest calls, most of them mid-handler when the signal lands.
                    outcome = await _one_call(
                        "CreateWebhookEndpoint",
                        stub.CreateWebhookEndpoint,
                        platform_api.CreateWebhookEndpointRequest(
                            request_id=uuid.uuid4().hex,
                            endpoint=platform_pb.WebhookEndpoint(
                                url=f"https://example.com/hooks/{index}/{n}"
                            ),
                        ),
                        auth,
                    )
                outcomes.append(outcome)
                if outcome.code is not grpc.StatusCode.OK:
                    await asyncio.sleep(0.01)  # the server is going away: do not spin

        health_statuses: list[int] = []

        async def watch_health() -> None:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stream = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service="")
                )
                async for response in stream:
                    health_statuses.append(response.status)
                    if response.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        # An open Watch is itself an in-flight call, which the server would wait
                        # for until the grace period ends: leave once draining has been seen.
                        stream.cancel()
                        return

        watcher = asyncio.create_task(watch_health())
        workers = [asyncio.create_task(worker(i)) for i in range(LOAD_TASKS)]
        try:
            deadline = time.monotonic() + 30
            while sum(o.code is grpc.StatusCode.OK for o in outcomes) < 300:
                assert time.monotonic() < deadline, "the load never got going"
                await asyncio.sleep(0.02)
            signal_time = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            # The load keeps running through the drain until the process is gone.
            try:
                exit_code = await asyncio.to_thread(server.process.wait, EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit {EXIT_TIMEOUT} s after SIGTERM\n{server.log()[-3000:]}")
        finally:
            stop.set()
            await asyncio.gather(*workers)
            for channel in channels:
                await channel.close()
        await asyncio.wait_for(watcher, 10)

    assert exit_code == 0, server.log()[-3000:]
    summary = Counter((o.method, o.code.name, o.accepted) for o in outcomes if o.end > signal_time)

    # Every call the server accepted completed OK; every other failure is a refusal.
    accepted_failures = [o for o in outcomes if o.accepted and o.code is not grpc.StatusCode.OK]
    assert not accepted_failures, (accepted_failures[:5], summary)
    failed = [o for o in outcomes if o.code is not grpc.StatusCode.OK]
    unexplained = [o for o in failed if not _refused_before_acceptance(o)]
    assert not unexplained, (unexplained[:5], summary)
    assert any(not o.accepted for o in outcomes), "no call was ever refused: the load stopped early"

    # The server's own account: one canonical line per call it ran, every one OK, and the calls
    # it was still running when it began to drain (logged after "draining") all reached their
    # clients as OK. The comparison with what the clients saw is what counts: a handler
    # cancelled at the end of the grace period is logged as OK too.
    records = log_records(server)
    events = [r.get("event") for r in records]
    assert "draining" in events and "stopped" in events, events[-5:]
    assert events.index("draining") < events.index("stopped")
    # The drain ended because the calls finished, not because the grace period ran out and cut
    # them off (the server's own timestamps; the bound is the configured grace, not a speed).
    drain = _timestamp(records[events.index("stopped")]) - _timestamp(
        records[events.index("draining")]
    )
    assert drain < GRACE_SECONDS, drain
    rpc_lines = [r for r in records if r.get("event") == "rpc"]
    assert {r["code"] for r in rpc_lines} == {"OK"}, Counter(r["code"] for r in rpc_lines)
    drained = [
        r["request_id"]
        for r in records[events.index("draining") : events.index("stopped")]
        if r.get("event") == "rpc"
    ]
    assert drained, "no call was in flight when the drain began; the test proved nothing"
    ok_ids = {o.request_id for o in outcomes if o.code is grpc.StatusCode.OK}
    assert set(drained) <= ok_ids, set(drained) - ok_ids
    # Each OK call the clients saw was logged once by the server, and vice versa.
    logged_ids = Counter(r["request_id"] for r in rpc_lines)
    assert all(logged_ids[i] == 1 for i in ok_ids)
    # And no call that failed on the client's side was ever run by the server.
    ran_and_failed = [o for o in failed if o.sent_id in logged_ids]
    assert not ran_and_failed, (ran_and_failed[:5], summary)

    # Health went NOT_SERVING when the drain began.
    assert health_statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING


# -- 2. Configuration errors ------------------------------------------------------------------


CONFIG_ERRORS = {
    "listen": ({"CLASSWIRE_LISTEN": "nonsense"}, None, "CLASSWIRE_LISTEN"),
    "database-url": ({"CLASSWIRE_DATABASE_URL": "mysql://x"}, None, "CLASSWIRE_DATABASE_URL"),
    "grace": (
        {"CLASSWIRE_SHUTDOWN_GRACE_SECONDS": "-1"},
        None,
        "CLASSWIRE_SHUTDOWN_GRACE_SECONDS",
    ),
    # Named as the user wrote it: the environment variable, not the file's spelling.
    "provider": ({"CLASSWIRE_PROVIDER_BLOB_STORE": "nope"}, None, "CLASSWIRE_PROVIDER_BLOB_STORE"),
    "toml-unknown-key": ({}, 'listen = "127.0.0.1:1"\nlisten_adress = "x"\n', "listen_adress"),
    "toml-bad-value": ({}, 'shutdown_grace_seconds = "soon"\n', "shutdown_grace_seconds"),
    "toml-bad-provider": ({}, "[providers]\nblob_store = 3\n", "providers.blob_store"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_configuration_error_exits_2_naming_the_key(tmp_path, case):
    settings, toml_text, key = CONFIG_ERRORS[case]
    port = free_port()
    settings = {"CLASSWIRE_LISTEN": f"127.0.0.1:{port}", **settings}
    if toml_text is not None:
        config_file = tmp_path / "classwire.toml"
        config_file.write_text(toml_text)
        settings["CLASSWIRE_CONFIG"] = str(config_file)
    env = cli_env(tmp_path / "data", **settings)
    # Exactly the README's command: a checkout without the console script on PATH can run it.
    result = subprocess.run(
        [sys.executable, "-m", "classwire.server.cli", "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    keys = (key,) if isinstance(key, str) else key
    assert "configuration error" in result.stderr
    assert any(k in result.stderr for k in keys), result.stderr
    # It stopped before serving: no "serving" log line and no bootstrap banner.
    assert '"serving"' not in result.stderr
    assert BOOTSTRAP_PREFIX not in result.stdout


# -- 3. The admin CLI ---------------------------------------------------------------------------


def test_admin_create_tenant_keys_work_on_a_server_over_the_same_data(tmp_path):
    data_dir = tmp_path / "data"
    with fresh_database() as url:
        env = cli_env(data_dir, url)
        plain = run_cli(["admin", "create-tenant", "--name", "Northwind School", "--json"], env)
        assert plain.returncode == 0, plain.stderr
        tenant = json.loads(plain.stdout)
        assert tenant["tenant_id"] and tenant["api_key"]
        assert "operator" not in tenant["scopes"]

        operator = run_cli(
            ["admin", "create-tenant", "--name", "Operations", "--json", "--operator"], env
        )
        assert operator.returncode == 0, operator.stderr
        ops = json.loads(operator.stdout)
        assert "operator" in ops["scopes"]

        # A tenant exists already, so the server creates no bootstrap tenant and prints no key.
        with subprocess_server(
            tmp_path, data_dir=data_dir, database_url=url, expect_api_key=False
        ) as server:
            assert server.api_key is None
            assert not any(BOOTSTRAP_PREFIX in line for line in server.stdout_lines)

            with connect_sync(server.address, api_key=tenant["api_key"]) as channel:
                got = platform(channel).GetTenant(platform_api.GetTenantRequest()).tenant
                assert got.id == tenant["tenant_id"]
                assert got.display_name == "Northwind School"
                with pytest.raises(PermissionDenied):
                    platform(channel).CreateTenant(
                        platform_api.CreateTenantRequest(display_name="Not allowed")
                    )

            with connect_sync(server.address, api_key=ops["api_key"]) as channel:
                made = platform(channel).CreateTenant(
                    platform_api.CreateTenantRequest(display_name="Made by operator")
                )
                assert made.tenant.id and made.admin_api_key_secret
                # The operator may read any tenant, the CLI's first one included.
                other = platform(channel).GetTenant(
                    platform_api.GetTenantRequest(id=tenant["tenant_id"])
                )
                assert other.tenant.display_name == "Northwind School"


async def test_db_upgrade_on_a_fresh_database_is_idempotent(tmp_path):
    from alembic.script import ScriptDirectory
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from classwire.server.store.engine import MIGRATIONS_DIR

    # The newest revision this checkout ships: where `db upgrade` must leave the database.
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    data_dir = tmp_path / "data"
    with fresh_database() as url:
        env = cli_env(data_dir, url)
        versions = []
        for _ in range(2):
            result = run_cli(["db", "upgrade"], env)
            assert result.returncode == 0, result.stderr
            engine = create_async_engine(
                url or f"sqlite+aiosqlite:///{(data_dir / 'classwire.db').resolve()}"
            )
            try:
                async with engine.connect() as conn:
                    rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
                    versions.append([row[0] for row in rows])
            finally:
                await engine.dispose()
        assert versions == [[head], [head]]


# -- 4-6. One server with metrics on: health, reflection, buf curl, metrics and logs ------------


@dataclass
class Shared:
    server: object
    metrics_url: str


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    metrics_port = free_port()
    env = {"CLASSWIRE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"}
    with subprocess_server(tmp_path_factory.mktemp("operations"), env=env) as server:
        yield Shared(server, f"http://127.0.0.1:{metrics_port}/metrics")


def test_health_is_serving_for_the_server_and_each_service(shared):
    serving = health_pb2.HealthCheckResponse.SERVING
    assert shared.server.health("") == serving
    for name in sorted(CLASSWIRE_SERVICES):
        assert shared.server.health(name) == serving, name
    with grpc.insecure_channel(shared.server.address) as channel:
        with pytest.raises(grpc.RpcError) as unknown:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="classwire.api.nope.v1.NopeService"),
                timeout=5,
            )
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


def test_reflection_lists_exactly_the_public_services(shared):
    with grpc.insecure_channel(shared.server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert services == CLASSWIRE_SERVICES | {HEALTH_SERVICE, REFLECTION_SERVICE}
        # The descriptors behind the names are served too, so a generic client can call them.
        pool = DescriptorPool(database)
        methods = pool.FindServiceByName("classwire.api.platform.v1.PlatformService").methods
        assert "GetTenant" in {m.name for m in methods}


needs_buf = pytest.mark.skipif(
    not BUF.exists(), reason="node_modules/.bin/buf is missing (run `make bootstrap`)"
)


def buf_curl(address: str, method: str | None, key: str | None = None, data: dict | None = None):
    """`buf curl` over gRPC with reflection; (exit status, parsed JSON from stdout or stderr)."""
    args = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    if key is not None:
        args += ["-H", f"authorization: Bearer {key}"]
    if data is not None:
        args += ["-d", json.dumps(data)]
    if method is None:
        args += ["--list-services", f"http://{address}"]
    else:
        args.append(f"http://{address}/{method}")
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    if method is None:
        return result.returncode, result.stdout.split()
    text_out = result.stdout if result.returncode == 0 else result.stderr
    try:
        return result.returncode, json.loads(text_out)
    except json.JSONDecodeError:
        raise AssertionError(
            f"buf curl printed no JSON: {result.stdout!r} {result.stderr!r}"
        ) from None


def error_reason(error: dict) -> str:
    for detail in error.get("details", []):
        if detail["type"] == "google.rpc.ErrorInfo":
            info = error_details_pb2.ErrorInfo()
            value = detail["value"]
            info.ParseFromString(base64.b64decode(value + "=" * (-len(value) % 4)))
            return info.reason
    return ""


@needs_buf
def test_buf_curl_lists_services_over_reflection(shared):
    status, services = buf_curl(shared.server.address, None)
    assert status == 0
    assert set(services) == CLASSWIRE_SERVICES | {HEALTH_SERVICE, REFLECTION_SERVICE}


@needs_buf
def test_buf_curl_with_and_without_a_key_and_across_tenants(shared):
    address, key = shared.server.address, shared.server.api_key
    with connect_sync(address, api_key=key) as channel:
        first_id = platform(channel).GetTenant(platform_api.GetTenantRequest()).tenant.id

    status, body = buf_curl(address, "classwire.api.platform.v1.PlatformService/GetTenant", key)
    assert status == 0, body
    assert body["tenant"]["id"] == first_id

    status, error = buf_curl(address, "classwire.api.platform.v1.PlatformService/GetTenant")
    assert status != 0
    assert error["code"] == "unauthenticated"

    # The bootstrap key has the operator scope: it creates a second tenant. The first tenant
    # owns a webhook endpoint and an API key.
    status, second = buf_curl(
        address,
        "classwire.api.platform.v1.PlatformService/CreateTenant",
        key,
        {"displayName": "Second school"},
    )
    assert status == 0, second
    second_key = second["adminApiKeySecret"]
    status, endpoint = buf_curl(
        address,
        "classwire.api.platform.v1.PlatformService/CreateWebhookEndpoint",
        key,
        {"endpoint": {"url": "https://example.com/first-tenant"}},
    )
    assert status == 0, endpoint
    endpoint_id = endpoint["endpoint"]["id"]
    status, api_key = buf_curl(
        address,
        "classwire.api.platform.v1.PlatformService/CreateApiKey",
        key,
        {"displayName": "first tenant reader", "scopes": ["platform:read"]},
    )
    assert status == 0, api_key
    api_key_id = api_key["apiKey"]["id"]

    cases = [
        ("GetWebhookEndpoint", endpoint_id, "whe_" + uuid.uuid4().hex),
        ("GetApiKey", api_key_id, "key_" + uuid.uuid4().hex),
    ]
    for method, owned_id, missing_id in cases:
        path = f"classwire.api.platform.v1.PlatformService/{method}"
        status, found = buf_curl(address, path, key, {"id": owned_id})
        assert status == 0, found
        # To the second tenant the first one's resource is NOT_FOUND, exactly like a missing one.
        status, foreign = buf_curl(address, path, second_key, {"id": owned_id})
        assert status != 0 and foreign["code"] == "not_found", foreign
        status, missing = buf_curl(address, path, second_key, {"id": missing_id})
        assert status != 0 and missing["code"] == "not_found", missing
        assert error_reason(foreign) == error_reason(missing) != ""
        assert foreign["message"].replace(owned_id, "ID") == missing["message"].replace(
            missing_id, "ID"
        )
    status, own = buf_curl(
        address, "classwire.api.platform.v1.PlatformService/GetTenant", second_key
    )
    assert status == 0 and own["tenant"]["id"] == second["tenant"]["id"] != first_id


def _samples(metrics_text: str, name: str) -> list:
    return [
        sample
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    ]


def test_metrics_and_the_canonical_log_line(shared):
    server = shared.server
    request_id = f"ops-{uuid.uuid4().hex}"
    with connect_sync(server.address, api_key=server.api_key) as channel:
        stub = platform(channel)
        tenant_id = stub.GetTenant(platform_api.GetTenantRequest()).tenant.id
        for _ in range(3):
            stub.GetTenant(platform_api.GetTenantRequest())
        stub.GetTenant(platform_api.GetTenantRequest(), metadata=(("x-request-id", request_id),))
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as denied:
            platform(channel).GetTenant(platform_api.GetTenantRequest(), timeout=10)
    assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED

    with urllib.request.urlopen(shared.metrics_url, timeout=10) as response:
        assert response.status == 200
        metrics_text = response.read().decode()
    counts = {
        (s.labels.get("method"), s.labels.get("code")): s.value
        for s in _samples(metrics_text, "classwire_rpc_total")
    }
    assert counts.get((GET_TENANT, "OK"), 0) >= 5, counts
    assert counts.get((GET_TENANT, "UNAUTHENTICATED"), 0) >= 1, counts
    histogram_count = [
        s.value
        for s in _samples(metrics_text, "classwire_rpc_duration_seconds_count")
        if s.labels.get("method") == GET_TENANT
    ]
    assert histogram_count and histogram_count[0] >= 6
    buckets = [
        s
        for s in _samples(metrics_text, "classwire_rpc_duration_seconds_bucket")
        if s.labels.get("method") == GET_TENANT
    ]
    assert any(s.labels["le"] == "+Inf" and s.value >= 6 for s in buckets)

    # One JSON line per RPC on stderr, carrying the caller's request id.
    deadline = time.monotonic() + 10
    while True:
        lines = [
            r
            for r in log_records(server)
            if r.get("event") == "rpc" and r.get("request_id") == request_id
        ]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["method"] == GET_TENANT
    assert line["tenant"] == tenant_id
    assert line["code"] == "OK"
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
    unauthenticated = [
        r
        for r in log_records(server)
        if r.get("event") == "rpc" and r.get("code") == "UNAUTHENTICATED"
    ]
    assert unauthenticated and unauthenticated[-1]["method"] == GET_TENANT
    assert unauthenticated[-1]["tenant"] == ""


# -- 7. A restart keeps the data ------------------------------------------------------------------


def test_restart_on_the_same_database_keeps_keys_and_webhooks(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    with fresh_database() as url:
        with subprocess_server(
            tmp_path, data_dir=data_dir, database_url=url, port=port, expect_api_key=True
        ) as first:
            bootstrap_key = first.api_key
            with connect_sync(first.address, api_key=bootstrap_key) as channel:
                stub = platform(channel)
                tenant_id = stub.GetTenant(platform_api.GetTenantRequest()).tenant.id
                created_key = stub.CreateApiKey(
                    platform_api.CreateApiKeyRequest(
                        display_name="kept across restarts", scopes=["platform:read"]
                    )
                )
                endpoint = stub.CreateWebhookEndpoint(
                    platform_api.CreateWebhookEndpointRequest(
                        endpoint=platform_pb.WebhookEndpoint(
                            url="https://example.com/kept", description="kept"
                        )
                    )
                ).endpoint
            assert first.stop() == 0, first.log()[-3000:]

        # The bootstrap key is printed only when the first tenant is created: not again.
        with subprocess_server(
            tmp_path, data_dir=data_dir, database_url=url, port=port, expect_api_key=False
        ) as second:
            assert second.api_key is None
            assert not any(BOOTSTRAP_PREFIX in line for line in second.stdout_lines)
            with connect_sync(second.address, api_key=bootstrap_key) as channel:
                stub = platform(channel)
                key = stub.GetApiKey(platform_api.GetApiKeyRequest(id=created_key.api_key.id))
                assert key.api_key.display_name == "kept across restarts"
                assert list(key.api_key.scopes) == ["platform:read"]
                got = stub.GetWebhookEndpoint(
                    platform_api.GetWebhookEndpointRequest(id=endpoint.id)
                ).endpoint
                assert (got.url, got.description) == ("https://example.com/kept", "kept")
                listed = stub.ListWebhookEndpoints(platform_api.ListWebhookEndpointsRequest())
                assert endpoint.id in {e.id for e in listed.endpoints}
            # Only the hash of the created key was stored, and it still authenticates.
            with connect_sync(second.address, api_key=created_key.secret) as channel:
                tenant = platform(channel).GetTenant(platform_api.GetTenantRequest()).tenant
                assert tenant.id == tenant_id
