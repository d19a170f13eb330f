"""Starts a real Janus (the Debian ``janus`` package) for tests, bound to loopback.

Janus gets a configuration directory of its own, generated in a temporary directory: the core
(``janus.jcfg``), the VideoRoom plugin and the HTTP transport with its Admin API, each on a free
loopback port; every other plugin, transport, logger and event handler is disabled, and ICE
gathers loopback candidates only, so media never leaves the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

JANUS_BINARY = "/usr/bin/janus"

PLUGINS_KEPT = {"libjanus_videoroom.so"}
TRANSPORTS_KEPT = {"libjanus_http.so"}


def janus_available() -> bool:
    return Path(JANUS_BINARY).exists()


def _module_dir(kind: str) -> Path:
    """Where the package put its ``kind`` modules (plugins, transports, ...), from ``dpkg -L``."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "janus"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        listing = []
    for line in listing:
        path = Path(line)
        if path.parent.name == kind and path.parent.parent.name == "janus" and path.suffix == ".so":
            return path.parent
    for base in ("/usr/lib/x86_64-linux-gnu/janus", "/usr/lib/aarch64-linux-gnu/janus"):
        if Path(base, kind).is_dir():
            return Path(base, kind)
    raise RuntimeError(f"cannot find Janus's {kind} directory")


def _others(directory: Path, kept: set[str]) -> str:
    if not directory.is_dir():
        return ""
    return ",".join(sorted(p.name for p in directory.glob("*.so") if p.name not in kept))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class JanusServer:
    url: str
    admin_url: str
    admin_secret: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _write_config(conf: Path, http_port: int, admin_port: int, admin_secret: str) -> None:
    plugins = _module_dir("plugins")
    transports = _module_dir("transports")
    events, loggers = plugins.parent / "events", plugins.parent / "loggers"
    (conf / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{conf}"
    plugins_folder = "{plugins}"
    transports_folder = "{transports}"
    events_folder = "{events}"
    loggers_folder = "{loggers}"
    debug_level = 4
    debug_timestamps = true
    admin_secret = "{admin_secret}"
    session_timeout = 60
    server_name = "classwire-test"
    protected_folders = ["/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/sbin", "/sys", "/usr"]
}}
certificates: {{
}}
media: {{
    rtp_port_range = "20000-60000"
    no_media_timer = 2
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "127.0.0.1"
    ice_ignore_list = "vmnet"
    ignore_mdns = true
}}
plugins: {{
    disable = "{_others(plugins, PLUGINS_KEPT)}"
}}
transports: {{
    disable = "{_others(transports, TRANSPORTS_KEPT)}"
}}
loggers: {{
    disable = "{_others(loggers, set())}"
}}
events: {{
    broadcast = false
    disable = "{_others(events, set())}"
}}
"""
    )
    (conf / "janus.transport.http.jcfg").write_text(
        f"""general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    port = {http_port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_base_path = "/admin"
    admin_http = true
    admin_port = {admin_port}
    admin_ip = "127.0.0.1"
    admin_https = false
}}
cors: {{
}}
"""
    )
    # No static rooms: the provider creates one per classwire room.
    (conf / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")


@contextlib.contextmanager
def run_janus(workdir: Path, *, startup_timeout: float = 20.0) -> Iterator[JanusServer]:
    """Run Janus until the block ends; ``url`` answers the Janus HTTP API."""
    conf = workdir / "janus-conf"
    conf.mkdir(parents=True, exist_ok=True)
    http_port, admin_port = _free_port(), _free_port()
    admin_secret = secrets.token_hex(8)
    _write_config(conf, http_port, admin_port, admin_secret)
    log_path = workdir / "janus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [JANUS_BINARY, "--configs-folder", str(conf), "--disable-colors"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = JanusServer(
        url=f"http://127.0.0.1:{http_port}/janus",
        admin_url=f"http://127.0.0.1:{admin_port}/admin",
        admin_secret=admin_secret,
        process=process,
        log_path=log_path,
    )
    try:
        _wait_ready(server, startup_timeout)
        yield server
    finally:
        died = process.poll()
        _stop(process)
        if died is not None:
            # Janus exited under the tests' feet: its own last words are the diagnosis.
            tail = server.log()[-6000:]
            sys.stderr.write(f"janus exited with {died} during the tests:\n{tail}\n")


def _wait_ready(server: JanusServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    body = json.dumps({"janus": "info", "transaction": "ready"}).encode()
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"janus exited with {server.process.returncode}:\n{server.log()}")
        try:
            request = urllib.request.Request(server.url, data=body, method="POST")
            with urllib.request.urlopen(request, timeout=1) as response:
                info = json.loads(response.read())
            if info.get("janus") == "server_info" and "janus.plugin.videoroom" in info.get(
                "plugins", {}
            ):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"janus did not answer within {timeout} s:\n{server.log()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def janus_missing_reason() -> str | None:
    if janus_available():
        return None
    hint = "apt-get install janus" if shutil.which("apt-get") else "install the janus package"
    return f"{JANUS_BINARY} is not installed ({hint})"


def backend_settings(backend: str, workdir: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    """Configuration overrides that make a test server use media backend ``backend``; for Janus,
    a real Janus on loopback (stopped when ``stack`` closes) named in a configuration file's
    provider options. Skips the test when Janus is not installed."""
    if backend != "janus":
        return {"CLASSWIRE_PROVIDER_MEDIA_BACKEND": backend}
    if (reason := janus_missing_reason()) is not None:
        pytest.skip(reason)
    janus = stack.enter_context(run_janus(workdir / "janus"))
    config_file = workdir / "classwire.toml"
    config_file.write_text(
        f"""[providers]
media_backend = "janus"

[providers.janus]
url = "{janus.url}"
admin_url = "{janus.admin_url}"
admin_secret = "{janus.admin_secret}"
"""
    )
    return {"CLASSWIRE_CONFIG": str(config_file)}
