"""Outlier detection of one backend from the outcomes of the requests it served, after Envoy's.

An outcome is a success only when the answer completed cleanly (a stream with its `finish_reason` and
`data: [DONE]`, a whole answer read to the end and valid JSON with choices); an answer that broke, stalled,
hung, was truncated or came back as HTTP 500/502/504 is a failure. A client that went away, or a request the
backend refused as invalid, says nothing about the backend. A backend is ejected when

- `consecutive_failures` outcomes in a row failed (Envoy's consecutive_5xx; at 3, a "poison" request that
  fails on every backend it is tried on cannot take a pool out: it is one failure on each), or
- at least `failure_ratio` of its outcomes over the last `window_s` failed, once the window holds
  `min_requests` (Envoy's failure_percentage: catches a backend that fails one request in two).

It stays out for `base_ejection_s` x 2^(ejections before), at most `max_ejection_s`. Then two trials, each of
which sends it back out for twice as long if it fails: the gateway's probe completion (it costs no client
anything, and finds a backend that fails every answer), then, half-open, one real request at a time until one
completes (finds a backend that fails real answers only: one client's request is the price, where Envoy, which
returns a host to service whole, pays `consecutive_5xx` of them). A backend in service for `max_ejection_s`
without an ejection is forgiven its past ones. Clock: the caller's seconds.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from ricardo.gateway.config import OutlierConfig

State = Literal["in service", "ejected", "probing", "half-open"]


class OutlierDetector:
    def __init__(self, rules: OutlierConfig) -> None:
        self.rules = rules
        self.state: State = "in service"
        self.ejections = 0  # ejections not yet forgiven: the next one lasts twice as long
        self.ejected_until = 0.0
        self.consecutive = 0
        self.trial_in_flight = False  # half-open: the one real request that decides is under way
        self._window: deque[tuple[float, bool]] = deque()
        self._failures_in_window = 0
        self._in_service_since = 0.0

    def takes_requests(self) -> bool:
        """In service, or half-open with no trial request under way."""
        return self.state == "in service" or (self.state == "half-open" and not self.trial_in_flight)

    def in_service(self) -> bool:
        return self.state == "in service"

    def begin(self) -> bool:
        """A request starts on the backend; True if it is the half-open trial (report its end to `end_trial`)."""
        if self.state == "half-open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def end_trial(self) -> None:
        """The trial request ended without an outcome (the client left): the next request is the trial."""
        self.trial_in_flight = False

    def record(self, now: float, ok: bool, trial: bool = False) -> bool:
        """Count one outcome (`trial`: of the half-open trial request); True if it ejects the backend. Outcomes of
        requests that started before an ejection and end after it are not counted: the ejection says it all."""
        if self.state == "half-open" and trial:
            self.trial_in_flight = False
            self._decide(now, ok)
            return not ok
        if self.state != "in service":
            return False
        self._window.append((now, ok))
        self._failures_in_window += not ok
        self._prune(now)
        if ok:
            self.consecutive = 0
            if self.ejections and now - self._in_service_since >= self.rules.max_ejection_s:
                self.ejections = 0
            return False
        self.consecutive += 1
        rules = self.rules
        ratio_tripped = len(
            self._window
        ) >= rules.min_requests and self._failures_in_window >= rules.failure_ratio * len(self._window)
        if self.consecutive >= rules.consecutive_failures or ratio_tripped:
            self._eject(now)
            return True
        return False

    def probe_due(self, now: float) -> bool:
        """The ejection is over: the caller probes the backend now and reports `probe_result`."""
        if self.state == "ejected" and now >= self.ejected_until:
            self.state = "probing"
            return True
        return False

    def probe_result(self, now: float, ok: bool) -> None:
        if self.state != "probing":
            return
        if ok:
            self.state = "half-open"
            self.trial_in_flight = False
        else:
            self._eject(now)

    def probe_later(self, at: float) -> None:
        """The probe found the backend too busy to answer (429, 503): no word on its answers, so it stays out, as
        long as it asks to rest and no longer, and is probed again then."""
        if self.state == "probing":
            self.state = "ejected"
            self.ejected_until = at

    def ejection_seconds(self) -> float:
        """How long the next ejection lasts."""
        return min(self.rules.max_ejection_s, self.rules.base_ejection_s * 2**self.ejections)

    def _decide(self, now: float, ok: bool) -> None:
        if ok:
            self.state = "in service"
            self._in_service_since = now
        else:
            self._eject(now)

    def _eject(self, now: float) -> None:
        self.ejected_until = now + self.ejection_seconds()
        self.ejections += 1
        self.state = "ejected"
        self.consecutive = 0
        self._window.clear()
        self._failures_in_window = 0

    def _prune(self, now: float) -> None:
        horizon = now - self.rules.window_s
        while self._window and self._window[0][0] < horizon:
            _, ok = self._window.popleft()
            self._failures_in_window -= not ok
