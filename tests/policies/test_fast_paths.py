"""The decision's remembered and precomputed figures change nothing: `cost_aware` ranks a stream of requests the same,
to the bit, with the book's grid memo and `pair_estimate`'s memo as with both computed afresh every time."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ricardo.policies import routing
from ricardo.policies.routing import cost_aware
from ricardo.policies.types import SLO, PairSpec, PoolView, RequestShape
from ricardo.profiles.catalog import GRID_MEMO, ProfileBook, load_default_book


@pytest.fixture(scope="module")
def books() -> tuple[ProfileBook, ProfileBook]:
    """(the book as the gateway uses it, the same book locating every size afresh)."""
    remembered = load_default_book(price_set="aws", include_estimated=True)
    afresh = load_default_book(price_set="aws", include_estimated=True)
    afresh.grid_point = afresh.locate  # type: ignore[method-assign]
    return remembered, afresh


def fleet(book: ProfileBook, loads: list[float]) -> list[PoolView]:
    """A pool per hardware type with step costs, then two prefill/decode pairs, carrying `loads` (cycled)."""
    types = [hw for hw in book.hardware_names() if book.role(hw) is not None]
    pools = [
        PoolView(hw, hw, book.prices.get(hw, 2.0), 3, in_flight_load=loads[k % len(loads)])
        for k, hw in enumerate(types)
    ]
    for k, (prefill, decode) in enumerate([(types[0], types[1]), (types[-1], types[0])]):
        pair = PairSpec(prefill, decode, 1.5, 2.5, 100.0)
        load = loads[(len(pools) + k) % len(loads)]
        pools.append(PoolView(f"{prefill}>{decode}", decode, 4.0, 2, in_flight_load=load, pair=pair, decode_replicas=2))
        pools[-1] = PoolView(**{**_fields(pools[-1]), "decode_load": load / 2})
    return pools


def _fields(view: PoolView) -> dict[str, object]:
    return {name: getattr(view, name) for name in PoolView.__slots__}


def ranked(choices: list) -> list[tuple]:
    return [(c.pool, c.score, c.cost_usd, c.slack, c.reason, sorted(c.extra.items())) for c in choices]


sizes = st.tuples(
    st.integers(1, 40000),  # input tokens, past the last edge too
    st.integers(1, 4000),  # p50 output
    st.integers(0, 4000),  # p90 - p50
    st.sampled_from([40.0, 120.0, 77.5]),  # TPOT SLO
)


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(sizes, min_size=1, max_size=3 * GRID_MEMO),
    loads=st.lists(st.floats(0.0, 4.0), min_size=1, max_size=5),
)
def test_remembered_figures_rank_as_fresh_ones(books, monkeypatch_module, requests, loads) -> None:
    remembered, afresh = books
    for input_tokens, p50, extra, tpot in [(700, 250, 200, 120.0), *requests]:
        shape = RequestShape("llama2-7b", input_tokens, p50, p50 + extra, SLO(2000.0, tpot))
        fast = cost_aware(shape, fleet(remembered, loads), remembered)
        with monkeypatch_module.context() as patch:
            patch.setattr(routing, "pair_estimate", routing.pair_estimate.__wrapped__)
            slow = cost_aware(shape, fleet(afresh, loads), afresh)
        assert ranked(fast) == ranked(slow)
        # a size every pool serves: the pairs' figures were compared too
        if (input_tokens, p50, extra) == (700, 250, 200):
            assert len(fast) == len(fleet(remembered, loads))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40000), st.integers(0, 5000))
def test_alone_latency_is_its_parts(books, input_tokens, output_tokens) -> None:
    """`RoleParams.alone_seconds_per_token`, written out with the one-sequence step remembered, is exactly prefill
    alone + the decodes alone, per token."""
    book = books[0]
    for hw in book.hardware_names():
        params = book.role(hw)
        if params is None:
            continue
        out = max(1, output_tokens)
        decodes = out - 1
        context = decodes * input_tokens + decodes * (decodes + 1) / 2
        prefill, step = params.prefill_alone(input_tokens), params.decode_fixed(1)
        expected = (prefill + decodes * step + context * params.per_context_token) / out
        assert params.alone_seconds_per_token(input_tokens, output_tokens) == expected
        assert math.isfinite(expected)
