"""Gateway overhead: ricardo against direct calls and its peers, side by side and interleaved, in one run.

    .venv/bin/python bench/overhead/run.py [--duration 5] [--rounds 2] [--connections 1,32,128]
        [--targets direct,relay,ricardo,vllm-router,litellm] [--workers 1] [--baseline DIR] [--json out.json]

A trivial backend (backend.py: 16 tokens at once, OpenAI-shaped, with usage) stands behind every target:
- `direct`: the backend itself, the floor;
- `relay`: relay.py, the thinnest relay on the gateway's own stack (aiohttp server and client, uvloop, the gateway's
  connector), no logic at all: the floor of that stack, what ricardo would cost without its logic;
- `relay-native`: relay_native.py, the same relay on a Rust HTTP stack from PyPI (granian's server through RSGI,
  pyreqwest's client, uvloop; versions pinned in PEERS), from a throwaway venv like the peers': how far Python stands
  from a Rust router when both HTTP legs are Rust's and only the handler is Python (not among the default targets);
- `ricardo`: the gateway with five pools, cost-aware, predictor and metrics on (gateway.yaml); `--workers N`
  serves it with N worker processes (`ricardo serve --workers`), and `--workers 1,2` measures both;
- `vllm-router`: PyPI `vllm-router` (Rust), round robin over the one backend;
- `litellm`: LiteLLM proxy, one worker, `LITELLM_LOCAL_MODEL_COST_MAP=True` (no cost map fetched).
`--baseline DIR` adds the gateway run from another source tree (`git archive <commit> ricardo | tar -x -C DIR`),
for before/after figures from the same run. Each peer is installed from PyPI into a throwaway venv of its own
under ~/.cache/ricardo/bench-venvs/ (never the project's); one that fails to install or start is reported as
skipped, with the reason.

The load is the same for every target: wrk (Debian's `wrk`, installed here with apt-get when missing and
allowed; else client.py, an aiohttp client in a process of its own), closed loop, non-streaming and streaming,
at each connection count, `--duration` seconds a cell. Rounds are interleaved: each round runs every cell on
every target in turn (each round starting one target further on, and once every target is idle again), so a
neighbour's load on this shared machine falls on all targets alike.

Per target and cell it prints the median over rounds of req/s, p50 and p99, the p50 added over direct, and the
CPU ms per request of the target's processes with the backend's (utime + stime from /proc, children included,
the load client excluded) and of the target's processes alone ("own": the backend's left out; the backend's own for
`direct`); then ricardo's ratios to each peer in the same run (the relays among them), and the
relay's and relay-native's to each peer that is not ricardo (how far the stack alone stands from a Rust router).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
VENVS = Path(os.environ.get("RICARDO_BENCH_VENVS") or Path.home() / ".cache" / "ricardo" / "bench-venvs")
PEERS = {
    "vllm-router": ["vllm-router==0.1.17"],
    "litellm": ["litellm[proxy]"],
    "relay-native": ["granian==2.8.7", "pyreqwest==0.15.1", "uvloop==0.23.0"],
}
MODEL = "llama2-7b"
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
PATH = "/v1/chat/completions"
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def body(stream: bool) -> str:
    doc: dict = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
    if stream:  # usage asked by every client, so the backend does the same work for every target
        doc |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(doc)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- processes ----------------------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    url: str  # base URL
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.logs if p.exists())


def spawn(target: Target, args: list[str], logdir: Path, env: dict[str, str] | None = None) -> None:
    log = logdir / f"{target.name}-{len(target.logs)}.log"
    with log.open("wb") as out:
        # run in the log directory: `python -m` puts its working directory first on sys.path, before PYTHONPATH, so
        # started from a checkout every gateway (the baseline's too) would import that checkout's ricardo
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=logdir,
        )
    target.processes.append(process)
    target.logs.append(log)


def stop(target: Target) -> None:
    for process in target.processes:
        if process.poll() is None:
            process.terminate()
    for process in target.processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(target: Target, timeout: float) -> None:
    """Ready when a non-streamed completion through it answers 200."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        target.url + PATH, data=body(False).encode(), headers={"Content-Type": "application/json"}
    )
    while time.monotonic() < deadline:
        for process in target.processes:
            if process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode}: {target.output()}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"not ready after {timeout:.0f} s: {target.output()}")


def peer_venv(name: str, install: bool) -> Path:
    """The peer's throwaway venv, installed on first use; RuntimeError with the reason if that fails."""
    venv = VENVS / name
    stamp = venv / ".installed"
    if stamp.exists():
        return venv
    if not install:
        raise RuntimeError(f"not installed in {venv} (--no-install)")
    print(f"installing {name} into {venv} (once; a few minutes) ...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    VENVS.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", str(venv)], [str(venv / "bin" / "pip"), "install", "-q", *PEERS[name]]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:3])} failed: {(done.stderr or done.stdout)[-500:]}")
    stamp.touch()
    return venv


