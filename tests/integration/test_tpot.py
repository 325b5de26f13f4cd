"""One TPOT: the gateway, the load generator and the SLO they judge by use one definition, (latency - TTFT) /
(output tokens - 1); Mélange's latency / output tokens is reported apart, as latency per token.

A real gateway in front of one emulated pool; `ricardo loadgen` streams through it. The gateway's TPOT histogram
and the load generator's TPOT of the same requests are the same measure taken at two ends of one connection, so
they agree closely; the latency per token (prefill included) is another, larger number. Without SLO flags the
load generator judges by the SLO the gateway states (`GET /admin/slo`, the embedded default config's).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from ricardo.cli.simulate import add_commands as simulate_commands
from ricardo.defaults import default_slo_ms
from ricardo.gateway.config import SLOConfig, load_config

from tests.integration.harness import Cluster, metric, ricardo_command, wait_for

OUTPUT_TOKENS = 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster({"a100": ("A100-80GB", 1)}, tmp_path_factory.mktemp("tpot"), speed=1.0).start()
    yield cluster
    cluster.stop()


def test_gateway_and_loadgen_measure_tpot_alike_and_judge_by_the_gateways_slo(cluster, tmp_path):
    lines = [{"timestamp_s": 0.3 * i, "input_tokens": 3000, "output_tokens": OUTPUT_TOKENS} for i in range(4)]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "report"
    run = subprocess.run(
        [*ricardo_command("loadgen", "--url", cluster.url, "--trace", str(trace), "--out", str(out)), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr + cluster.logs()
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert [r["completion_tokens"] for r in records] == [OUTPUT_TOKENS] * len(lines)

    request = urllib.request.Request(cluster.url + "/admin/slo", headers=cluster.admin_headers())
    with urllib.request.urlopen(request, timeout=5) as response:
        assert summary["slo"] == json.loads(response.read())  # no SLO flags: the gateway's own

    name = "ricardo_time_per_output_token_seconds"
    assert wait_for(lambda: metric(cluster.url, name + "_count") == len(lines), timeout=10)
    gateway_tpot_ms = metric(cluster.url, name + "_sum") / len(lines) * 1000
    loadgen_tpot_ms = sum(r["tpot_ms"] for r in records) / len(records)
    latency_per_token_ms = sum(r["latency_per_token_ms"] for r in records) / len(records)
    for r in records:
        assert r["tpot_ms"] == pytest.approx((r["e2e_ms"] - r["ttft_ms"]) / (OUTPUT_TOKENS - 1), abs=1e-3)
    # the gateway judges each stream by its SLO as loadgen does (what the status page shows as SLO met)
    judged = metric(cluster.url, "ricardo_slo_judged_total")
    met = metric(cluster.url, "ricardo_slo_judged_total", met="true")
    assert judged == len(lines) and met / judged == summary["overall"]["slo_attainment"]
    # two ends of one connection: milliseconds apart over a decode of a second or so
    assert gateway_tpot_ms == pytest.approx(loadgen_tpot_ms, rel=0.15)
    assert latency_per_token_ms > loadgen_tpot_ms * 1.05, "a 3,000-token prefill weighs in latency per token only"
    print(
        f"\nTPOT ms: gateway {gateway_tpot_ms:.1f}, loadgen {loadgen_tpot_ms:.1f}; "
        f"latency per token {latency_per_token_ms:.1f}"
    )


def test_one_default_slo_for_gateway_loadgen_and_simulator():
    import argparse

    from ricardo.loadgen.cli import DEFAULT_SLO_TPOT_MS, DEFAULT_SLO_TTFT_MS

    embedded = load_config(None).shared().slo
    assert (embedded.ttft_ms, embedded.tpot_ms) == default_slo_ms() == (DEFAULT_SLO_TTFT_MS, DEFAULT_SLO_TPOT_MS)
    assert SLOConfig() == embedded  # a config file without `slo` gets the same
    parser = argparse.ArgumentParser()
    simulate_commands(parser.add_subparsers())
    assert parser.parse_args(["simulate", "--trace", "x"]).slo_tpot_ms == embedded.tpot_ms
