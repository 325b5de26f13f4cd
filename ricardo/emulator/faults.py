"""Faults an emulated backend can be told to have, for chaos tests and demos of the gateway's reliability.

A spec is a comma-separated list, e.g. `cut-after=2`, `stall-after=3,error-rate=0.1`, `hang`, `slow=5`:

- `error-rate=P`: answer HTTP 500 to a share P of the completion requests (seeded: the same run, the same answers);
- `hang`: accept the request and never answer (until the client goes away);
- `stall-after=N`: a stream sends N events, then nothing more, the connection left open; a whole answer
  sends half its body, then nothing;
- `cut-after=N`: a stream sends N events, then the connection is dropped; a whole answer is dropped halfway;
- `no-done`: a stream ends cleanly but without its `finish_reason`, usage and `data: [DONE]`; a whole answer is
  half its JSON, ended cleanly (a truncation that no transport error reveals);
- `slow=X`: the hardware runs X times slower than it otherwise would;
- `min-tokens=K`: the faults above but `slow` touch only answers of at least K tokens (default 1: all), so
  `cut-after=2,min-tokens=2` passes a one-token health probe and breaks every real answer.

Health checks (`GET /v1/models`, `/metrics`) never fail: a broken backend usually still says it is up.
Completions of any size do, so a gateway's probe completion meets the same faults as its traffic.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ricardo.errors import InvalidInput


@dataclass
class Faults:
    error_rate: float = 0.0
    hang: bool = False
    stall_after: int | None = None
    cut_after: int | None = None
    no_done: bool = False
    slow: float = 1.0
    min_tokens: int = 1
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def breaks_answers(self) -> bool:
        """Whether an answer's body must be written in pieces (to be cut, stalled or truncated)."""
        return self.stall_after is not None or self.cut_after is not None or self.no_done

    def applies(self, output_tokens: int) -> bool:
        return output_tokens >= self.min_tokens

    def fail_now(self) -> bool:
        return self.error_rate > 0 and self._rng.random() < self.error_rate


def parse_faults(spec: str | None) -> Faults:
    """`Faults` from a spec string; InvalidInput saying what is wrong."""
    faults = Faults()
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, value = item.partition("=")
        try:
            if name == "error-rate":
                faults.error_rate = float(value)
                if not 0 <= faults.error_rate <= 1:
                    raise ValueError
            elif name == "hang" and not value:
                faults.hang = True
            elif name == "stall-after":
                faults.stall_after = _count(value)
            elif name == "cut-after":
                faults.cut_after = _count(value)
            elif name == "no-done" and not value:
                faults.no_done = True
            elif name == "slow":
                faults.slow = float(value)
                if not 0 < faults.slow < math.inf:  # NaN fails too; inf made the speed 0 (a dead engine task)
                    raise ValueError
            elif name == "min-tokens":
                faults.min_tokens = _count(value)
            elif name == "seed":
                faults.seed = int(value)
            else:
                raise ValueError
        except ValueError:
            raise InvalidInput(
                f"bad fault {item!r}: expected error-rate=P (0-1), hang, stall-after=N, cut-after=N, no-done, "
                "slow=X (finite, > 0), min-tokens=K or seed=S"
            ) from None
    faults.__post_init__()  # the seed may have been given
    return faults


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError
    return n
