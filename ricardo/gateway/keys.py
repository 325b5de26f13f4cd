"""Client API keys, as LiteLLM's virtual keys: who is calling /v1, how fast they may call, what they may spend.

A key (`sk-rc-` and 256 random bits) is shown once, when it is made; the store keeps its SHA-256 digest, its
name and limits. A fast hash is enough for a secret of 256 random bits (nobody can search that space, which is
what a slow hash like scrypt guards against for passwords), and it costs a microsecond on the request path where
scrypt would cost milliseconds. A request's key is found by its digest, which is then compared in constant time.

Per key, across replicas (the counters live in the store): requests per second (a moving window: a refused
request takes no slot), tokens per minute (a fixed window, checked before a request and charged after it with
its actual tokens: a burst of concurrent requests can overrun the minute's limit by their own tokens, as
LiteLLM's can; nothing is charged in advance) and dollars per UTC day (the cost `ricardo_cost_usd` counts,
added to the key's day in the store after each request; a request already running when the budget runs out
finishes).

A key may carry a priority (0-2) for admission control (policies/admission.py): the priority its requests run at,
and the most an `x-priority` header sent with it may claim. A client can lower its own priority, never raise it
past what its key allows: the header alone is unauthenticated.

While the store is down, requests are neither failed nor stalled: keys are checked against this replica's last
copy (refreshed every second), rate limits count on this replica alone, and spend accrues locally, counts in
this replica's budget checks and is written to the store once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from pydantic import BaseModel, ConfigDict, Field

from ricardo.gateway.metrics import GatewayMetrics
from ricardo.gateway.shaping import PRIORITY_GRANT
from ricardo.gateway.store import StateStore, StoreUnavailable
from ricardo.protocol.openai import OpenAIError

log = logging.getLogger("ricardo.gateway.keys")

KEY_PREFIX = "sk-rc-"
SHOWN_CHARACTERS = 12  # the prefix kept to tell keys apart: "sk-rc-" and 6 of the 43 random characters
REFRESH_INTERVAL_S = 1.0
FLUSH_RETRY_S = 1.0


class KeyBody(BaseModel):
    """A new key's name and limits (each optional: no limit)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    requests_per_second: int | None = Field(default=None, ge=1, le=1_000_000)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=10**12)
    budget_usd_per_day: float | None = Field(default=None, ge=0, le=10**9)
    priority: int = Field(
        default=0, ge=0, le=2, description="admission priority of the key's requests, and the most x-priority may ask"
    )


@dataclass(frozen=True)
class ClientKey:
    id: str
    name: str
    digest: str
    prefix: str
    created: float
    requests_per_second: int | None = None
    tokens_per_minute: int | None = None
    budget_usd_per_day: float | None = None
    priority: int = 0  # records made before keys had priorities have none: 0

    @classmethod
    def from_record(cls, record: dict) -> ClientKey:
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})

    def record(self) -> dict:
        return dict(self.__dict__)

    def limits(self) -> dict:
        return {
            "requests_per_second": self.requests_per_second,
            "tokens_per_minute": self.tokens_per_minute,
            "budget_usd_per_day": self.budget_usd_per_day,
        }


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


def seconds_to_midnight() -> int:
    now = datetime.datetime.now(datetime.UTC)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()) + 1)


def too_many(message: str, type_: str, code: str, retry_after: float) -> OpenAIError:
    """OpenAI's 429s: type "requests" or "tokens" with code rate_limit_exceeded, or insufficient_quota."""
    return OpenAIError(429, message, type_, code=code, headers={"Retry-After": str(max(1, round(retry_after)))})


