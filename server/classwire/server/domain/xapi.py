"""xAPI statements from the event log: the preview (ListXapiStatements), a push of a session or a
time range now (PushXapiStatements), the pinned mapping (GetXapiVerbMapping), and the statement
source the continuous pusher (events/xapi_push.py) reads.

Statements are never stored by classwire: they are rebuilt from the durable log whenever needed,
with ids derived from the events, so a preview, a push and a retried push all agree.

Settings come from the `[providers.xapi]` table: `home_page` (the actor accounts' homePage, with
`{tenant_id}` replaced; default `https://classwire.dev/tenants/{tenant_id}`) and
`continuous_push` (default true: with a Learning Record Store configured, every tenant's
statements are pushed as events commit).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import event_pb2

from ..events.catalogue import unwrap
from ..events.outbox import UnitOfWorkFactory
from ..plugins.manager import PluginManager, call_provider
from ..plugins.types import (
    ConfigError,
    LearningRecordStore,
    ProviderError,
    ProviderKind,
    StatementOutcome,
)
from ..store import xapi_repositories as repo
from ..store.engine import Database
from . import paging
from . import xapi_build as build
from . import xapi_vocab as vocab
from .auth import Principal
from .errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Violations,
)
from .idempotency import IdempotencyKey, _replay, run_idempotent
from .ids import new_id
from .platform import actor_of

KIND = ProviderKind.LEARNING_RECORD_STORE
MAX_PUSH_STATEMENTS = 100_000
MAX_FILTER_VALUES = 500
SCAN_BATCH = 500
CONTEXT_TYPES = (vocab.EV + "ParticipantJoined", vocab.EV + "PollCreated")


@dataclass(frozen=True)
class XapiSettings:
    home_page: str = vocab.DEFAULT_HOME_PAGE
    continuous_push: bool = True

    @classmethod
    def from_options(cls, options: dict) -> XapiSettings:
        unknown = sorted(set(options) - {"home_page", "continuous_push"})
        if unknown:
            raise ConfigError("providers.xapi", f"unknown options {unknown}")
        home = str(options.get("home_page", vocab.DEFAULT_HOME_PAGE))
        if not home.startswith(("http://", "https://")):
            raise ConfigError("providers.xapi.home_page", "must be an http(s) URL")
        return cls(home, bool(options.get("continuous_push", True)))


@dataclass
class PushFailure:
    statement_id: str
    reason: str
    message: str


@dataclass
class PushResult:
    push_id: str
    lrs: str
    statement_count: int = 0
    stored_count: int = 0
    already_stored_count: int = 0
    failed_count: int = 0
    failures: list[PushFailure] = field(default_factory=list)
    # Statements the LRS could not take now (temporary): the caller retries them.
    retryable: int = 0

    def add(self, other: PushResult) -> None:
        self.statement_count += other.statement_count
        self.stored_count += other.stored_count
        self.already_stored_count += other.already_stored_count
        self.failed_count += other.failed_count
        self.retryable += other.retryable
        self.failures.extend(other.failures[: max(0, 100 - len(self.failures))])


@dataclass(frozen=True)
class Scope:
    """Which events statements are built from."""

    session_ids: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None


class XapiDomain:
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        plugins: PluginManager,
        config,
    ) -> None:
        self.db = db
        self.uow = uow
        self.plugins = plugins
        self.config = config
        self.settings = XapiSettings.from_options(dict(config.provider_options.get("xapi", {})))
        self.default_lrs = config.providers.get(KIND.value, "")
        self._stores: dict[str, LearningRecordStore] = {}

    # -- providers ------------------------------------------------------------------------------

    async def store(self, name: str = "") -> tuple[str, LearningRecordStore]:
        """The LRS provider by registered name ('' for the configured default), started once."""
        name = name or self.default_lrs
        if not name:
            raise FailedPrecondition(
                "no Learning Record Store is configured (providers.learning_record_store)",
                reason="LRS_NOT_CONFIGURED",
            )
        if name in self._stores:
            return name, self._stores[name]
        if name not in self.plugins.names(KIND):
            raise NotFound(f"no Learning Record Store named {name!r}", reason="LRS_NOT_FOUND")
        if name != self.default_lrs and name not in self.config.provider_options:
            raise FailedPrecondition(
                f"the Learning Record Store {name!r} has no options ([providers.{name}])",
                reason="LRS_NOT_CONFIGURED",
            )
        provider = self.plugins.create(
            KIND,
            name,
            data_dir=self.config.data_dir,
            database_url=self.config.effective_database_url,
            options=self.config.provider_options.get(name, {}),
            key=self.config.provider_keys.get(KIND.value, f"providers.{KIND.value}"),
        )
        await provider.start()
        self._stores[name] = provider
        return name, provider

    async def close(self) -> None:
        for provider in self._stores.values():
            try:
                await provider.close()
            except Exception:  # noqa: BLE001 - closing one must not keep the others open
                pass
        self._stores.clear()

    # -- building -------------------------------------------------------------------------------

    def context(self, tenant_id: str) -> build.BuildContext:
        return build.BuildContext(tenant_id, build.home_page(self.settings.home_page, tenant_id))

    async def prepare(self, ctx: build.BuildContext, envelopes: list[event_pb2.Event]) -> None:
        """Loads what the envelopes' statements need that earlier events carried."""
        sessions = {e.session_id for e in envelopes if e.session_id}
        async with self.db.reader() as session:
            info = await repo.sessions_info(session, ctx.tenant_id, sessions - set(ctx.roots))
            for sid, (root, title, _) in info.items():
                ctx.roots[sid] = root
                ctx.titles[sid] = title
            unseen = sessions - ctx.loaded_sessions
            for payload in await repo.session_events_of_types(
                session, ctx.tenant_id, unseen, CONTEXT_TYPES
            ):
                envelope = event_pb2.Event.FromString(payload)
                inner = unwrap(envelope)
                if inner.DESCRIPTOR.name == "ParticipantJoined":
                    ctx.identities.setdefault(inner.participant_id, inner.identity)
                else:
                    ctx.polls.setdefault(inner.poll_id, build.poll_of(inner))
            ctx.loaded_sessions |= unseen
            wanted = {
                unwrap(e).session_id or e.session_id
                for e in envelopes
                if e.type == vocab.EV + "SessionReportReady"
            } - set(ctx.reports)
            for sid, content in (
                await repo.reports_by_session(session, ctx.tenant_id, wanted)
            ).items():
                ctx.reports[sid] = data_pb.SessionReport.FromString(content)

    async def statements(
        self, tenant_id: str, scope: Scope, after: int = 0, *, head: int | None = None
    ) -> AsyncIterator[tuple[int, list[build.Statement]]]:
        """(event sequence, its statements) in log order, for every mapped event after `after`
        in the scope (up to `head` when given)."""
        ctx = self.context(tenant_id)
        cursor = after
        while True:
            async with self.db.reader() as session:
                rows = await repo.events_page(
                    session,
                    tenant_id,
                    cursor,
                    SCAN_BATCH,
                    types=vocab.MAPPED_TYPES,
                    session_ids=scope.session_ids,
                    occur_from=scope.start,
                    occur_to=scope.end,
                )
            if head is not None:
                rows = [r for r in rows if r.sequence <= head]
            envelopes = [event_pb2.Event.FromString(r.payload) for r in rows]
            await self.prepare(ctx, envelopes)
            for envelope in envelopes:
                yield envelope.sequence, build.build(ctx, envelope)
            if len(rows) < SCAN_BATCH:
                return
            cursor = rows[-1].sequence

    # -- the API --------------------------------------------------------------------------------

    def mapping(self) -> list[vocab.MappingRow]:
        return list(vocab.MAPPING)

    async def _scope(
        self, principal: Principal, session_id: str, start: datetime | None, end: datetime | None
    ) -> Scope:
        problems = Violations()
        if not session_id and start is None and end is None:
            problems.add("session_id", "set session_id or time_range")
        if start is not None and end is not None and end <= start:
            problems.add("time_range.end_time", "must be after time_range.start_time")
        problems.raise_if_any()
        sessions: tuple[str, ...] = ()
        if session_id:
            async with self.db.reader() as session:
                tree = await repo.session_tree(session, principal.tenant_id, session_id)
            if tree is None:
                raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
            sessions = tuple(tree)
        return Scope(sessions, start, end)

    async def list_statements(
        self,
        principal: Principal,
        session_id: str,
        start: datetime | None,
        end: datetime | None,
        actor_identities: list[str],
        verb_ids: list[str],
        size: int,
        token: str,
    ) -> tuple[list[build.Statement], str]:
        principal.require("data:read")
        problems = Violations()
        for name, values in (("actor_identities", actor_identities), ("verb_ids", verb_ids)):
            if len(values) > MAX_FILTER_VALUES:
                problems.add(name, f"at most {MAX_FILTER_VALUES} values")
        known = {row.verb.id for row in vocab.MAPPING}
        for i, verb in enumerate(verb_ids):
            if verb not in known:
                problems.add(f"verb_ids[{i}]", f"not a verb of {vocab.MAPPING_VERSION}")
        problems.raise_if_any()
        limit = paging.page_size(size)
        scope = await self._scope(principal, session_id, start, end)
        fingerprint = {
            "s": session_id,
            "from": start.isoformat() if start else None,
            "to": end.isoformat() if end else None,
            "a": sorted(actor_identities),
            "v": sorted(verb_ids),
        }
        after, skip = 0, 0
        decoded = paging.decode(token, fingerprint)
        if decoded is not None:
            try:
                seq, _, index = decoded[1].partition(":")
                after, skip = int(seq) - 1, int(index)
            except ValueError:
                raise InvalidArgument(
                    FieldViolation("page_token", "not a page token from this list"),
                    reason="INVALID_PAGE_TOKEN",
                ) from None
        who, verbs = set(actor_identities), set(verb_ids)
        page: list[build.Statement] = []
        async for sequence, statements in self.statements(principal.tenant_id, scope, after):
            for index, statement in enumerate(statements):
                if sequence == after + 1 and index < skip:
                    continue
                if who and statement.actor_identity not in who:
                    continue
                if verbs and statement.verb_id not in verbs:
                    continue
                if len(page) == limit:
                    return page, paging.encode(
                        statement.occur_time, f"{sequence}:{index}", fingerprint
                    )
                page.append(statement)
        return page, ""

    async def push_scope(
        self, tenant_id: str, scope: Scope, lrs_name: str, *, after: int = 0
    ) -> PushResult:
        name, store = await self.store(lrs_name)
        result = PushResult(new_id("xps"), name)
        batch: list[build.Statement] = []
        async for _, statements in self.statements(tenant_id, scope, after):
            batch.extend(statements)
            while len(batch) >= store.max_batch:
                result.add(await self.send(name, store, batch[: store.max_batch]))
                batch = batch[store.max_batch :]
        if batch:
            result.add(await self.send(name, store, batch))
        return result

    async def send(
        self, name: str, store: LearningRecordStore, statements: list[build.Statement]
    ) -> PushResult:
        """One `store` call; counts the outcomes (FAILED ones also as `retryable`)."""
        out = PushResult("", name, statement_count=len(statements))
        try:
            results = await call_provider(
                KIND, name, "store", store.store, [s.body for s in statements]
            )
        except ProviderError as exc:
            out.failed_count = out.retryable = len(statements)
            out.failures = [
                PushFailure(s.statement_id, "LRS_UNAVAILABLE", str(exc)[:300])
                for s in statements[:100]
            ]
            return out
        for statement, outcome in zip(statements, results, strict=False):
            if outcome.outcome is StatementOutcome.STORED:
                out.stored_count += 1
            elif outcome.outcome is StatementOutcome.ALREADY_STORED:
                out.already_stored_count += 1
            else:
                out.failed_count += 1
                if outcome.outcome is StatementOutcome.FAILED:
                    out.retryable += 1
                if len(out.failures) < 100:
                    out.failures.append(
                        PushFailure(
                            statement.statement_id,
                            outcome.reason or "LRS_REJECTED",
                            outcome.detail[:300],
                        )
                    )
        missing = len(statements) - len(results)
        if missing > 0:  # a provider that answered short: treat the rest as not taken
            out.failed_count += missing
            out.retryable += missing
        return out

    async def push(
        self,
        principal: Principal,
        request_id: str,
        session_id: str,
        start: datetime | None,
        end: datetime | None,
        lrs: str,
    ) -> PushResult:
        principal.require("data:write")
        scope = await self._scope(principal, session_id, start, end)
        async with self.db.reader() as session:
            count = await repo.count_events(
                session,
                principal.tenant_id,
                types=vocab.MAPPED_TYPES,
                session_ids=scope.session_ids,
                occur_from=start,
                occur_to=end,
            )
        if count > MAX_PUSH_STATEMENTS:
            raise InvalidArgument(
                FieldViolation("time_range", f"more than {MAX_PUSH_STATEMENTS} statements"),
                reason="SCOPE_TOO_LARGE",
            )
        fingerprint = hashlib.sha256(
            json.dumps(
                [session_id, start and start.isoformat(), end and end.isoformat(), lrs]
            ).encode()
        ).hexdigest()
        key = IdempotencyKey(
            "PushXapiStatements", request_id, fingerprint, _encode_result, _decode_result
        )
        if request_id:
            # A retry answers from the record without pushing again.
            async with self.uow(principal.tenant_id) as uow:
                found, previous = await _replay(uow, key)
            if found:
                return previous
        result = await self.push_scope(principal.tenant_id, scope, lrs)
        if result.statement_count and result.retryable == result.statement_count:
            raise Unavailable(
                "the Learning Record Store did not answer; nothing is lost, retry",
                reason="LRS_UNAVAILABLE",
                metadata={"lrs": result.lrs},
            )

        async def body(uow) -> PushResult:
            event = dev.XapiStatementsPushed(
                push_id=result.push_id,
                lrs=result.lrs,
                mapping_version=vocab.MAPPING_VERSION,
                session_id=session_id,
                statement_count=result.statement_count,
                stored_count=result.stored_count,
                already_stored_count=result.already_stored_count,
                failed_count=result.failed_count,
            )
            if start is not None:
                event.range_start_time.FromDatetime(start)
            if end is not None:
                event.range_end_time.FromDatetime(end)
            uow.emit(event, session_id=session_id or None)
            return result

        return await run_idempotent(
            lambda: self.uow(principal.tenant_id, actor_of(principal)), key, body
        )


def _encode_result(result: PushResult) -> bytes:
    data = {**result.__dict__, "failures": [f.__dict__ for f in result.failures]}
    return json.dumps(data).encode()


def _decode_result(raw: bytes) -> PushResult:
    data = json.loads(raw)
    data["failures"] = [PushFailure(**f) for f in data.get("failures", [])]
    return PushResult(**data)


def statement_json(statement: build.Statement) -> str:
    return statement.to_json()


def mapping_row_proto(row: vocab.MappingRow) -> data_pb.XapiVerbMapping:
    return data_pb.XapiVerbMapping(
        event_type=row.event_type,
        condition=row.condition,
        verb_id=row.verb.id,
        verb_display=row.verb.display,
        object_activity_type=row.object_type,
    )


__all__ = ["PushResult", "Scope", "XapiDomain", "XapiSettings"]
