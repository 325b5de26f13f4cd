"""Fleets for the simulator: the profile book to plan with, and the planner's fleet for a trace."""

from __future__ import annotations

from ricardo.policies.planner import plan
from ricardo.profiles.catalog import ProfileBook, load_default_book


def book_for_slo(slo_tpot_ms: float, price_set: str = "melange", full_catalog: bool = False) -> ProfileBook:
    """The shipped profile book; its tables were measured (or estimated) at one TPOT SLO only."""
    book = load_default_book(price_set=price_set, include_estimated=full_catalog)
    if abs(slo_tpot_ms - book.slo_tpot_ms) > 1e-9:
        raise ValueError(f"capacity tables exist for a {book.slo_tpot_ms:g} ms TPOT SLO only; "
                         f"tables for {slo_tpot_ms:g} ms are not built yet")
    return book


def plan_fleet(requests, book: ProfileBook, headroom: float = 0.0) -> dict[str, int]:
    """The planner's cheapest fleet for the requests' size mix at their mean arrival rate."""
    span = requests[-1].arrival - requests[0].arrival
    rate = (len(requests) - 1) / span if span > 0 else float(len(requests))
    fractions = book.histogram([r.input_tokens for r in requests], [r.output_tokens for r in requests])
    result = plan(fractions * rate, book, headroom=headroom, drop_unservable=True)
    return {hw: n for hw, n in result.allocation.items() if n}
