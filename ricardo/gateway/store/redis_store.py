"""The Redis store: state shared by every gateway replica.

Keys, under "<namespace>:":
  config            hash {version, data, digest, provisional}: the config document
  config:changed    pub/sub channel; carries each new config version
  stats             set of the replica ids that pushed stats (pruned as their entries expire)
  stats:<replica>   one replica's latest stats (JSON), expiring after its ttl
  blob:<name>       hash {version, data, digest, provisional}, expiring if written with a ttl
  lease:<name>      the holder's id, expiring after the ttl
  keys              hash: client key id -> its record (JSON, with the key's hash, never the key)
  spend:<day>       hash: client key id -> dollars spent that UTC day (summed by HINCRBYFLOAT), expiring
  spend:<day>:batches  hash: writer -> its last batch added to that day (a batch sent again is added once)
  limits:*          the `limits` library's rate-limit counters (moving and fixed windows)
Every write is one Lua script or one command, so there is no read-modify-write race between replicas.
The scripts build some key names themselves: standalone Redis (or a Sentinel-managed primary), not Cluster.

When Redis cannot be reached, every call fails fast through a circuit breaker and the store answers from
what this replica last knew (see StateStore). When Redis comes back without its data (no persistence),
the config document, the blobs and the client keys are written back from the replicas' copies (the keys first,
each unless another replica's copy is back already): any replica may write back
its copy while the record is "provisional" (written back or created by init_config, never updated since)
and older than its own, so the highest version any replica knew wins. Once an operator has updated the
config on top of a written-back copy, that history is final and replicas that knew a higher number adopt
it, even if its number is lower: after data loss, converging beats keeping version numbers monotonic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from limits.aio.storage import RedisStorage
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ricardo.gateway.store.base import (
    SPEND_TTL_S,
    LiveStats,
    RateLimiters,
    StateStore,
    StoreUnavailable,
    Versioned,
    encode_doc,
)
from ricardo.gateway.store.breaker import CircuitBreaker
from ricardo.gateway.store.scripts import ACQUIRE, ADD_SPEND, PULL_STATS, PUSH_STATS, PUT, RELEASE, SEED, UPDATE

log = logging.getLogger("ricardo.gateway.store")
T = TypeVar("T")
R = TypeVar("R")


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisStore(StateStore):
    backend = "redis"

    def __init__(
        self,
        url: str,
        namespace: str = "ricardo",
        *,
        timeout_s: float = 0.25,
        reconcile_interval_s: float = 1.0,
        cooloff_s: float = 1.0,
        max_cooloff_s: float = 8.0,
    ):
        super().__init__()
        self.reconcile_interval_s = reconcile_interval_s
        # One immediate retry, on a connection error only: a pooled connection that Redis closed (say, by
        # restarting) fails at once and is reconnected, instead of opening the breaker. No retry on
        # timeouts (a hung Redis would cost twice the timeout); beyond that the breaker decides.
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        address = self._redis.connection_pool.connection_kwargs
        where = address.get("path") or f"{address.get('host', 'localhost')}:{address.get('port', 6379)}"
        self._breaker = CircuitBreaker(f"redis at {where}", cooloff_s, max_cooloff_s)
        self._prefix = f"{namespace}:"
        self._config_key = self._prefix + "config"
        self._channel = self._prefix + "config:changed"
        (
            self._seed,
            self._update,
            self._put,
            self._push_stats,
            self._pull_stats,
            self._acquire,
            self._release,
            self._add_spend,
        ) = (
            self._redis.register_script(source)
            for source in (SEED, UPDATE, PUT, PUSH_STATS, PULL_STATS, ACQUIRE, RELEASE, ADD_SPEND)
        )
        # the rate-limit counters share the client's connection pool, hence its timeouts
        self._shared_limiters = RateLimiters.over(
            RedisStorage(
                "async+" + url,
                implementation="redispy",
                key_prefix=f"{namespace}:limits",
                connection_pool=self._redis.connection_pool,  # type: ignore[arg-type]  # documented, typed narrower
            )
        )
        self._keys: dict[str, dict] = {}
        self._spend: dict[str, dict[str, float]] = {}
        self._stats = LiveStats()
        self._blobs: dict[str, Versioned] = {}
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task | None = None
        self.dropped_writes = 0

    def _may_call(self, probe: bool = False) -> bool:
        # Without the sync task (start() not called) nobody else would ever probe, so every call may.
        return self._breaker.allow(probe or self._task is None)

    async def _call(self, command: Callable[[], Awaitable[T]], probe: bool = False) -> T:
        """Run one Redis command through the breaker; StoreUnavailable if Redis is (or just went) away."""
        if not self._may_call(probe):
            raise self._unavailable()
        try:
            result = await command()
        except (RedisError, OSError) as error:
            self._breaker.record_failure(error, probe or self._task is None)
            raise self._unavailable(sent=True) from error
        self._breaker.record_success()
        return result

    def _unavailable(self, sent: bool = False) -> StoreUnavailable:
        return StoreUnavailable(f"{self._breaker.name} unavailable: {self._breaker.last_error}", sent)

    async def _write_back(self, key: str, record: Versioned, channel: str = "") -> Versioned:
        version, data = await self._call(lambda: self._seed(keys=[key], args=[record.version, record.data, channel]))
        return Versioned(int(version), data)

    async def _sync_record(
        self, key: str, known: Versioned | None, channel: str = "", probe: bool = False
    ) -> Versioned | None:
        """The record in force, fetching its content only if it differs from `known`, and writing `known`
        back if Redis lost the record (or holds an older provisional one)."""
        version, digest, provisional = await self._call(
            lambda: self._redis.hmget(key, "version", "digest", "provisional"), probe
        )
        if known is not None and (version is None or (provisional and int(version) < known.version)):
            # Redis lost its data, the client keys with it (an older provisional config: one a replica that started
            # meanwhile seeded, with no keys to put back)
            if key == self._config_key:
                await self._write_back_keys()  # before the config, which tells `read_keys` the loss is over
            record = await self._write_back(key, known, channel)
            if record == known:
                log.warning(
                    "redis had %s for %s; wrote back version %d from this replica",
                    "nothing" if version is None else f"an older provisional version {int(version)}",
                    key,
                    known.version,
                )
            return record
        if version is None:
            return None
        assert isinstance(digest, bytes)  # written with the version (the client does not decode responses)
        if known is not None and (int(version), digest.decode()) == (known.version, known.digest):
            return known
        version, data = await self._call(lambda: self._redis.hmget(key, "version", "data"))
        if version is None:  # deleted in between; the next sync writes it back
            return known
        assert isinstance(data, bytes)  # as the digest
        record = Versioned(int(version), data)
        if known is not None and record.version <= known.version:
            log.warning(
                "%s: replacing this replica's version %d with version %d written by another replica "
                "(redis lost data or was unreachable meanwhile)",
                key,
                known.version,
                record.version,
            )
        return record

    # -- config ------------------------------------------------------------------------------
    async def init_config(self, doc: dict) -> tuple[int, dict]:
        async with self._config_lock:
            try:
                self._known = await self._write_back(self._config_key, Versioned.of_doc(1, doc), self._channel)
            except StoreUnavailable:
                # Run this replica's own document until Redis answers; then the sync task writes it back
                # (if Redis has none) or delivers the shared one.
                if self._known is None:
                    self._known = Versioned.of_doc(1, doc)
            return self._known.version, self._known.doc()

    async def read_config(self) -> tuple[int, dict] | None:
        if self._may_call():  # while degraded, answer at once rather than queue behind the sync task's probe
            async with self._config_lock:
                with contextlib.suppress(StoreUnavailable):
                    await self._reconcile()
        known = self._known
        return None if known is None else (known.version, known.doc())

    async def update_config(self, expected_version: int, doc: dict) -> int | None:
        data = encode_doc(doc)
        if not self._may_call():
            raise self._unavailable()
        async with self._config_lock:
            known = self._known or Versioned(0, b"")
            version = await self._call(
                lambda: self._update(
                    keys=[self._config_key], args=[expected_version, data, self._channel, known.data, known.version]
                )
            )
            if version == 0:
                return None
            await self._deliver(Versioned(version, data))
            return version

    async def _reconcile(self, probe: bool = False) -> None:
        """Deliver the config in force if it is new to this replica. Call with `_config_lock` held."""
        record = await self._sync_record(self._config_key, self._known, self._channel, probe)
        if record is not None:
            await self._deliver(record)

    # -- background sync -------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sync_forever(), name="ricardo-store-sync")

    async def close(self) -> None:
        if self._task is not None:
            # Python 3.11's asyncio.wait_for, which redis-py wraps around every send, can swallow a
            # cancellation (CPython gh-86296, fixed in 3.12): cancel until the task has really stopped.
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait([self._task], timeout=0.05)
            self._task = None
        await self._drop_pubsub()
        await self._redis.aclose()

    async def _sync_forever(self) -> None:
        """Wait for a change announcement (or the reconcile interval), then reconcile. This task is also
        the breaker's only prober, so requests never pay for finding out whether Redis is back."""
        while True:
            try:
                await self._wait_for_change()
                async with self._config_lock:
                    if self._known is None:  # nothing to follow before init_config or read_config
                        await self._call(self._redis.ping, probe=True)
                    else:
                        await self._reconcile(probe=True)
            except StoreUnavailable:
                await self._drop_pubsub()
            except Exception:
                log.exception("config sync failed")
                await asyncio.sleep(self.reconcile_interval_s)

    async def _wait_for_change(self) -> None:
        if not self._breaker.closed:
            await asyncio.sleep(self._breaker.seconds_until_probe())
        elif self._pubsub is None:
            # (Re)subscribe, then reconcile at once: that catches what was published while unsubscribed.
            pubsub = self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            await self._call(lambda: pubsub.subscribe(self._channel), probe=True)
        else:
            await self._listen()

    async def _listen(self) -> None:
        """Wait up to the reconcile interval for an announcement. Silence proves nothing about Redis (a hung
        one is silent too), so unlike `_call` only a failure reaches the breaker."""
        assert self._pubsub is not None  # subscribed
        try:
            await self._pubsub.get_message(timeout=self.reconcile_interval_s)
        except (RedisError, OSError) as error:
            self._breaker.record_failure(error, probe=True)
            raise self._unavailable() from error

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    # -- live stats ------------------------------------------------------------------------
    async def push_stats(self, replica_id: str, stats: dict, ttl_s: float) -> None:
        self._stats.put(replica_id, stats, ttl_s)
        try:
            await self._call(
                lambda: self._push_stats(
                    keys=[f"{self._prefix}stats:{replica_id}", f"{self._prefix}stats"],
                    args=[json.dumps(stats), _ms(ttl_s), replica_id],
                )
            )
        except StoreUnavailable:
            self.dropped_writes += 1

    async def pull_stats(self) -> dict[str, dict]:
        try:
            flat = await self._call(
                lambda: self._pull_stats(keys=[f"{self._prefix}stats"], args=[f"{self._prefix}stats:"])
            )
        except StoreUnavailable:
            return self._stats.live()  # the last entries seen, each until its own expiry
        now = time.monotonic()
        self._stats.replace(
            {flat[i].decode(): (now + int(flat[i + 2]) / 1000, json.loads(flat[i + 1])) for i in range(0, len(flat), 3)}
        )
        return self._stats.live()

    # -- blobs -----------------------------------------------------------------------------
    async def put_blob(self, name: str, data: bytes, ttl_s: float | None = None) -> int | None:
        known = self._blobs.get(name)
        ttl_ms = 0 if ttl_s is None else _ms(ttl_s)
        try:
            version = await self._call(
                lambda: self._put(
                    keys=[f"{self._prefix}blob:{name}"], args=[data, known.version if known else 0, ttl_ms]
                )
            )
        except StoreUnavailable:
            self.dropped_writes += 1
            return None
        self._blobs[name] = Versioned(version, bytes(data))
        return version

    async def get_blob(self, name: str) -> tuple[int, bytes] | None:
        known = self._blobs.get(name)
        try:
            record = await self._sync_record(f"{self._prefix}blob:{name}", known)
        except StoreUnavailable:
            record = known
        if record is None:
            return None
        self._blobs[name] = record
        return record.version, record.data

    # -- leases ----------------------------------------------------------------------------
    async def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        try:
            return bool(
                await self._call(lambda: self._acquire(keys=[f"{self._prefix}lease:{name}"], args=[holder, _ms(ttl_s)]))
            )
        except StoreUnavailable:
            return False

    async def release_lease(self, name: str, holder: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._call(lambda: self._release(keys=[f"{self._prefix}lease:{name}"], args=[holder]))

    # -- client keys, rate limits, spend ---------------------------------------------------
    async def put_key(self, key_id: str, record: dict) -> None:
        await self._call(lambda: self._redis.hset(f"{self._prefix}keys", key_id, json.dumps(record)))
        self._keys[key_id] = record

    async def delete_key(self, key_id: str) -> bool:
        removed = await self._call(lambda: self._redis.hdel(f"{self._prefix}keys", key_id))
        self._keys.pop(key_id, None)
        return bool(removed)

    async def read_keys(self) -> dict[str, dict]:
        try:
            raw = await self._call(lambda: self._redis.hgetall(f"{self._prefix}keys"))
            if not raw and self._keys and self._known is not None and await self._lost_config():
                return dict(self._keys)  # Redis lost its data: the sync task writes these back (`_write_back_keys`)
        except StoreUnavailable:
            return dict(self._keys)
        self._keys = {_text(k): json.loads(v) for k, v in raw.items()}
        return dict(self._keys)

    async def _lost_config(self) -> bool:
        """Redis lost its data and this replica's config is not back yet: none, or a provisional one older than this
        replica's (seeded by a replica that started meanwhile). Call with a known config."""
        assert self._known is not None
        version, provisional = await self._call(lambda: self._redis.hmget(self._config_key, "version", "provisional"))
        return version is None or (provisional is not None and int(version) < self._known.version)

    async def _write_back_keys(self) -> None:
        """Put back the client keys this replica knew, after Redis lost its data (with no keys, every key holder
        would get 401 for good). HSETNX: a record another replica wrote back first stays. A key revoked while this
        replica could not hear of it comes back with them, as a config version would."""
        if not self._keys:
            return

        async def put() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key_id, record in self._keys.items():
                    pipe.hsetnx(f"{self._prefix}keys", key_id, json.dumps(record))
                await pipe.execute()

        await self._call(put)
        log.warning("redis had lost its data; wrote back %d client keys from this replica", len(self._keys))

    async def rate_limit(self, call: Callable[[RateLimiters], Awaitable[R]]) -> R:
        try:
            return await self._call(lambda: call(self._shared_limiters))
        except StoreUnavailable:
            return await call(self.local_limiters())

    async def add_spend(self, day: str, amounts: dict[str, float], writer: str, batch: int) -> None:
        key = f"{self._prefix}spend:{day}"
        args: list[str | int] = [writer, batch, SPEND_TTL_S]
        for key_id, usd in amounts.items():
            args += [key_id, repr(usd)]
        await self._call(lambda: self._add_spend(keys=[key, f"{key}:batches"], args=args))

    async def read_spend(self, day: str, key_id: str | None = None) -> dict[str, float]:
        if key_id is not None:
            return await self._read_key_spend(day, key_id)
        try:
            raw = await self._call(lambda: self._redis.hgetall(f"{self._prefix}spend:{day}"))
        except StoreUnavailable:
            return dict(self._spend.get(day, {}))
        self._spend = {day: {_text(k): float(v) for k, v in raw.items()}}
        return dict(self._spend[day])

    async def _read_key_spend(self, day: str, key_id: str) -> dict[str, float]:
        """One key's spend (HGET), kept in the last known copy beside the others'."""
        known = self._spend.get(day, {})
        try:
            raw = await self._call(lambda: self._redis.hget(f"{self._prefix}spend:{day}", key_id))
        except StoreUnavailable:
            return {key_id: known[key_id]} if key_id in known else {}
        if raw is None:
            return {}
        self._spend = {day: known | {key_id: float(raw)}}
        return {key_id: float(raw)}

    # -- health ----------------------------------------------------------------------------
    def status(self) -> dict:
        return {
            "backend": self.backend,
            "connected": self._breaker.closed,
            "last_error": self._breaker.last_error,
            "last_error_kind": self._breaker.last_error_kind,
            "degraded_since": self._breaker.degraded_since,
            "config_version": None if self._known is None else self._known.version,
            "dropped_writes": self.dropped_writes,
        }
