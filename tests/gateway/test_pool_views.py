"""A pool's view and available backends, kept between requests (`pools.Snapshot`), are what they would be made afresh:
after every kind of change, and as the clock ends rests and ages telemetry pages out."""

import random

import pytest
from ricardo.gateway.config import OutlierConfig, PoolConfig
from ricardo.gateway.outlier import OutlierDetector
from ricardo.gateway.pools import Backend, Pool
from ricardo.gateway.telemetry import Telemetry
from ricardo.policies.ledger import PoolLedger
from ricardo.policies.types import SLO, Choice, PairSpec, RequestShape

RULES = OutlierConfig(consecutive_failures=2, base_ejection_s=2.0, max_ejection_s=8.0)
SHAPE = RequestShape("m", 100, 50, 100, SLO(1000.0, 50.0))


def backend(k: int, role: str = "unified") -> Backend:
    return Backend(f"http://127.0.0.1:{9000 + k}", None, OutlierDetector(RULES), role=role)  # type: ignore[arg-type]


def unified_pool() -> Pool:
    pool = Pool(PoolConfig(name="u", hardware="A10G"), PoolLedger("u", "A10G", 1.0, ("m",)), None)  # type: ignore[arg-type]
    pool.backends = [backend(k) for k in range(3)]
    pool.typical_share, pool.telemetry_max_age_s = 0.2, 3.0
    return pool


def pair_pool() -> Pool:
    spec = PairSpec("H100", "A10G", 4.0, 1.0, 100.0)
    pool = Pool(PoolConfig(name="p", hardware="A10G"), PoolLedger("p", "A10G", 5.0, ("m",), spec), None)  # type: ignore[arg-type]
    pool.backends = [backend(10, "prefill"), backend(11, "decode"), backend(12, "decode")]
    return pool


def check(pool: Pool, now: float) -> None:
    """The pool's view and backends at `now` against the same made from its parts, not through the ledger's view."""
    shown = pool.view(now)
    available = [b for b in pool.backends if b.available(now)]
    for role in (None, "unified", "prefill", "decode"):
        assert list(pool.available_backends(now, role)) == [b for b in available if role in (None, b.role)]
    ledger = pool.ledger
    if pool.pair is None:
        assert (shown.replicas, shown.decode_replicas) == (len(available), 0)
        assert shown.external_load == pool.external_load(available, now)
    else:
        prefill = sum(b.role == "prefill" for b in available)
        decode = sum(b.role == "decode" for b in available)
        assert (shown.replicas, shown.decode_replicas) == ((prefill, decode) if prefill and decode else (0, 0))
        assert shown.external_load == 0.0
    assert (shown.in_flight, shown.in_flight_load, shown.decode_load) == (
        ledger.in_flight,
        ledger.in_flight_load,
        ledger.decode_load,
    )
    assert (shown.ttft_ms, shown.latency_per_token_ms, shown.pair) == (
        ledger.ttft_ms,
        ledger.latency_per_token_ms,
        ledger.pair,
    )


def event(rng: random.Random, pool: Pool, now: float, tickets: list) -> None:
    """One change of any kind that a view shows."""
    b = rng.choice(pool.backends)
    kind = rng.randrange(13)
    if kind == 0:
        b.healthy = not b.healthy
    elif kind == 1:
        b.draining = rng.random() < 0.3
    elif kind == 2:
        b.rest(now, rng.choice([None, 0.5, 2.0]))
    elif kind == 3:
        b.reached()
    elif kind == 4:
        b.outcome(now, rng.random() < 0.4, trial=rng.random() < 0.5)
    elif kind == 5:
        if b.outlier.probe_due(now):
            b.outlier.probe_result(now, rng.random() < 0.7)
    elif kind == 6:
        b.outlier.begin() if rng.random() < 0.6 else b.outlier.end_trial()
    elif kind == 7:
        age = rng.choice([0.0, 1.0, 2.9, 3.0, 5.0])
        b.telemetry = Telemetry(rng.randrange(6), rng.randrange(3), rng.choice([None, 0.5, 0.97]), now - age, 1)
    elif kind == 8:
        b.telemetry = None
    elif kind == 9:  # a request starts, carrying the shares ranking computed
        choice = Choice(
            pool.ledger.name, 0.0, 0.0, extra={"shares": (rng.random(), rng.random() * (pool.pair is not None))}
        )
        tickets.append(pool.ledger.dispatch(SHAPE, None, now, choice))  # type: ignore[arg-type]
    elif kind == 10 and tickets:
        ticket = tickets.pop(rng.randrange(len(tickets)))
        pool.ledger.first_token(ticket, now)
        pool.ledger.finish(ticket, now + 0.5, rng.randrange(1, 200))
    elif kind == 11:  # a config change: a backend leaves or comes back, telemetry ages differently
        if len(pool.backends) > 2 and rng.random() < 0.5:
            pool.backends = [x for x in pool.backends if x is not b]
        else:
            pool.backends = [*pool.backends, backend(rng.randrange(100, 200), b.role)]
        pool.telemetry_max_age_s = rng.choice([3.0, 6.0])
    else:
        pool.ledger.reprice(rng.choice([1.0, 2.0]), ("m",), pool.pair)


@pytest.mark.parametrize("seed", range(6))
def test_a_kept_view_is_the_view_made_afresh(seed):
    rng = random.Random(seed)
    pools, tickets = [unified_pool(), pair_pool()], {"u": [], "p": []}
    now = 100.0
    for _ in range(3000):
        pool = rng.choice(pools)
        # mostly forward, by less than a rest or a page's age; sometimes a caller's earlier `now`
        now += rng.choice([0.0, 0.001, 0.3, 1.0, 2.5, -0.2])
        if rng.random() < 0.6:
            event(rng, pool, now, tickets[pool.name])
        for p in pools:
            check(p, now)


def test_a_view_stands_between_changes_and_goes_at_the_end_of_a_rest():
    pool = unified_pool()
    first = pool.view(10.0)
    assert pool.view(10.5) is first  # nothing changed: the same snapshot
    pool.backends[0].rest(10.5)  # resting until 11.5
    resting = pool.view(10.6)
    assert resting is not first and resting.replicas == 2
    assert pool.view(11.4) is resting
    assert pool.view(11.5).replicas == 3  # its rest is over at 11.5, though nothing was written
