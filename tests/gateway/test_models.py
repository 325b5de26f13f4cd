"""Models as first-class: which model a pool serves, which profile book a model goes by, and the book the gateway
ranks, checks and prices a request on (its model's, at its SLO where such tables are shipped)."""

import pytest
from pydantic import ValidationError
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.state import GatewayState
from ricardo.policies.types import SLO

TWO = ["llama2-7b", "llama3.1-8b"]


def config(models=TWO, **more) -> GatewayConfig:
    pools = more.pop("pools", [{"name": "a", "hardware": "A10G"}])
    return GatewayConfig.model_validate({"models": models, "pools": pools, **more})


def test_a_pools_model_is_its_own_else_its_only_listed_else_the_gateways_first():
    c = config(
        pools=[
            {"name": "own", "hardware": "L4", "model": "llama3.1-8b"},
            {"name": "listed", "hardware": "L4", "models": ["llama3.1-8b"]},
            {"name": "any", "hardware": "L4"},
        ]
    )
    own, listed, any_ = c.pools
    assert [c.pool_model(p) for p in c.pools] == ["llama3.1-8b", "llama3.1-8b", "llama2-7b"]
    # the models a request may name to reach the pool: `model` alone stands for itself; nothing said: all (as before)
    assert c.pool_models(own) == ["llama3.1-8b"] and c.pool_models(listed) == ["llama3.1-8b"]
    assert c.pool_models(any_) == TWO


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"pools": [{"name": "a", "hardware": "L4", "model": "gpt-2"}]}, "not in `models`"),
        ({"pools": [{"name": "a", "hardware": "L4", "model": "llama2-7b", "models": ["llama3.1-8b"]}]}, "not among"),
        ({"profiles": {"llama2-7b": "gpt-2"}}, "shipped books"),
        ({"profiles": {"other": "llama2-7b"}}, "shipped books"),
    ],
)
def test_a_model_that_is_not_served_or_a_book_that_is_not_shipped_is_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        config(**settings)


def test_a_model_goes_by_the_book_of_its_name_a_mapped_one_or_llama2():
    models = ["llama3.1-8b", "Llama-3.1-8B", "mine", "meta-llama/Llama-3.1-8B"]
    c = config(models=models, profiles={"meta-llama/Llama-3.1-8B": "llama3.1-8b"})
    assert [c.profile_of(m) for m in c.models] == ["llama3.1-8b", "llama3.1-8b", "llama2-7b", "llama3.1-8b"]


@pytest.fixture(scope="module")
def state():
    state = GatewayState(config(pools=[{"name": "old", "hardware": "A10G", "model": "llama2-7b"}]))
    state.apply(1, state.shared.model_dump(mode="json"))  # what `start` does with the store's version (no backends)
    return state


def test_each_model_has_its_book_and_context(state):
    at_120, at_40 = SLO(2000, 120), SLO(2000, 40)
    old, new = state.book_for("llama2-7b", at_120), state.book_for("llama3.1-8b", at_120)
    assert (old.model, new.model) == ("llama2-7b", "llama3.1-8b")
    assert old.source("A10G") == "measured" and new.source("A10G") == "estimated"
    assert (old.context_tokens, new.context_tokens) == (16384, 131072)
    assert old.rate_at("A10G", 1000, 200) != pytest.approx(new.rate_at("A10G", 1000, 200), rel=0.05)
    # the tables at a shipped tighter SLO are the model's own there
    assert (
        state.book_for("llama2-7b", at_40).slo_tpot_ms == 40 and state.book_for("llama2-7b", at_40).model == "llama2-7b"
    )
    tight = state.book_for("llama3.1-8b", at_40)
    assert (tight.model, tight.slo_tpot_ms) == ("llama3.1-8b", 40)
    # an A10G reads the 8B's 16 GB of weights in more than 40 ms: it serves nothing of it at that SLO
    assert tight.rate_at("A10G", 100, 100) == 0 < tight.rate_at("H100", 100, 100)
    # a model the gateway does not serve never reaches a pool (404); asked anyway, the first model's book answers
    assert state.book_for("gpt-2", at_120) is state.book


def test_the_same_request_on_the_same_pool_costs_what_its_models_book_says(state):
    pool, slo = state.pools["old"], SLO(2000, 120)
    old = state.request_cost(pool, 1000, 200, slo, "llama2-7b")
    new = state.request_cost(pool, 1000, 200, slo, "llama3.1-8b")
    price = state.book.price("A10G")
    assert old == pytest.approx(price / 3600 / state.book_for("llama2-7b", slo).rate_at("A10G", 1000, 200))
    assert new == pytest.approx(price / 3600 / state.book_for("llama3.1-8b", slo).rate_at("A10G", 1000, 200))
    assert old != pytest.approx(new, rel=0.05)
    assert state.request_cost(pool, 1000, 200, slo) == old, "without a model: the pool's"
