"""Gateway state shared across replicas: in-process by default, Redis when several replicas run."""

from __future__ import annotations

from ricardo.errors import InvalidInput
from ricardo.gateway.store.base import ConfigCallback, StateStore, StoreUnavailable
from ricardo.gateway.store.memory import MemoryStore
from ricardo.gateway.store.redis_store import RedisStore
from ricardo.gateway.urls import redact

__all__ = ["ConfigCallback", "MemoryStore", "RedisStore", "StateStore", "StoreUnavailable", "open_store"]


def open_store(redis_url: str | None, namespace: str = "ricardo", **redis_options: float) -> StateStore:
    """MemoryStore without a URL; otherwise a RedisStore (options: timeout_s, reconcile_interval_s,
    cooloff_s, max_cooloff_s)."""
    if not redis_url:
        return MemoryStore()
    try:
        return RedisStore(redis_url, namespace, **redis_options)
    except ValueError as exc:  # redis-py's word for a URL it cannot read
        raise InvalidInput(f"redis URL {redact(redis_url)}: {exc}") from None
