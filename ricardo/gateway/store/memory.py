"""The in-process store: the state of a single replica, with the same contract as the shared one."""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from ricardo.gateway.store.base import LiveStats, RateLimiters, StateStore, T, Versioned


class MemoryStore(StateStore):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._stats = LiveStats()
        self._blobs: dict[str, Versioned] = {}
        self._blob_deadlines: dict[str, float] = {}  # blobs written with a ttl: name -> monotonic time they expire
        self._leases: dict[str, tuple[str, float]] = {}
        self._keys: dict[str, dict] = {}
        self._spend: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._batches: dict[tuple[str, str], int] = {}  # (day, writer) -> its last batch added

    async def init_config(self, doc: dict) -> tuple[int, dict]:
        async with self._config_lock:
            if self._known is None:
                self._known = Versioned.of_doc(1, doc)
            return self._known.version, self._known.doc()

    async def read_config(self) -> tuple[int, dict] | None:
        known = self._known
        return None if known is None else (known.version, known.doc())

    async def update_config(self, expected_version: int, doc: dict) -> int | None:
        async with self._config_lock:
            if self._known is None or self._known.version != expected_version:
                return None
            await self._deliver(Versioned.of_doc(expected_version + 1, doc))
            return self._known.version

    async def push_stats(self, replica_id: str, stats: dict, ttl_s: float) -> None:
        self._stats.put(replica_id, stats, ttl_s)

    async def pull_stats(self) -> dict[str, dict]:
        return self._stats.live()

    async def put_blob(self, name: str, data: bytes, ttl_s: float | None = None) -> int:
        previous = self._blobs.get(name)  # an expired one too: its successor is numbered above it, as in Redis
        version = 1 if previous is None else previous.version + 1
        self._blobs[name] = Versioned(version, bytes(data))
        if ttl_s is None:
            self._blob_deadlines.pop(name, None)
        else:
            self._blob_deadlines[name] = time.monotonic() + ttl_s
        return version

    async def get_blob(self, name: str) -> tuple[int, bytes] | None:
        blob = self._blobs.get(name)
        if blob is None or self._blob_deadlines.get(name, float("inf")) <= time.monotonic():
            return None
        return blob.version, blob.data

    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        now = time.monotonic()
        current = self._leases.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[name] = (holder, now + ttl_s)
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        if self._leases.get(name, ("", 0.0))[0] == holder:
            del self._leases[name]

    async def put_key(self, key_id: str, record: dict) -> None:
        self._keys[key_id] = copy.deepcopy(record)

    async def delete_key(self, key_id: str) -> bool:
        return self._keys.pop(key_id, None) is not None

    async def read_keys(self) -> dict[str, dict]:
        return copy.deepcopy(self._keys)

    async def rate_limit(self, call: Callable[[RateLimiters], Awaitable[T]]) -> T:
        return await call(self.local_limiters())

    async def add_spend(self, day: str, amounts: dict[str, float], writer: str, batch: int) -> None:
        if batch <= self._batches.get((day, writer), 0):
            return
        self._batches[day, writer] = batch
        for key_id, usd in amounts.items():
            self._spend[day][key_id] += usd

    async def read_spend(self, day: str, key_id: str | None = None) -> dict[str, float]:
        spend: dict[str, float] = self._spend.get(day, {})
        if key_id is None:
            return dict(spend)
        return {key_id: spend[key_id]} if key_id in spend else {}

    def status(self) -> dict:
        return {
            "backend": self.backend,
            "connected": True,
            "last_error": None,
            "last_error_kind": None,
            "degraded_since": None,
            "config_version": None if self._known is None else self._known.version,
            "dropped_writes": 0,
        }