class KeyRing:
    """This replica's view of the client keys, and the checks and accounting of the requests made with them."""

    def __init__(self, store: StateStore, metrics: GatewayMetrics, required: bool):
        self.store = store
        self.metrics = metrics
        self.required = required
        self._by_digest: dict[str, ClientKey] = {}
        self._pending_spend: dict[str, dict[str, float]] = {}  # not yet sent to the store: day -> key id -> $
        # sent, with no reply yet (the store may have added them): (batch, day, amounts), sent again as they are, the
        # store adding each batch of this writer once
        self._unsent: list[tuple[int, str, dict[str, float]]] = []
        self._writer, self._batches = secrets.token_hex(8), itertools.count(1)
        self._pending_tokens: dict[str, int] = {}  # not yet counted: key id -> tokens
        self._flush_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._refresh_forever()), asyncio.create_task(self._flush_forever())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(StoreUnavailable):
            await self._flush()  # what this replica spent is not lost at a restart, unless the store is down

    async def refresh(self) -> None:
        keys = (ClientKey.from_record(r) for r in (await self.store.read_keys()).values())
        self._by_digest = {k.digest: k for k in keys}

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            try:
                await self.refresh()
            except Exception:  # a malformed record must not end the loop
                log.exception("reading the client keys failed")

    # -- admin ---------------------------------------------------------------------------------
    async def create(self, body: KeyBody) -> tuple[ClientKey, str]:
        """A new key: its record and the key itself (returned this once, stored nowhere)."""
        plain = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ClientKey(
            id="key-" + secrets.token_hex(6),
            name=body.name,
            digest=digest(plain),
            prefix=plain[:SHOWN_CHARACTERS],
            created=time.time(),
            requests_per_second=body.requests_per_second,
            tokens_per_minute=body.tokens_per_minute,
            budget_usd_per_day=body.budget_usd_per_day,
            priority=body.priority,
        )
        await self.store.put_key(key.id, key.record())
        self._by_digest[key.digest] = key
        return key, plain

    async def revoke(self, key_id: str) -> bool:
        removed = await self.store.delete_key(key_id)
        self._by_digest = {d: k for d, k in self._by_digest.items() if k.id != key_id}
        return removed

    async def describe(self) -> list[dict]:
        await self.refresh()
        spend = await self.spend_today()
        return [
            {
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "created": k.created,
                **k.limits(),
                "priority": k.priority,
                "spend_today_usd": spend.get(k.id, 0.0),
            }
            for k in sorted(self._by_digest.values(), key=lambda k: k.created)
        ]

    async def spend_today(self, key_id: str | None = None) -> dict[str, float]:
        """Each key's spend today across replicas (`key_id`'s alone if given), with what this replica has not written
        yet."""
        day = today()
        spend = await self.store.read_spend(day, key_id)
        # a batch whose reply was lost may be in the store already: counted twice here until it is sent again (a
        # budget refuses a little early, never late)
        waiting = [amounts for _, when, amounts in self._unsent if when == day] + [self._pending_spend.get(day, {})]
        for amounts in waiting:
            for waiting_id, usd in amounts.items():
                if key_id is None or waiting_id == key_id:
                    spend[waiting_id] = spend.get(waiting_id, 0.0) + usd
        return spend

    # -- the request path ----------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> ClientKey | None:
        """The request's key, or None where keys are optional and the request shows none of ours (clients send
        placeholder keys). A key of ours that is not known (revoked, mistyped) is refused either way. Raises 401."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given.strip()
        key = None
        ours = scheme.lower() == "bearer" and given.isascii() and given.startswith(KEY_PREFIX)
        if ours:
            presented = digest(given)
            found = self._by_digest.get(presented)
            # found by its digest; comparing the digests in constant time as well costs nothing
            if found is not None and hmac.compare_digest(found.digest, presented):
                key = found
        if key is None and (self.required or ours):
            self.metrics.key_refusals.labels("-", "invalid_api_key").inc()
            raise OpenAIError(
                401,
                "Incorrect API key provided, or none: this gateway needs a key made with POST /admin/keys.",
                "invalid_request_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return key

    async def admit(self, request: web.Request) -> ClientKey | None:
        """Authenticate, then check the key's budget, tokens and request rate; raise 401 or 429. Grants the
        request its key's priority (`request[PRIORITY_GRANT]`, which the shaper reads)."""
        key = self.authenticate(request)
        if key is None:
            return key
        request[PRIORITY_GRANT] = key.priority
        tokens = RateLimitItemPerMinute(key.tokens_per_minute) if key.tokens_per_minute is not None else None
        reads: dict[str, Awaitable[Any]] = {}
        if key.budget_usd_per_day is not None:
            reads["spend"] = self.spend_today(key.id)
        if tokens is not None:
            reads["tokens"] = self.store.rate_limit(lambda limiters: limiters.fixed.test(tokens, key.id))
        read = await _at_once(reads)  # a slow store answering costs one round trip here, not one per check
        if key.budget_usd_per_day is not None and read["spend"].get(key.id, 0.0) >= key.budget_usd_per_day:
            self._refused(key, "budget")
            raise too_many(
                f"key {key.name} has spent its budget of ${key.budget_usd_per_day:g} for today (UTC)",
                "insufficient_quota",
                "insufficient_quota",
                seconds_to_midnight(),
            )
        if tokens is not None and not read["tokens"]:
            stats = await self.store.rate_limit(lambda limiters: limiters.fixed.get_window_stats(tokens, key.id))
            self._refused(key, "tokens")
            raise too_many(
                f"key {key.name} has used its {key.tokens_per_minute} tokens per minute",
                "tokens",
                "rate_limit_exceeded",
                stats.reset_time - time.time(),
            )
        if key.requests_per_second is not None:
            rate = RateLimitItemPerSecond(key.requests_per_second)
            if not await self.store.rate_limit(lambda limiters: limiters.moving.hit(rate, key.id)):
                self._refused(key, "requests")
                raise too_many(
                    f"key {key.name} is limited to {key.requests_per_second} requests per second",
                    "requests",
                    "rate_limit_exceeded",
                    1,
                )
        return key

    def _refused(self, key: ClientKey, reason: str) -> None:
        self.metrics.key_refusals.labels(key.id, reason).inc()

    def charge(self, key: ClientKey, usd: float, tokens: int) -> None:
        """Account a finished request to its key (written to the store by the flush task)."""
        self.metrics.key_spend.labels(key.id, key.name).inc(usd)
        day = self._pending_spend.setdefault(today(), {})
        day[key.id] = day.get(key.id, 0.0) + usd
        if key.tokens_per_minute is not None:
            self._pending_tokens[key.id] = self._pending_tokens.get(key.id, 0) + tokens
        self._flush_wanted.set()

    async def _flush_forever(self) -> None:
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            try:
                await self._flush()
            except StoreUnavailable:
                await asyncio.sleep(FLUSH_RETRY_S)  # kept; tried again when the breaker lets a call through
                self._flush_wanted.set()
            except Exception:
                log.exception("writing key spend failed")

    async def _count_tokens(self, item: RateLimitItemPerMinute, key_id: str, count: int) -> None:
        await self.store.rate_limit(lambda limiters: limiters.fixed.hit(item, key_id, cost=count))

    async def _flush(self) -> None:
        tokens, self._pending_tokens = self._pending_tokens, {}
        limits = {k.id: k.tokens_per_minute for k in self._by_digest.values()}
        for key_id, count in tokens.items():  # never raises: counted on this replica while the store is down
            limit = limits.get(key_id)
            if limit:
                await self._count_tokens(RateLimitItemPerMinute(limit), key_id, count)
        pending, self._pending_spend = self._pending_spend, {}
        for day, amounts in pending.items():
            # Only the first batch may have reached the store: those behind it were never sent, so what accrued
            # since joins the day's one there. An outage keeps a batch or two per day, not one per flush (every
            # second), each summed by every budget check and sent one by one once the store is back.
            waiting = next((unsent for _, when, unsent in self._unsent[1:] if when == day), None)
            if waiting is None:
                self._unsent.append((next(self._batches), day, amounts))
            else:
                for key_id, usd in amounts.items():
                    waiting[key_id] = waiting.get(key_id, 0.0) + usd
        while self._unsent:  # in order, each batch as it was first sent: the store adds a batch once
            batch, day, amounts = self._unsent[0]
            await self.store.add_spend(day, amounts, self._writer, batch)  # StoreUnavailable: kept, sent again
            del self._unsent[0]


async def _at_once(reads: dict[str, Awaitable[Any]]) -> dict[str, Any]:
    """Each read's answer under its name, the reads made concurrently (one awaited as it is: no task to make)."""
    if len(reads) <= 1:
        return {name: await read for name, read in reads.items()}
    return dict(zip(reads, await asyncio.gather(*reads.values()), strict=True))
