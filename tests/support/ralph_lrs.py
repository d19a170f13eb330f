"""A real Learning Record Store for the tests: ralph's LRS with its fs backend (what
`ralph runserver -b fs` runs, here through ralph_app.py, which makes the backend append),
served by uvicorn on a free loopback port, storing statements as JSON Lines in a temporary
directory, with HTTP Basic credentials written by `ralph auth` into its own auth file.

`stop()` then `start()` keeps the port and the stored statements: the LRS was down, now it is
back.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

USERNAME = "classwire"
PASSWORD = "classwire-lrs-password"
HOME_PAGE = "https://lrs.classwire.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RalphLrs:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/xAPI"
        self.process: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "RALPH_APP_DIR": str(directory / "app"),
            "RALPH_AUTH_FILE": str(directory / "auth.json"),
            "RALPH_RUNSERVER_AUTH_BACKENDS": "basic",
            "RALPH_RUNSERVER_BACKEND": "fs",
            "RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH": str(directory / "statements"),
            "RALPH_BACKENDS__DATA__FS__DEFAULT_DIRECTORY_PATH": str(directory / "statements"),
        }
        (directory / "statements").mkdir(parents=True, exist_ok=True)
        self._ralph = str(Path(sys.executable).with_name("ralph"))
        subprocess.run(
            [
                self._ralph,
                "auth",
                "--username",
                USERNAME,
                "--password",
                PASSWORD,
                "--scope",
                "all",
                "--agent-ifi-account",
                USERNAME,
                HOME_PAGE,
                "--write-to-disk",
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )

    @property
    def options(self) -> dict:
        """The xapi_lrs provider options that reach this LRS."""
        return {"url": self.url, "username": USERNAME, "password": PASSWORD, "timeout": 5}

    async def start(self, timeout: float = 60.0) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "ralph_app:app",
                "--app-dir",
                str(Path(__file__).parent),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
            ],
            env=self.env,
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / "ralph.log", "ab"),
        )
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.process.poll() is not None:
                    log = (self.directory / "ralph.log").read_text(errors="replace")
                    raise RuntimeError(f"ralph exited: {log[-2000:]}")
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/__heartbeat__") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError("ralph did not start")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    async def statements(self, **params: str) -> list[dict]:
        """Every statement the LRS holds matching the xAPI query parameters, following `more`."""
        out: list[dict] = []
        auth = aiohttp.BasicAuth(USERNAME, PASSWORD)
        headers = {"X-Experience-API-Version": "1.0.3"}
        url = f"{self.url}/statements"
        query: dict | None = {"limit": "500", **params}
        async with aiohttp.ClientSession(auth=auth, headers=headers) as http:
            while url:
                async with http.get(url, params=query) as r:
                    assert r.status == 200, await r.text()
                    body = await r.json()
                out.extend(body["statements"])
                more = body.get("more") or ""
                url = f"http://127.0.0.1:{self.port}{more}" if more else ""
                query = None
        return out