def version_of(venv: Path, package: str) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "?"


def start_ricardo(name: str, backend_ports: list[int], workers: int, logdir: Path, source: str | None = None) -> Target:
    config = yaml.safe_load((HERE / "gateway.yaml").read_text())
    port = free_port()
    config["port"] = port
    for pool, backend in zip(config["pools"], backend_ports, strict=True):
        pool["backends"] = [f"http://127.0.0.1:{backend}"]
    path = logdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    target = Target(name, f"http://127.0.0.1:{port}")
    args = [sys.executable, "-m", "ricardo.cli", "serve", "--config", str(path), "--log-level", "WARNING"]
    if workers > 1:  # workers share state through Redis: a private redis-server, counted as the target's
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server): --workers needs it")
        redis_port = free_port()
        redis = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        spawn(target, redis, logdir)
        args += ["--workers", str(workers), "--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
    # the source tree is imported from PYTHONPATH, this one's as another's (an earlier commit's), before the installed
    # package: the baseline and the current gateway are started alike
    spawn(target, args, logdir, env={"PYTHONPATH": source or str(HERE.parent.parent)})
    wait_ready(target, 90)
    deadline = time.monotonic() + 90
    while workers > 1 and f"({workers} workers)" not in target.output():  # the parent says so once all listen
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all {workers} workers listening after 90 s: {target.output()}")
        time.sleep(0.2)
    return target


def start_relay(backend_port: int, logdir: Path) -> Target:
    port = free_port()
    target = Target("relay", f"http://127.0.0.1:{port}")
    args = [
        sys.executable,
        str(HERE / "relay.py"),
        "--port",
        str(port),
        "--backend",
        f"http://127.0.0.1:{backend_port}",
    ]
    spawn(target, args, logdir, env={"PYTHONPATH": str(HERE.parent.parent)})  # this tree's ricardo, as the gateway's
    wait_ready(target, 30)
    return target


def start_relay_native(backend_port: int, logdir: Path, install: bool) -> Target:
    venv = peer_venv("relay-native", install)
    port = free_port()
    target = Target("relay-native", f"http://127.0.0.1:{port}")
    args = [str(venv / "bin" / "python"), str(HERE / "relay_native.py"), "--port", str(port)]
    args += ["--backend", f"http://127.0.0.1:{backend_port}"]
    spawn(target, args, logdir)
    wait_ready(target, 30)
    return target


def start_vllm_router(backend_port: int, logdir: Path, install: bool) -> Target:
    venv = peer_venv("vllm-router", install)
    port = free_port()
    target = Target(f"vllm-router {version_of(venv, 'vllm-router')}", f"http://127.0.0.1:{port}")
    args = [str(venv / "bin" / "vllm-router"), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--worker-urls", f"http://127.0.0.1:{backend_port}", "--policy", "round_robin"]
    args += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()), "--log-level", "warning"]
    spawn(target, args, logdir)
    wait_ready(target, 60)
    return target


