"""`classwire serve` in a child process, for tests that need a real process boundary: blocking
clients (a sync channel cannot call a server on the test's own event loop), SIGTERM drains,
restarts against the same data.

    with subprocess_server(tmp_path) as server:
        channel = connect_sync(server.address, api_key=server.api_key)

The database is SQLite in the data directory, or a fresh PostgreSQL database when
CLASSWIRE_TEST_POSTGRES_URL is set, exactly as for the in-process `server` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

POSTGRES_URL = os.environ.get("CLASSWIRE_TEST_POSTGRES_URL", "")
BOOTSTRAP_PREFIX = "export CLASSWIRE_API_KEY="


def free_port() -> int:
    """A port that was free a moment ago. The server cannot report the port it bound for
    `:0` before the bootstrap banner (and never on a restart), so the test picks one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_thread(coro_fn):
    # asyncpg is async-only and the caller may be inside a running event loop (an async test),
    # where asyncio.run() is refused: run it on a loop of its own in another thread.
    result: list = []

    def run() -> None:
        result.append(asyncio.run(coro_fn()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError("database set-up failed (see the thread's traceback above)")
    return result[0]


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def create_postgres_database() -> tuple[str, callable]:
    """A fresh database next to CLASSWIRE_TEST_POSTGRES_URL, and a function that drops it."""
    import asyncpg

    name = f"classwire_test_{uuid.uuid4().hex[:12]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    _in_thread(lambda: execute(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_URL.rpartition("/")[0]
    return f"{base}/{name}", lambda: _in_thread(
        lambda: execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    )


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A database URL for one or more server runs, dropped at exit: a new PostgreSQL database
    when CLASSWIRE_TEST_POSTGRES_URL is set, else "" (the default SQLite file in the data dir).

    Hold it around several `subprocess_server` runs to restart a server on the same data.
    """
    if not POSTGRES_URL:
        yield ""
        return
    url, drop = create_postgres_database()
    try:
        yield url
    finally:
        drop()


@dataclass
class SubprocessServer:
    address: str
    # The bootstrap tenant's admin+operator key; None when the database already had a tenant
    # (a restart) or no key was expected, since the server prints it only on creating that tenant.
    api_key: str | None
    process: subprocess.Popen
    data_dir: Path
    database_url: str  # empty: the default SQLite file in data_dir
    port: int
    log_path: Path  # the server's stderr (structlog JSON lines)
    stdout_lines: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self, service: str = "", timeout: float = 2.0) -> int:
        """The grpc.health.v1 status of `service` ("" for the server as a whole)."""
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            ).status

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Sends `sig` and waits for the exit (killing it after `timeout`); the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _read_stdout(
    process: subprocess.Popen, lines: list[str], key_seen: threading.Event, key: list[str]
) -> None:
    # Drain stdout for the whole life of the process, so a full pipe can never block the server.
    for line in process.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        stripped = line.strip()
        if stripped.startswith(BOOTSTRAP_PREFIX) and not key:
            key.append(stripped.removeprefix(BOOTSTRAP_PREFIX))
            key_seen.set()


@contextlib.contextmanager
def subprocess_server(
    tmp: Path,
    *,
    port: int | None = None,
    data_dir: Path | None = None,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
    expect_api_key: bool | None = None,
    startup_timeout: float = 60.0,
    stop_timeout: float = 30.0,
) -> Iterator[SubprocessServer]:
    """Starts `classwire serve`, waits until health says SERVING (and for the bootstrap key when
    one is expected), yields it, and stops it with SIGTERM at exit (if the test has not).

    Without `database_url` the run gets a fresh database of its own, dropped at exit, and waits
    for the bootstrap key. To restart on the same data, hold a `fresh_database()` around the
    runs and pass its URL and the same `data_dir` to each (and `port` to keep the address); the
    server prints a key only on the run that creates the first tenant, so pass
    `expect_api_key=True` to the first run (later runs get `api_key` None). `env` adds or
    overrides CLASSWIRE_* settings.
    """
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    if expect_api_key is None:
        expect_api_key = database_url is None
    drop = None
    if database_url is None:
        database_url = ""
        if POSTGRES_URL:
            database_url, drop = create_postgres_database()
    data_dir = Path(data_dir) if data_dir is not None else tmp / f"data-{uuid.uuid4().hex[:8]}"
    port = port or free_port()
    address = f"127.0.0.1:{port}"

    # Only the settings given here: a developer's own CLASSWIRE_* variables must not leak in.
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSWIRE_")}
    child_env.update(
        {
            "CLASSWIRE_LISTEN": address,
            "CLASSWIRE_DATA_DIR": str(data_dir),
            "CLASSWIRE_METRICS_LISTEN": "",
            "CLASSWIRE_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if database_url:
        child_env["CLASSWIRE_DATABASE_URL"] = database_url
    child_env.update(env or {})

    log_path = tmp / f"server-{port}-{uuid.uuid4().hex[:6]}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [sys.executable, "-m", "classwire.server.cli", "serve"],
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
    )
    lines: list[str] = []
    key: list[str] = []
    key_seen = threading.Event()
    reader = threading.Thread(
        target=_read_stdout, args=(process, lines, key_seen, key), daemon=True
    )
    reader.start()
    running = SubprocessServer(
        address=address,
        api_key=None,
        process=process,
        data_dir=data_dir,
        database_url=database_url,
        port=port,
        log_path=log_path,
        stdout_lines=lines,
    )
    try:
        _wait_until_serving(running, startup_timeout)
        bootstrap = child_env.get("CLASSWIRE_BOOTSTRAP", "true").strip().lower()
        # Health turns SERVING before the banner is printed; give the banner a moment.
        expect_key = expect_api_key and bootstrap not in ("false", "0", "no", "off")
        if expect_key and not key_seen.wait(startup_timeout):
            raise RuntimeError(
                "the server never printed its bootstrap API key\nstdout:\n"
                + "\n".join(lines)
                + "\nlog:\n"
                + running.log()[-4000:]
            )
        running.api_key = key[0] if key else None
        yield running
    finally:
        running.stop(timeout=stop_timeout)
        reader.join(5)
        log_file.close()
        if drop is not None:
            drop()


def _wait_until_serving(running: SubprocessServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(
                f"the server exited with status {running.process.returncode} before serving\n"
                + running.log()[-4000:]
            )
        try:
            if running.health(timeout=1.0) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError as exc:  # not listening yet
            last_error = exc
        time.sleep(0.1)
    raise TimeoutError(
        f"the server at {running.address} was not SERVING within {timeout} s ({last_error})\n"
        + running.log()[-4000:]
    )
