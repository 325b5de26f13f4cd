"""How our servers run: one uvloop event loop per process."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_event_loop(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # uvloop is a speed-up, not a requirement
        return asyncio.run(main)
    return uvloop.run(main)
