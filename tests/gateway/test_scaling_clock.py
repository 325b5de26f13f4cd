"""The scaling loop (gateway/scaling_loop.py) reads the wall clock, which may be stepped back (NTP on a VM): the hints
must keep following the traffic, not stop until the clock is back where it was."""

from __future__ import annotations

import time

from ricardo.gateway import scaling_loop as module

from tests.gateway.test_scaling_webhook import scaling_loop


async def test_hints_are_still_computed_after_the_wall_clock_steps_back(monkeypatch):
    loop = scaling_loop(None)
    now = time.time()
    monkeypatch.setattr(module.time, "time", lambda: now)
    await loop.tick()
    assert loop.current()["desired"] == {"a10g": {"unified": 1}}

    monkeypatch.setattr(module.time, "time", lambda: now - 3600.0)  # the clock is stepped back an hour
    loop.advisor.min_replicas = 3  # the next hints differ
    await loop.tick()
    assert loop.current()["desired"] == {"a10g": {"unified": 3}}
