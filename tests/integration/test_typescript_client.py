"""The TypeScript example (generated protobuf-es code, @connectrpc/connect-node gRPC transport)
against the in-process server: a Node client calls classwire as a partner's service would."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

TS_DIR = Path(__file__).resolve().parents[2] / "clients" / "typescript"
EXAMPLE_JS = TS_DIR / "dist" / "examples" / "get-tenant.js"
TSC = TS_DIR / "node_modules" / "typescript" / "bin" / "tsc"

pytestmark = [
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (TS_DIR / "node_modules").is_dir(),
        reason="TypeScript dependencies missing: run `npm ci --prefix clients/typescript`",
    ),
]


def _stale() -> bool:
    """Whether dist/ is missing or older than any source it is compiled from."""
    if not EXAMPLE_JS.exists():
        return True
    built = EXAMPLE_JS.stat().st_mtime
    sources = [TS_DIR / "tsconfig.json", TS_DIR / "package-lock.json"]
    for folder in ("src", "examples"):
        sources.extend((TS_DIR / folder).rglob("*.ts"))
    return any(path.stat().st_mtime > built for path in sources)


async def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, str, str]:
    # A child process through asyncio, so the in-process server on this loop keeps answering.
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=TS_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, stdout.decode(), stderr.decode()


async def _build() -> None:
    if not _stale():
        return
    code, out, err = await _run("node", str(TSC), "-p", "tsconfig.json")
    assert code == 0, f"tsc failed:\n{out}\n{err}"


async def test_typescript_example_calls_the_server(server):
    await _build()
    env = {
        **os.environ,
        "CLASSWIRE_ADDRESS": server.address,
        "CLASSWIRE_API_KEY": server.api_key,
    }
    code, out, err = await _run("node", str(EXAMPLE_JS), env=env, timeout=60)
    assert code == 0, f"the example failed ({code}):\n{out}\n{err}"
    result = json.loads(out.strip().splitlines()[-1])

    assert result["tenantId"] == server.tenant_id

    error = result["invalidScope"]
    assert error["code"] == "invalid_argument"
    assert error["domain"] == "classwire.dev"
    assert error["reason"]
    assert error["fieldViolations"] == [
        {"field": "scopes[0]", "description": error["fieldViolations"][0]["description"]}
    ]
    assert "not-a-scope" in error["fieldViolations"][0]["description"]
    assert error["detailTypes"] == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]
    assert error["requestId"]


async def test_typescript_example_without_valid_key_fails(server):
    await _build()
    env = {**os.environ, "CLASSWIRE_ADDRESS": server.address, "CLASSWIRE_API_KEY": "cw.key_0.wrong"}
    code, out, err = await _run("node", str(EXAMPLE_JS), env=env, timeout=60)
    # GetTenant is rejected before anything is printed; Node reports the ConnectError.
    assert code != 0
    assert out.strip() == ""
    assert "unauthenticated" in err
