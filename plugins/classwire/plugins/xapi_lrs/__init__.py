"""A Learning Record Store reached over the xAPI 1.0.3 HTTP interface (`POST /statements`,
`GET /statements?statementId=`), for example ralph, Learning Locker, SQL LRS or Veracity.

Each batch is one POST. The LRS answers with the ids it stored (200), or 204 when it already held
every statement; ids missing from a 200 answer were already held (an LRS ignores a statement whose
id it holds with the same content). A batch refused as a whole (400, 409) is retried statement by
statement, so one bad statement costs only itself: 409 is a conflict (a different statement holds
the id), 400 a rejected statement. 408, 429, 5xx and no answer are temporary (FAILED); 401 and 403
are FAILED with reason ``LRS_UNAUTHORIZED`` (fix the credentials; the statements wait).

Options (``[providers.xapi_lrs]``):

- ``url`` (required): the xAPI endpoint, for example ``https://lrs.example.com/xAPI``;
- ``username`` and ``password``: HTTP Basic credentials, or ``headers`` (a token header);
- ``timeout`` in seconds (default 10); ``batch_size`` (default 100, at most 1000).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import (
    LearningRecordStore,
    ProviderContext,
    ProviderError,
    StatementOutcome,
    StatementResult,
)

__all__ = ["HttpLearningRecordStore", "classwire_register_learning_record_stores"]

OPTIONS = {"url", "username", "password", "headers", "timeout", "batch_size"}
XAPI_VERSION_HEADER = "X-Experience-API-Version"
_TEMPORARY = {408, 425, 429}


class HttpLearningRecordStore(LearningRecordStore):
    def __init__(
        self,
        *,
        url: str,
        username: str = "",
        password: str = "",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        batch_size: int = 100,
    ) -> None:
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if bool(username) != bool(password):
            raise ValueError("set both username and password, or neither")
        if float(timeout) <= 0:
            raise ValueError("timeout must be positive")
        if not 1 <= int(batch_size) <= 1000:
            raise ValueError("batch_size must be between 1 and 1000")
        self.url = url.rstrip("/")
        self.headers = {**dict(headers or {}), XAPI_VERSION_HEADER: "1.0.3"}
        if username:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        self.timeout = float(timeout)
        self.max_batch = int(batch_size)
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={**self.headers, "user-agent": "classwire-xapi/1"},
            )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _request(self, method: str, path: str, **kw) -> tuple[int, str]:
        await self.start()
        assert self._http is not None
        async with self._http.request(
            method, f"{self.url}{path}", allow_redirects=False, **kw
        ) as response:
            return response.status, await response.text()

    async def store(self, statements: Sequence[Mapping[str, Any]]) -> Sequence[StatementResult]:
        if not statements:
            return []
        ids = [str(s.get("id", "")) for s in statements]
        try:
            status, text = await self._request("POST", "/statements", json=list(statements))
        except TimeoutError:
            return _all(ids, StatementOutcome.FAILED, "LRS_UNAVAILABLE", "the LRS did not answer")
        except aiohttp.ClientError as exc:
            detail = f"{type(exc).__name__}: {exc}"[:300]
            return _all(ids, StatementOutcome.FAILED, "LRS_UNAVAILABLE", detail)
        if status == 204:
            return _all(ids, StatementOutcome.ALREADY_STORED)
        if status == 200:
            try:
                stored = set(json.loads(text))
            except (ValueError, TypeError):
                stored = set(ids)
            return [
                StatementResult(
                    i,
                    StatementOutcome.STORED if i in stored else StatementOutcome.ALREADY_STORED,
                )
                for i in ids
            ]
        detail = f"HTTP {status}: {text[:300]}"
        if status in (400, 409) and len(statements) > 1:
            results: list[StatementResult] = []
            for statement in statements:
                results.extend(await self.store([statement]))
            return results
        if status == 409:
            return _all(ids, StatementOutcome.REJECTED, "LRS_CONFLICT", detail)
        if status in (401, 403):
            return _all(ids, StatementOutcome.FAILED, "LRS_UNAUTHORIZED", detail)
        if status in _TEMPORARY or status >= 500:
            return _all(ids, StatementOutcome.FAILED, "LRS_UNAVAILABLE", detail)
        return _all(ids, StatementOutcome.REJECTED, "LRS_REJECTED", detail)

    async def get(self, statement_id: str) -> Mapping[str, Any] | None:
        try:
            status, text = await self._request(
                "GET", "/statements", params={"statementId": statement_id}
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ProviderError("learning_record_store", "xapi_lrs", "get", str(exc)) from exc
        if status == 404:
            return None
        if status != 200:
            raise ProviderError(
                "learning_record_store", "xapi_lrs", "get", f"HTTP {status}: {text[:300]}"
            )
        body = json.loads(text)
        if isinstance(body, dict) and isinstance(body.get("statements"), list):
            # Some LRSs (ralph) answer a statementId query with a StatementResult.
            found = [s for s in body["statements"] if s.get("id") == statement_id]
            return found[0] if found else None
        return body


def _all(
    ids: Sequence[str], outcome: StatementOutcome, reason: str = "", detail: str = ""
) -> list[StatementResult]:
    return [StatementResult(i, outcome, reason, detail) for i in ids]


def _factory(context: ProviderContext) -> HttpLearningRecordStore:
    unknown = sorted(set(context.options) - OPTIONS)
    if unknown:
        raise ValueError(f"unknown options {unknown}; known: {sorted(OPTIONS)}")
    return HttpLearningRecordStore(**dict(context.options))


@hookimpl
def classwire_register_learning_record_stores(register) -> None:
    register(
        "xapi_lrs",
        _factory,
        description="an xAPI 1.0.3 Learning Record Store over HTTP (ralph, Learning Locker, ...)",
    )