def start_litellm(backend_port: int, logdir: Path, install: bool) -> Target:
    venv = peer_venv("litellm", install)
    port = free_port()
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"http://127.0.0.1:{backend_port}/v1",
                    "api_key": "none",
                },
            }
        ],
        # no client auth, as for the other targets (newer releases refuse to start without a key unless told)
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }
    path = logdir / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    target = Target(f"litellm {version_of(venv, 'litellm')}", f"http://127.0.0.1:{port}")
    args = [str(venv / "bin" / "litellm"), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--num_workers", "1"]
    spawn(target, args, logdir, env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"})
    wait_ready(target, 180)
    return target


# -- measuring ----------------------------------------------------------------------------------------------
def cpu_ticks(roots: list[int]) -> int:
    """utime + stime of the processes and all their descendants, in clock ticks."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    wanted = set(roots)
    grew = True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in wanted} - wanted
        grew = bool(more)
        wanted |= more
    return sum(ticks.get(pid, 0) for pid in wanted)


def find_client(install: bool, choice: str) -> str:
    if choice == "python" or (choice == "auto" and shutil.which("wrk") is None and not install):
        return "python"
    if shutil.which("wrk") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print("wrk is not installed: installing Debian's wrk with apt-get (once) ...", flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, env=env)
        if shutil.which("wrk") is None:
            if choice == "wrk":
                raise SystemExit("wrk is not installed and apt-get could not install it: apt-get install wrk")
            print("wrk could not be installed: using client.py (aiohttp, heavier per request)", flush=True)
            return "python"
    return "wrk"


def load(client: str, url: str, stream: bool, connections: int, duration: int) -> dict:
    env = {**os.environ, "BENCH_BODY": body(stream)}
    if client == "wrk":
        args = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(HERE / "post.lua")]
        args.append(url + PATH)
    else:
        args = [sys.executable, str(HERE / "client.py"), url + PATH, "--connections", str(connections)]
        args += ["--duration", str(duration)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=duration + 60)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{client} printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")


def settle(roots: list[int], quiet_share: float = 0.05, window_s: float = 0.3, patience_s: float = 20.0) -> None:
    """Wait until the processes are idle (under `quiet_share` of a core over `window_s`): a target still working
    through the requests the client left in flight (LiteLLM, seconds behind at 128 connections) would otherwise
    eat into the next target's cell. That tail's CPU is counted nowhere, as its requests are not."""
    deadline = time.monotonic() + patience_s
    last = cpu_ticks(roots)
    while time.monotonic() < deadline:
        time.sleep(window_s)
        now = cpu_ticks(roots)
        if (now - last) * TICK_S <= quiet_share * window_s:
            return
        last = now


def measure(client: str, target: Target, backend: Target, stream: bool, connections: int, duration: int) -> dict:
    own = [p.pid for p in target.processes]
    roots = own + [p.pid for p in backend.processes if target is not backend]
    before, own_before = cpu_ticks(roots), cpu_ticks(own)
    result = load(client, target.url, stream, connections, duration)
    cpu_s = (cpu_ticks(roots) - before) * TICK_S
    own_cpu_s = (cpu_ticks(own) - own_before) * TICK_S
    seconds = result["duration_us"] / 1e6
    ok = result["requests"] - result["non2xx"]
    return {
        "rps": ok / seconds,
        # latencies of completed requests: none when none completed (wrk then reports 0)
        "p50_ms": result["p50_us"] / 1000 if ok else None,
        "p99_ms": result["p99_us"] / 1000 if ok else None,
        "errors": result["errors"] + result["non2xx"],
        "cpu_s": cpu_s,
        "cpu_ms_per_request": 1000 * cpu_s / ok if ok else None,
        "own_cpu_s": own_cpu_s,
        "own_cpu_ms_per_request": 1000 * own_cpu_s / ok if ok else None,
        "requests": ok,
    }


def summarise(runs: list[dict]) -> dict:
    """Medians over rounds; latencies over the rounds that completed requests, CPU as total CPU over total requests
    (None where no request completed: a target that finished none in a cell has no latency or cost per request)."""
    requests = sum(r["requests"] for r in runs)
    completed = [r for r in runs if r["requests"]]
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "rps_range": [min(r["rps"] for r in runs), max(r["rps"] for r in runs)],
        "p50_ms": statistics.median(r["p50_ms"] for r in completed) if completed else None,
        "p99_ms": statistics.median(r["p99_ms"] for r in completed) if completed else None,
        "errors": sum(r["errors"] for r in runs),
        "cpu_ms_per_request": 1000 * sum(r["cpu_s"] for r in runs) / requests if requests else None,
        "own_cpu_ms_per_request": 1000 * sum(r["own_cpu_s"] for r in runs) / requests if requests else None,
        "rounds": runs,
    }


# -- the run ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per cell and round (%(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (%(default)s)")
    parser.add_argument("--connections", default="1,32,128")
    parser.add_argument("--modes", default="nonstream,stream")
    parser.add_argument("--targets", default="direct,relay,ricardo,vllm-router,litellm")
    parser.add_argument("--workers", default="1", help="ricardo's worker processes; several: one target each")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also drive ricardo from this source tree (e.g. `git worktree add DIR <commit>`) as ricardo@baseline",
    )
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--no-install", action="store_true", help="install nothing (wrk, peers): skip instead")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)
    connections = [int(c) for c in args.connections.split(",")]
    modes = args.modes.split(",")
    wanted = args.targets.split(",")
    install = not args.no_install
    client = find_client(install, args.client)
    load_before = os.getloadavg()  # the machine may be shared: how busy it was says how far the figures carry
    logdir = Path(tempfile.mkdtemp(prefix="ricardo-overhead-"))
    backend_ports = [free_port() for _ in range(5)]
    backend = Target("direct", f"http://127.0.0.1:{backend_ports[0]}")
    spawn(backend, [sys.executable, str(HERE / "backend.py"), "--ports", ",".join(map(str, backend_ports))], logdir)
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    try:
        wait_ready(backend, 30)
        for name in wanted:
            try:
                if name == "direct":
                    targets.append(backend)
                elif name == "relay":
                    targets.append(start_relay(backend_ports[0], logdir))
                elif name == "relay-native":
                    targets.append(start_relay_native(backend_ports[0], logdir, install))
                elif name == "ricardo":
                    for workers in (int(w) for w in args.workers.split(",")):
                        label = "ricardo" if workers == 1 else f"ricardo x{workers}"
                        targets.append(start_ricardo(label, backend_ports, workers, logdir))
                    if args.baseline:
                        targets.append(start_ricardo("ricardo@baseline", backend_ports, 1, logdir, args.baseline))
                elif name == "vllm-router":
                    targets.append(start_vllm_router(backend_ports[0], logdir, install))
                elif name == "litellm":
                    targets.append(start_litellm(backend_ports[0], logdir, install))
                else:
                    raise SystemExit(f"unknown target {name}")
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                skipped[name] = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
                print(f"skipped {name}: {skipped[name]}", flush=True)
        for target in targets:  # warm up: connection pools, caches, the predictor's first calls
            load(client, target.url, False, 8, 1)
        cells = [(mode, c) for mode in modes for c in connections]
        raw: dict[str, dict[str, list[dict]]] = {t.name: {f"{m} c{c}": [] for m, c in cells} for t in targets}
        for round_ in range(args.rounds):
            order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]  # none always follows one
            for mode, c in cells:
                for target in order:
                    settle([p.pid for t in targets for p in t.processes])
                    figures = measure(client, target, backend, mode == "stream", c, args.duration)
                    raw[target.name][f"{mode} c{c}"].append(figures)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for target in targets:
            if target is not backend:
                stop(target)
        stop(backend)
    results = {name: {cell: summarise(runs) for cell, runs in by_cell.items()} for name, by_cell in raw.items()}
    report = {
        "command": " ".join(["bench/overhead/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "client": client,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "results": results,
        "skipped": skipped,
        "ratios": ratios(results),
    }
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def ratios(results: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Each ricardo target against each peer (the relays and the baseline among them), and each relay (relay,
    relay-native) against each peer that is not ricardo (relay-native against relay too), per cell: req/s, CPU per
    request and p99, mine / peer."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    relays = [n for n in results if n in ("relay", "relay-native")]
    for mine in (n for n in results if (n.startswith("ricardo") and n != "ricardo@baseline") or n in relays):
        if mine in relays:  # the Rust routers and LiteLLM; relay-native against the relay too
            others = [n for n in results if n != "direct" and "ricardo" not in n and n not in relays]
            peers = others if mine == "relay" else ["relay", *others] if "relay" in results else others
        else:
            peers = [
                n for n in results if n not in ("direct", mine) and (n == "ricardo@baseline" or "ricardo" not in n)
            ]
        for peer in peers:
            out[f"{mine} / {peer}"] = {
                cell: {what: _ratio(r[what], results[peer][cell][what]) for what in RATIOS}
                for cell, r in results[mine].items()
            }
    return out


RATIOS = ("rps", "cpu_ms_per_request", "own_cpu_ms_per_request", "p99_ms")


def _ratio(mine: float | None, peer: float | None) -> float | None:
    """mine / peer; None where either is unknown or the peer's is 0 (a peer that completed no request)."""
    return mine / peer if mine is not None and peer else None


def _figure(value: float | None, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def table(report: dict) -> str:
    results = report["results"]
    direct = results.get("direct", {})
    load = report["load_average_before_after"]
    lines = [
        f"client {report['client']}, {report['duration_s']:g} s per cell, {report['rounds']} interleaved rounds, "
        f"{report['cpus']} CPUs (load average {load[0]:.1f} before, {load[1]:.1f} after); medians over rounds",
        "",
        "| target | load | req/s | p50 ms | p99 ms | p50 added ms | CPU ms/req | own CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cells in results.items():
        for cell, r in cells.items():
            floor = direct[cell]["p50_ms"] if cell in direct and name != "direct" else None
            added = r["p50_ms"] - floor if r["p50_ms"] is not None and floor is not None else None
            lines.append(
                f"| {name} | {cell} | {r['rps']:.0f} | {_figure(r['p50_ms'], 2)} | {_figure(r['p99_ms'], 2)} | "
                f"{_figure(added, 2)} | {_figure(r['cpu_ms_per_request'], 3)} | "
                f"{_figure(r['own_cpu_ms_per_request'], 3)} | {r['errors']} |"
            )
    for name, reason in report["skipped"].items():
        lines.append(f"| {name} | skipped: {reason} | | | | | | | |")
    if report["ratios"]:
        lines += ["", "| ratio | load | req/s | CPU/req | own CPU/req | p99 |", "|---|---|---|---|---|---|"]
        for pair, cells in report["ratios"].items():
            for cell, r in cells.items():
                figures = " | ".join(_figure(r[what], 2, "x") for what in RATIOS)
                lines.append(f"| {pair} | {cell} | {figures} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
