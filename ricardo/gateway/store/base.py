"""The state store's contract, shared by the in-process and the Redis implementations.

What is shared between replicas: the config document (prices, pools, backends; versioned, changed by
compare-and-set), live stats per replica (expire on their own), blobs (the predictor's model), leases, and the
client API keys with their rate-limit counters and daily spend.
What stays per replica: in-flight counts, backend health, anything on the request path.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import hashlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from ricardo.errors import Unavailable

log = logging.getLogger("ricardo.gateway.store")

ConfigCallback = Callable[[int, dict], Awaitable[None] | None]
T = TypeVar("T")
SPEND_TTL_S = 3 * 24 * 3600  # a day's spend outlives the day, for whoever reads yesterday's


class StoreUnavailable(Unavailable):
    """A write that must be shared could not reach the shared store (the admin API answers 503). `sent`: the
    command had left when the store failed to answer (a timeout, a dropped connection): it may have been applied."""

    def __init__(self, message: str, sent: bool = False):
        super().__init__(message)
        self.sent = sent


@dataclass(frozen=True)
class RateLimiters:
    """The `limits` strategies over one storage: a moving window for request rates (a refused request takes no
    slot), a fixed window for token counts (charged after the answer, so its counter must accept any amount)."""

    moving: MovingWindowRateLimiter
    fixed: FixedWindowRateLimiter

    @classmethod
    def over(cls, storage: Storage) -> RateLimiters:
        return cls(MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage))


@dataclass(frozen=True)
class Versioned:
    """One version of a record: the config document as canonical JSON, or a blob."""

    version: int
    data: bytes

    @functools.cached_property
    def digest(self) -> str:
        # Same digest as Redis's redis.sha1hex, so a replica can tell "same version number, other content"
        # (possible only after Redis lost its data) without fetching the content.
        return hashlib.sha1(self.data).hexdigest()

    @classmethod
    def of_doc(cls, version: int, doc: dict) -> Versioned:
        return cls(version, encode_doc(doc))

    def doc(self) -> dict:
        return json.loads(self.data)


def encode_doc(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class LiveStats:
    """Replica -> (deadline, stats): what `pull_stats` answers from this process's own knowledge."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, dict]] = {}

    def put(self, replica_id: str, stats: dict, ttl_s: float) -> None:
        self._entries[replica_id] = (time.monotonic() + ttl_s, stats)

    def replace(self, entries: dict[str, tuple[float, dict]]) -> None:
        self._entries = entries

    def live(self) -> dict[str, dict]:
        now = time.monotonic()
        self._entries = {r: e for r, e in self._entries.items() if e[0] > now}
        return {r: stats for r, (_, stats) in self._entries.items()}


