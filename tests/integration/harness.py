"""Start real ricardo processes on free local ports, and stop them, for integration tests."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import yaml
from ricardo.gateway.security import read_admin_token

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


# below Linux's ephemeral range (32768-60999): a port the kernel hands out with bind(0) is also the kind it gives to
# outgoing connections, so between our pick and the server's bind a client socket (or a suite run beside this one)
# could take it; a random free port below that range is not handed out by the kernel at all
_PORTS = range(20000, 32000)
_rng = random.Random()


def free_port() -> int:
    for _ in range(200):
        port = _rng.choice(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ricardo_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from ricardo.cli import main; sys.exit(main())", *args]


class Process:
    """A child process whose output goes to a file we can show when a test fails."""

    def __init__(self, args: list[str], name: str):
        self.name = name
        # open while the child writes to it; closed in stop()
        self.log = tempfile.NamedTemporaryFile(prefix=f"ricardo-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        # the tests say which admin and metrics tokens a gateway has (its config's, or the one it generates)
        tokens = ("RICARDO_ADMIN_TOKEN", "RICARDO_METRICS_TOKEN")
        env = {k: v for k, v in os.environ.items() if k not in tokens} | {"PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Cluster:
    """Emulated pools and a gateway in front of them, as separate processes."""

    def __init__(
        self,
        pools: dict[str, tuple[str, int]],
        tmp: Path,
        speed: float = 1.0,
        gateways: int = 1,
        faults: dict[str, list[str | None]] | None = None,
        pool_settings: dict[str, dict] | None = None,
        fault_processes: bool = True,
        pairs: dict[str, dict] | None = None,
        serve_args: tuple[str, ...] = (),
        workers: int = 1,
        **gateway_settings,
    ):
        """`faults`: per pool, a fault spec (ricardo/emulator/faults.py; "" for none) or None for each of its
        backends; a backend with a spec runs in a process of its own, which `replace_backend` restarts with
        other faults (with `fault_processes=False`, they share the one emulator process instead, and cannot be
        restarted). `pool_settings`: more fields of each pool's config (models, timeouts). `serve_args`: more
        arguments of every `ricardo serve` (e.g. --log-format json). `workers`: processes per gateway
        (`ricardo serve --workers`).
        `pairs`: disaggregated prefill/decode pools, name -> {"prefill": (hardware, replicas), "decode": (hardware,
        replicas), "link_gbps": Gb/s, "own_process": roles whose backends each run in a process of their own (to
        be killed: `role_ports`, `backend_processes`), "faults": role -> the fault spec of that role's backends (each
        in a process of its own)}."""
        self.serve_args = serve_args
        self.workers = workers
        self.gateway_ports = [free_port() for _ in range(gateways)]
        self.gateway_port = self.gateway_ports[0]
        self.pool_ports = {name: [free_port() for _ in range(replicas)] for name, (_, replicas) in pools.items()}
        self.hardware = {port: pools[name][0] for name, ports in self.pool_ports.items() for port in ports}
        self.role_ports = {
            (name, role): [free_port() for _ in range(pair[role][1])]
            for name, pair in (pairs or {}).items()
            for role in ("prefill", "decode")
        }
        self.link_gbps: dict[int, float] = {}
        own_process: dict[int, str] = {}  # port -> its fault spec ("": none)
        for (name, role), ports in self.role_ports.items():
            pair = (pairs or {})[name]
            for port in ports:
                self.hardware[port] = pair[role][0]
                self.link_gbps[port] = pair["link_gbps"]
                if role in pair.get("own_process", ()) or role in pair.get("faults", {}):
                    own_process[port] = pair.get("faults", {}).get(role, "")
        self.faults = {
            port: spec
            for name, specs in (faults or {}).items()
            for port, spec in zip(self.pool_ports[name], specs, strict=True)
            if spec is not None
        } | own_process
        self.backend_processes: dict[int, Process] = {}
        self.shared_faults = [] if fault_processes else [f"{port}:{spec}" for port, spec in self.faults.items() if spec]
        if not fault_processes:
            self.faults = {}
        default_model = gateway_settings.get("models", ["llama2-7b"])[0]
        self.model = {
            port: (pool_settings or {}).get(name, {}).get("model")
            or (pool_settings or {}).get(name, {}).get("models", [default_model])[0]
            for name, ports in self.pool_ports.items()
            for port in ports
        } | {port: default_model for ports in self.role_ports.values() for port in ports}
        config = {
            "host": "127.0.0.1",
            "port": self.gateway_port,
            "models": ["llama2-7b"],
            "health_interval_s": 0.5,
            "shutdown": {"unready_wait_s": 0},  # no load balancer to tell: stop at once
            **gateway_settings,
            "pools": [
                {
                    "name": name,
                    "hardware": hardware,
                    "backends": [f"http://127.0.0.1:{p}" for p in self.pool_ports[name]],
                    **(pool_settings or {}).get(name, {}),
                }
                for name, (hardware, _) in pools.items()
            ]
            + [
                {
                    "name": name,
                    "prefill": {
                        "hardware": pair["prefill"][0],
                        "backends": [f"http://127.0.0.1:{p}" for p in self.role_ports[(name, "prefill")]],
                    },
                    "decode": {
                        "hardware": pair["decode"][0],
                        "backends": [f"http://127.0.0.1:{p}" for p in self.role_ports[(name, "decode")]],
                    },
                    "link_gbps": pair["link_gbps"],
                    **(pool_settings or {}).get(name, {}),
                }
                for name, pair in (pairs or {}).items()
            ],
        }
        self.config_path = tmp / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config))

        def sound(backends: list[str]) -> list[str]:
            return [b for b in backends if int(b.rsplit(":", 1)[1]) not in self.faults]

        emulated = []
        for pool in config["pools"]:
            if "prefill" in pool:  # a pair: the emulator starts both sides
                sides = {r: {**pool[r], "backends": sound(pool[r]["backends"])} for r in ("prefill", "decode")}
                if any(side["backends"] for side in sides.values()):
                    emulated.append({**pool, **sides})
            elif sound(pool["backends"]):
                emulated.append({**pool, "backends": sound(pool["backends"])})
        self.emulator_config_path = tmp / "emulators.yaml"
        self.emulator_config_path.write_text(yaml.safe_dump({**config, "pools": emulated}))
        self.speed = speed
        self.admin_token: str | None = gateway_settings.get("admin_token")
        self.processes: list[Process] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.gateway_ports]

    def openai_client(self, api_key: str = "unused", timeout: float = 60.0) -> openai.OpenAI:
        """The official client on the first gateway, with no retries of its own (a test sees every answer)."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=timeout)

    def admin_headers(self, port: int | None = None) -> dict[str, str]:
        """The admin API's bearer header: the configured token, or the one the gateway generated and wrote
        where `ricardo admin` reads it."""
        token = self.admin_token or read_admin_token(port or self.gateway_port)
        assert token, "the gateway wrote no admin token"
        return {"Authorization": f"Bearer {token}"}

    def start(self) -> Cluster:
        """Start the emulators and gateways and wait until they answer; on failure stop what started."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Cluster:
        if len(self.faults) < len(self.hardware):
            faults = [arg for spec in self.shared_faults for arg in ("--fault", spec)]
            emulator = Process(
                ricardo_command(
                    "emulate", "--config", str(self.emulator_config_path), "--speed", str(self.speed), *faults
                ),
                "emulator",
            )
            self.processes.append(emulator)
        for port, spec in self.faults.items():
            self._start_backend(port, spec)
        for ports in [*self.pool_ports.values(), *self.role_ports.values()]:
            for port in ports:
                process = self.backend_processes.get(port, self.processes[0])
                process.wait_http(f"http://127.0.0.1:{port}/v1/models")
        gateways = []
        for index, port in enumerate(self.gateway_ports):
            gateway = Process(
                ricardo_command(
                    "serve",
                    "--config",
                    str(self.config_path),
                    "--port",
                    str(port),
                    "--replica-id",
                    f"gw{index}",
                    *self.serve_args,
                    *(["--workers", str(self.workers)] if self.workers > 1 else []),
                ),
                f"gateway{index}",
            )
            self.processes.append(gateway)
            gateways.append(gateway)
        self.gateways = gateways
        for gateway, url in zip(gateways, self.urls, strict=True):
            gateway.wait_http(f"{url}/readyz")
        return self

    def _start_backend(self, port: int, faults: str | None) -> Process:
        args = ["emulate", "--gpu", self.hardware[port], "--model", self.model[port], "--port", str(port)]
        args += ["--speed", str(self.speed)]
        if port in self.link_gbps:  # a side of a pair
            args += ["--link-gbps", str(self.link_gbps[port])]
        process = Process(ricardo_command(*args, *(["--fault", faults] if faults else [])), f"emulator-{port}")
        self.processes.append(process)
        self.backend_processes[port] = process
        return process

    def replace_backend(self, port: int, faults: str | None = None) -> None:
        """Stop the backend on `port` (one started with faults) and start it again with `faults`."""
        self.backend_processes[port].stop()
        process = self._start_backend(port, faults)
        process.wait_http(f"http://127.0.0.1:{port}/v1/models")

    def emulate_more(self, hardware: str) -> str:
        """Start one more emulated backend (its own process); return its URL."""
        port = free_port()
        process = Process(
            ricardo_command("emulate", "--gpu", hardware, "--port", str(port), "--speed", str(self.speed)),
            f"emulator-{hardware}-{port}",
        )
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        process.wait_http(url + "/v1/models")
        return url

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()}" for p in self.processes)


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples at `url`/metrics whose labels include `labels` (0 if none)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_for(condition, timeout: float, interval: float = 0.1):
    """Poll `condition` until it returns a true value (returned) or `timeout` seconds pass (its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
