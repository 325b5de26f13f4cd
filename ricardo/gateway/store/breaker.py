"""A circuit breaker that makes a dead dependency cost nothing per call.

Closed: calls go through. After a failure it opens: calls fail at once, without touching the network,
and only the store's background task may probe once the cool-off has passed (so no request ever pays
for a probe). A failed probe doubles the cool-off, up to a cap; a success closes the breaker.
Transitions are logged once each, never a traceback per call.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("ricardo.gateway.store")


class CircuitBreaker:
    def __init__(self, name: str, cooloff_s: float = 1.0, max_cooloff_s: float = 8.0):
        self.name = name
        self.base_cooloff_s = cooloff_s
        self.max_cooloff_s = max_cooloff_s
        self.last_error: str | None = None
        self.last_error_kind: str | None = None  # the exception's class alone: safe to show where its text is not
        self.degraded_since: float | None = None  # wall-clock time the breaker opened
        self._cooloff_s = cooloff_s
        self._probe_at = 0.0  # monotonic time after which a probe may run

    @property
    def closed(self) -> bool:
        return self.degraded_since is None

    def allow(self, probe: bool = False) -> bool:
        return self.closed or (probe and time.monotonic() >= self._probe_at)

    def seconds_until_probe(self) -> float:
        return max(0.0, self._probe_at - time.monotonic())

    def record_success(self) -> None:
        if self.degraded_since is not None:
            log.warning("%s reachable again after %.1f s", self.name, time.time() - self.degraded_since)
        self.degraded_since = None
        self._cooloff_s = self.base_cooloff_s

    def record_failure(self, error: BaseException, probe: bool = False) -> None:
        self.last_error_kind = type(error).__name__
        self.last_error = f"{self.last_error_kind}: {error}"
        if self.closed:
            self.degraded_since = time.time()
            self._cooloff_s = self.base_cooloff_s
            log.warning(
                "%s unreachable (%s): serving the last known state, probing every %.1f-%.1f s",
                self.name,
                self.last_error,
                self.base_cooloff_s,
                self.max_cooloff_s,
            )
        elif probe:
            self._cooloff_s = min(2 * self._cooloff_s, self.max_cooloff_s)
        else:
            return  # a call that was already in flight when the breaker opened: no new information
        self._probe_at = time.monotonic() + self._cooloff_s