class StateStore(abc.ABC):
    """Shared state of the gateway replicas.

    When the shared store is unreachable nothing stalls and few methods raise: reads answer from what this
    replica last knew (config, blobs, other replicas' stats until their own expiry, keys, spend), stats and
    blob writes are dropped and counted (`status()["dropped_writes"]`), `acquire_lease` returns False,
    `release_lease` does nothing, and `rate_limit` counts on this replica's own counters (each replica then
    enforces a key's whole limit by itself). `update_config`, `put_key` and `delete_key` raise
    `StoreUnavailable`: a change the other replicas would not see must not look accepted, so the admin API
    answers 503 and the operator retries (applying it on this replica alone would split the fleet).
    `add_spend` raises it too, so that the caller keeps the amounts and adds them later: spend is not lost.
    """

    backend: str

    def __init__(self) -> None:
        self._callbacks: list[ConfigCallback] = []
        self._known: Versioned | None = None  # the config version this replica runs (last delivered)
        # Serialises "read or write the config, then deliver it" so callbacks see versions in order.
        self._config_lock = asyncio.Lock()
        self._local_limiters: RateLimiters | None = None

    def local_limiters(self) -> RateLimiters:
        """Rate-limit counters in this process (made on first use: the storage needs the running loop)."""
        if self._local_limiters is None:
            self._local_limiters = RateLimiters.over(MemoryStorage())
        return self._local_limiters

    # -- config ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def init_config(self, doc: dict) -> tuple[int, dict]:
        """Set the config document if none exists yet; return the version and document in force (maybe
        another replica's). The result counts as delivered: callbacks fire only for later versions."""

    @abc.abstractmethod
    async def read_config(self) -> tuple[int, dict] | None:
        """The config in force, or None if there is none. If it is new to this replica, callbacks run
        first; the store then follows the config from this version on (as after init_config)."""

    @abc.abstractmethod
    async def update_config(self, expected_version: int, doc: dict) -> int | None:
        """Compare-and-set: the new version, or None if the version in force is not `expected_version`.
        Callbacks have run for the new version when this returns. Raises StoreUnavailable."""

    def watch_config(self, callback: ConfigCallback) -> None:
        """Call `callback(version, doc)` once per new config version this replica sees, in version order,
        once the store follows a config (after init_config or read_config). Callbacks run one at a time
        under the store's config lock, on the store's sync task or inline in update_config/read_config:
        keep them short and do not call the config methods from one."""
        self._callbacks.append(callback)

    async def _deliver(self, record: Versioned) -> None:
        """Make `record` the known config and tell the callbacks, unless it is already known.
        Call with `_config_lock` held."""
        known = self._known
        if known is not None and (known.version, known.digest) == (record.version, record.digest):
            return
        self._known = record
        for callback in self._callbacks:
            try:
                result = callback(record.version, record.doc())
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("config callback %r failed for version %d", callback, record.version)

    # -- live stats, blobs, leases ---------------------------------------------------------
    @abc.abstractmethod
    async def push_stats(self, replica_id: str, stats: dict, ttl_s: float) -> None:
        """Publish this replica's latest stats; they disappear after `ttl_s` unless pushed again."""

    @abc.abstractmethod
    async def pull_stats(self) -> dict[str, dict]:
        """Latest stats of every live replica."""

    @abc.abstractmethod
    async def put_blob(self, name: str, data: bytes, ttl_s: float | None = None) -> int | None:
        """Store a new version of a blob: its version, or None if the write was dropped (store down). With `ttl_s`
        the blob disappears that long after this write unless written again (one per replica, say)."""

    @abc.abstractmethod
    async def get_blob(self, name: str) -> tuple[int, bytes] | None:
        """The latest version of a blob, or None if there is none."""

    @abc.abstractmethod
    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take the lease if it is free or already `holder`'s (extending it to `ttl_s` from now)."""

    @abc.abstractmethod
    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up if `holder` has it."""

    # -- client keys, their rate limits and spend -------------------------------------------
    @abc.abstractmethod
    async def put_key(self, key_id: str, record: dict) -> None:
        """Create or replace a client key's record (never the key itself: its hash). Raises StoreUnavailable."""

    @abc.abstractmethod
    async def delete_key(self, key_id: str) -> bool:
        """Revoke a key: False if there was none. Raises StoreUnavailable."""

    @abc.abstractmethod
    async def read_keys(self) -> dict[str, dict]:
        """Every key's record, by id."""

    @abc.abstractmethod
    async def rate_limit(self, call: Callable[[RateLimiters], Awaitable[T]]) -> T:
        """Run `call` on the shared rate-limit counters (this replica's own while the store is down)."""

    @abc.abstractmethod
    async def add_spend(self, day: str, amounts: dict[str, float], writer: str, batch: int) -> None:
        """Add dollars to keys' spend on `day` (UTC, YYYY-MM-DD), atomically, once per `writer`'s `batch` (numbered
        upward): a batch sent again, after a reply that never came though the store had added it, is not added twice.
        Raises StoreUnavailable."""

    @abc.abstractmethod
    async def read_spend(self, day: str, key_id: str | None = None) -> dict[str, float]:
        """Every key's spend on `day`, summed over the replicas; with `key_id`, that key's alone (a budget check on
        the request path reads one field, whatever the number of keys)."""

    # -- lifecycle and health --------------------------------------------------------------
    async def start(self) -> None:  # noqa: B027 - optional hook: a store with no background work has nothing to do
        """Start background work (watching the shared config)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, as start
        """Stop background work and release connections."""

    @abc.abstractmethod
    def status(self) -> dict:
        """{"backend", "connected", "last_error", "last_error_kind", "degraded_since", "config_version",
        "dropped_writes"}"""

    @property
    def healthy(self) -> bool:
        return self.status()["connected"]
