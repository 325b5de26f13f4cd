"""`ricardo demo`: emulated pools, the gateway on its embedded config, a one-minute replay, a report."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ricardo.gateway.config import default_config_path, load_config


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="emulated pools + gateway + a short Azure replay, then a report",
        description="Start emulated L4/A10G/A100/H100/CPU pools and the gateway on the "
        "embedded config, replay the Azure conversation trace through it, "
        "print the report and stop everything.",
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of trace to replay (default: 60)")
    p.add_argument("--trace", default="azure-conv")
    p.add_argument("--out", default="out/demo", help="where the load generator writes its report")
    p.set_defaults(func=_demo)


def ricardo_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from ricardo.cli import main; sys.exit(main())", *args]


def wait_ready(url: str, process: subprocess.Popen, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise SystemExit(f"{name} not ready at {url} after {timeout:.0f}s")


def _demo(args: argparse.Namespace) -> int:
    config_path = str(default_config_path())
    config = load_config(None)
    gateway_url = f"http://{config.host}:{config.port}"
    logs = Path(args.out)
    logs.mkdir(parents=True, exist_ok=True)
    children: list[subprocess.Popen] = []
    try:
        with open(logs / "emulator.log", "w") as emulator_log, open(logs / "gateway.log", "w") as gateway_log:
            emulator = subprocess.Popen(
                ricardo_command("emulate", "--config", config_path), stdout=emulator_log, stderr=subprocess.STDOUT
            )
            children.append(emulator)
            for pool in config.pools:
                for url in pool.backends:
                    wait_ready(f"{str(url).rstrip('/')}/v1/models", emulator, "ricardo demo: emulator")
            gateway = subprocess.Popen(ricardo_command("serve"), stdout=gateway_log, stderr=subprocess.STDOUT)
            children.append(gateway)
            wait_ready(f"{gateway_url}/readyz", gateway, "ricardo demo: gateway")
            print(
                f"gateway on {gateway_url} with pools: "
                + ", ".join(f"{p.name} ({p.hardware} x{len(p.backends)})" for p in config.pools),
                flush=True,
            )
            loadgen = subprocess.run(
                ricardo_command(
                    "loadgen",
                    "--url",
                    gateway_url,
                    "--trace",
                    args.trace,
                    "--duration",
                    str(args.duration),
                    "--out",
                    str(logs),
                )
            )
            cost = _print_pool_totals(gateway_url, [p.name for p in config.pools])
            _print_agreement(logs / "summary.json", cost)
            return loadgen.returncode
    finally:
        for child in reversed(children):
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def _print_agreement(summary_path: Path, cost: dict[str, float]) -> None:
    """The load generator's bill beside the gateway's: the same answers' actual costs, so the same dollars."""
    try:
        overall = json.loads(summary_path.read_text())["overall"]
    except (OSError, ValueError, KeyError):
        return
    billed, expected = overall.get("cost_usd"), overall.get("expected_cost_usd")
    if billed is None:
        return
    print(
        f"billed: ${billed:.4f} in the load generator's report, ${sum(cost.values()):.4f} on /metrics"
        + (f" (expected before the answers: ${expected:.4f})" if expected is not None else "")
    )


def _print_pool_totals(gateway_url: str, pools: list[str]) -> dict[str, float]:
    """The gateway's own view: every pool, including those the policy chose not to use."""
    from prometheus_client.parser import text_string_to_metric_families

    token = os.environ.get("RICARDO_METRICS_TOKEN")  # the demo's gateway asks for it if it is set
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    page = urllib.request.Request(f"{gateway_url}/metrics", headers=headers)
    with urllib.request.urlopen(page, timeout=5) as response:
        text = response.read().decode()
    requests = {p: 0.0 for p in pools}
    cost = {p: 0.0 for p in pools}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            pool = sample.labels.get("pool")
            if pool not in requests:
                continue
            if sample.name == "ricardo_requests_total":
                requests[pool] += sample.value
            elif sample.name == "ricardo_cost_usd_total":
                cost[pool] += sample.value
    print("\ngateway totals per pool (from /metrics; cost as billed, the report's `cost $`):")
    print(f"  {'pool':<8} {'requests':>9} {'cost $':>12}")
    for pool in pools:
        print(f"  {pool:<8} {requests[pool]:>9.0f} {cost[pool]:>12.5f}")
    print(json.dumps({"requests": requests, "cost_usd": cost}))
    return cost
