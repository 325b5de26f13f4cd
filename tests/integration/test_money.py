"""Honest money: on one run, the gateway's /metrics, its admin API and the load generator's report agree to the cent.

A real gateway in front of emulated pools at three prices (one an override); `ricardo loadgen` (a subprocess)
replays a small trace through it with a client key, and the official openai client adds whole answers and a
stream that did not ask for usage. The bill is the actual cost of the tokens used, priced on the pool that served
them: what each answer reports (`usage.ricardo_cost_usd`), what `ricardo_cost_usd_total` counts per pool (and the
status page shows, `GET /admin/status`), and what the key is charged (`GET /admin/keys`), summed, are the same
number. The estimate the pool was chosen on stays visible, as `expected`, and differs from the bill (the answers'
lengths were predicted).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.integration.harness import Cluster, metric, ricardo_command, wait_for

POOLS = {"l4": ("L4", 1), "a10g": ("A10G", 1), "a100": ("A100-80GB", 1)}
MODEL = "llama2-7b"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(
        POOLS,
        tmp_path_factory.mktemp("money"),
        speed=8.0,
        policy="round-robin",  # every pool serves, each at its own price
        pool_settings={"a100": {"price_per_hour": 5.25}},  # an override, not the price set's
    ).start()
    yield cluster
    cluster.stop()


def admin(cluster: Cluster, path: str, method: str = "GET", body: dict | None = None) -> dict:
    headers = {**cluster.admin_headers(), "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(cluster.url + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_metrics_admin_spend_and_loadgen_report_agree_to_the_cent(cluster, tmp_path):
    key = admin(cluster, "/admin/keys", "POST", {"name": "money"})
    lines = [
        {"timestamp_s": 0.04 * i, "input_tokens": 50 + 97 * (i % 7), "output_tokens": 3 + 29 * (i % 5)}
        for i in range(30)
    ]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "report"
    loadgen = subprocess.run(
        ricardo_command(
            *("loadgen", "--url", cluster.url, "--trace", str(trace), "--out", str(out), "--api-key", key["key"]),
            *("--no-progress", "--drain-timeout", "60"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loadgen.returncode == 0, loadgen.stderr + cluster.logs()
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert summary["overall"]["ok"] == len(lines), loadgen.stdout

    # whole answers, and a stream whose client did not ask for usage (its usage rides on the finish chunk)
    client = cluster.openai_client(api_key=key["key"])
    extra: dict[str, float] = {}
    for tokens in (7, 40, 120):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "How much? " * tokens}],
            extra_headers={"x-emulator-output-tokens": str(tokens)},
        )
        pool, usage = raw.headers["x-ricardo-pool"], raw.parse().usage
        assert usage.ricardo_expected_cost_usd == pytest.approx(float(raw.headers["x-ricardo-expected-cost-usd"]), 1e-5)
        extra[pool] = extra.get(pool, 0.0) + usage.ricardo_cost_usd
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-emulator-output-tokens": "9"},
    )
    chunks = list(raw.parse())
    assert all(c.choices for c in chunks) and chunks[-1].usage.completion_tokens == 9
    pool = raw.headers["x-ricardo-pool"]
    extra[pool] = extra.get(pool, 0.0) + chunks[-1].usage.ricardo_cost_usd

    answered = len(lines) + 4
    assert wait_for(lambda: metric(cluster.url, "ricardo_outcomes_total") >= answered, timeout=10)
    per_pool = {name: metric(cluster.url, "ricardo_cost_usd_total", pool=name) for name in POOLS}
    reported = {name: summary["pools"].get(name, {}).get("cost_usd") or 0.0 for name in POOLS}
    assert sum(1 for name in POOLS if reported[name] > 0) == len(POOLS), "every pool served and was billed"
    for name in POOLS:
        # the same figures added up in another order: equal far below a cent
        assert per_pool[name] == pytest.approx(reported[name] + extra.get(name, 0.0), rel=1e-9, abs=1e-12), name
    total = metric(cluster.url, "ricardo_cost_usd_total")
    assert total == pytest.approx(summary["overall"]["cost_usd"] + sum(extra.values()), rel=1e-9)
    status = {p["name"]: p for p in admin(cluster, "/admin/status")["pools"]}  # what the status page shows
    assert {name: status[name]["cost_usd"] for name in POOLS} == per_pool
    spend = {k["id"]: k["spend_today_usd"] for k in admin(cluster, "/admin/keys")["keys"]}[key["id"]]
    assert spend == pytest.approx(total, rel=1e-9)
    assert round(spend, 2) == round(total, 2) == round(summary["overall"]["cost_usd"] + sum(extra.values()), 2)

    # each request's bill is its tokens priced on the pool that served it; the estimate is another number
    by_pool: dict[str, list[dict]] = {}
    for record in records:
        by_pool.setdefault(record["pool"], []).append(record)
    for name, group in by_pool.items():
        tokens = [(r["prompt_tokens"], r["completion_tokens"]) for r in group]
        assert len(set(tokens)) > 1 and len({r["cost_usd"] for r in group}) > 1, name
    assert summary["overall"]["expected_cost_usd"] > 0
    assert summary["overall"]["expected_cost_usd"] != pytest.approx(summary["overall"]["cost_usd"], rel=1e-3)
    print(
        f"\n{answered} answers: /metrics ${total:.6f}, key spend ${spend:.6f}, "
        f"report ${summary['overall']['cost_usd']:.6f} + client ${sum(extra.values()):.6f}; "
        f"expected (before the answers) ${summary['overall']['expected_cost_usd']:.6f}"
    )
