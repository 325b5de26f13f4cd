"""A type priced at 0 $/h (owned GPUs: `PUT /admin/pools/{pool}/price {"price_per_hour": 0}` and `ricardo plan --price
A10G=0` take it) costs nothing whatever its count, so the solver was free to return any count that fits: it returned
its upper bound, ceil(load) + 1, and the scaling hints asked for a replica more than the load needs."""

import math

import numpy as np
import pytest
from ricardo.policies.planner import plan
from ricardo.profiles.catalog import load_default_book


@pytest.mark.parametrize("rate", [0.5, 3.0, 10.0])
def test_a_free_type_gets_only_the_replicas_its_load_needs(rate):
    book = load_default_book()
    rates = np.zeros(book.shape)
    rates[0, 0] = rates[3, 2] = rate
    result = plan(rates, book, {"A10G": 0.0, "L4": 0.7})
    assert result.allocation["A10G"] == math.ceil(result.load["A10G"]), (result.allocation, result.load)
    priced = plan(rates, book, {"A10G": 1.01}, only=["A10G"])
    assert result.allocation["A10G"] <= priced.allocation["A10G"]
