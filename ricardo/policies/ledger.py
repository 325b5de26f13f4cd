"""The live accounting of one pool, kept by the same code in the gateway and in the simulator.

A `PoolLedger` is fed the events of the requests it carries (dispatched, first token, finished, abandoned),
each with the caller's own clock (monotonic seconds in the gateway, virtual seconds in the simulator), and
builds the `PoolView` a policy ranks. So what the simulator evaluates is the gateway's decision as a whole:
the same load accounting and live estimates under the same policy function, not the policy alone.

Load: each request in flight holds `capacity_share` of one replica (its size at the profile's operating
point, at most one replica), at its predicted p90 length: an uncertain answer counts as the longer one, since
an overloaded pool costs the SLO of everything on it while a pool charged too much only sends its next request
elsewhere. A disaggregated pair's requests hold a share of a prefill replica and of a decode replica each
(`pair_shares`, from the role model), summed apart: `in_flight_load` is the prefill role's, `decode_load` the
decode role's. `median_load` sums the same requests charged at their p50 answers (a pair's at the p90), which
`cost_aware` reads to tell a real overload from its own caution.

Live estimates: exponentially weighted means over finished requests of TTFT and of latency per output token
(`policies.live`), for display and for policies that want them; and the pool's lateness, the same kind of mean
of each request's latency per token over what the capacity model predicted for it (its real size at the
utilization it was dispatched into), shown on the status page: where a profile does not match its backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ricardo.policies.live import ewma, latency_per_token_ms
from ricardo.policies.routing import capacity_share, pair_estimate, pair_shares, predicted_slack
from ricardo.policies.types import Choice, PairSpec, PoolView, RequestShape
from ricardo.profiles.catalog import ProfileBook


@dataclass(eq=False, slots=True)
class Ticket:
    """One request in flight on a pool: what the ledger charged it, so that exactly that is released."""

    load: float
    started: float
    decode_load: float = 0.0  # of a pair: the decode role's share (`load` is the prefill's)
    median_load: float = 0.0
    first_token_at: float | None = None
    open: bool = True
    # what the policy predicted of the request here, so that its finish can say how late the pool ran against it:
    # the pool's utilization with the request added (None: not predicted), the book, the prompt and SLO it used
    utilization: float | None = None
    book: ProfileBook | None = None
    input_tokens: int = 0
    slo_tpot_ms: float = 0.0


class PoolLedger:
    """Requests in flight on one pool, their load, and the pool's live latency estimates."""

    def __init__(
        self,
        name: str,
        hardware: str,
        price_per_hour: float,
        models: tuple[str, ...] = (),
        pair: PairSpec | None = None,
    ) -> None:
        self.name = name
        self.pair = pair
        self.hardware = hardware
        self.price_per_hour = price_per_hour
        self.models = models
        self.in_flight = 0
        self.in_flight_load = 0.0
        self.decode_load = 0.0
        self.median_load = 0.0
        self.ttft_ms: float | None = None
        self.latency_per_token_ms: float | None = None  # request latency / output tokens (policies/live.py)
        self.lateness: float | None = None  # observed / predicted latency per token, over recent requests
        self._view: PoolView | None = None  # until the next event or replica count change

    def dispatch(self, shape: RequestShape, book: ProfileBook, now: float, choice: Choice | None = None) -> Ticket:
        """A request starts on this pool: charge its load. `choice`: the policy's choice of this pool, if it carries
        the shares it computed while ranking (`cost_aware`'s `extra["shares"]`), which are then not computed again."""
        extra = choice.extra if choice is not None and choice.pool == self.name else {}
        carried = extra.get("shares")
        load, decode = self.shares(shape, book) if carried is None else carried
        self.in_flight += 1
        self.in_flight_load += load
        self.decode_load += decode
        self._view = None
        ticket = Ticket(load, now, decode)
        # the ranking asked the book this size's rate already: `rate_at` remembers it, so this is a few float operations
        ticket.median_load = (
            capacity_share(book, self.hardware, shape.input_tokens, shape.output_p50, shape.slo)
            if self.pair is None
            else load
        )
        self.median_load += ticket.median_load
        if self.pair is None and extra.get("utilization") is not None:
            ticket.utilization, ticket.book = extra["utilization"], book
            ticket.input_tokens, ticket.slo_tpot_ms = shape.input_tokens, shape.slo.tpot_ms
        return ticket

    def shares(self, shape: RequestShape, book: ProfileBook) -> tuple[float, float]:
        """(share of a replica, of a pair: of a prefill replica; share of a decode replica) the request holds here."""
        if self.pair is None:
            return capacity_share(book, self.hardware, shape.input_tokens, shape.output_p90, shape.slo), 0.0
        cost = pair_estimate(book, self.pair, shape.input_tokens, shape.output_p90, shape.slo)
        # a size the role model cannot price holds a whole replica of each role, as `capacity_share` charges it
        if cost is None or not cost.servable:
            return 1.0, 1.0
        return pair_shares(book, cost, shape.output_p90, shape.slo)

    def first_token(self, ticket: Ticket, now: float) -> None:
        if ticket.first_token_at is None:
            ticket.first_token_at = now

    def finish(self, ticket: Ticket, now: float, output_tokens: int | None) -> None:
        """The request ended; with its output token count (a clean answer), learn its latency."""
        if not self._release(ticket):
            return
        if ticket.first_token_at is not None:
            self.ttft_ms = ewma(self.ttft_ms, (ticket.first_token_at - ticket.started) * 1000)
        if output_tokens is not None:
            observed = latency_per_token_ms(ticket.started, now, output_tokens)
            self.latency_per_token_ms = ewma(self.latency_per_token_ms, observed)
            if observed is not None and ticket.utilization is not None and ticket.book is not None:
                self._learn_lateness(ticket, observed, output_tokens)

    def _learn_lateness(self, ticket: Ticket, observed_ms: float, output_tokens: int) -> None:
        """Compare the request's latency per token with what the capacity model predicts of a request of its real
        size at the utilization it was dispatched into (`predicted_slack`), and follow the ratio. The ratio, not
        the latency: a pool's latency is that of the mix it happens to serve, while the ratio is the model's
        error on that mix, which is what a pool of another type, another engine or a noisy neighbour changes."""
        assert ticket.book is not None and ticket.utilization is not None
        alone = ticket.book.alone_seconds_per_token(self.hardware, ticket.input_tokens, output_tokens)
        if alone is None or ticket.slo_tpot_ms <= 0:
            return
        predicted = 1.0 - predicted_slack(alone * 1000.0 / ticket.slo_tpot_ms, ticket.utilization)
        ratio = observed_ms / ticket.slo_tpot_ms / predicted if predicted > 0 else math.nan
        # a client's SLO so tight (a denormal) that both sides overflow makes inf / inf: one NaN sample is NaN for good
        if math.isfinite(ratio):
            self.lateness = ewma(self.lateness, ratio)

    def abandon(self, ticket: Ticket) -> None:
        """The attempt failed or was given up: release its load, learn nothing from it."""
        self._release(ticket)

    def _release(self, ticket: Ticket) -> bool:
        if not ticket.open:  # released once only, whatever path ends the request
            return False
        ticket.open = False
        self.in_flight -= 1
        self.in_flight_load = max(0.0, self.in_flight_load - ticket.load) if self.in_flight else 0.0
        self.decode_load = max(0.0, self.decode_load - ticket.decode_load) if self.in_flight else 0.0
        self.median_load = max(0.0, self.median_load - ticket.median_load) if self.in_flight else 0.0
        self._view = None
        return True

    def reprice(self, price_per_hour: float, models: tuple[str, ...], pair: PairSpec | None = None) -> None:
        """New prices (of a pair: its spec with the new role prices) or models."""
        if (price_per_hour, models, pair) != (self.price_per_hour, self.models, self.pair):
            self.price_per_hour, self.models, self.pair, self._view = price_per_hour, models, pair, None

    def view(self, replicas: int, decode_replicas: int = 0, external_load: float = 0.0) -> PoolView:
        """The pool as a policy sees it, given how many replicas (of a pair: prefill, decode) can take a request now
        and the load its backends carry beyond this ledger's (`policies/external.py`; none in the simulator)."""
        view = self._view
        if (
            view is None
            or view.replicas != replicas
            or view.decode_replicas != decode_replicas
            or view.external_load != external_load
        ):
            view = self._view = PoolView(
                name=self.name,
                hardware=self.hardware,
                price_per_hour=self.price_per_hour,
                replicas=replicas,
                in_flight=self.in_flight,
                in_flight_load=self.in_flight_load,
                ttft_ms=self.ttft_ms,
                latency_per_token_ms=self.latency_per_token_ms,
                models=self.models,
                role="pair" if self.pair else "unified",
                prefill_hardware=self.pair.prefill_hardware if self.pair else "",
                decode_hardware=self.pair.decode_hardware if self.pair else "",
                pair=self.pair,
                decode_replicas=decode_replicas,
                decode_load=self.decode_load,
                external_load=external_load,
                lateness=self.lateness,
                median_load=self.median_load,
            )
        return view
