"""Start real ricardo processes on free local ports, and stop them, for integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from ricardo.gateway.security import read_admin_token

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


def free_port() -> int:
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
        # the tests say which admin token a gateway has (its config's, or the one it generates)
        env = {k: v for k, v in os.environ.items() if k != "RICARDO_ADMIN_TOKEN"} | {"PYTHONUNBUFFERED": "1"}
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
        self, pools: dict[str, tuple[str, int]], tmp: Path, speed: float = 1.0, gateways: int = 1, **gateway_settings
    ):
        self.gateway_ports = [free_port() for _ in range(gateways)]
        self.gateway_port = self.gateway_ports[0]
        self.pool_ports = {name: [free_port() for _ in range(replicas)] for name, (_, replicas) in pools.items()}
        config = {
            "host": "127.0.0.1",
            "port": self.gateway_port,
            "models": ["llama2-7b"],
            "health_interval_s": 0.5,
            **gateway_settings,
            "pools": [
                {
                    "name": name,
                    "hardware": hardware,
                    "backends": [f"http://127.0.0.1:{p}" for p in self.pool_ports[name]],
                }
                for name, (hardware, _) in pools.items()
            ],
        }
        self.config_path = tmp / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.speed = speed
        self.admin_token: str | None = gateway_settings.get("admin_token")
        self.processes: list[Process] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.gateway_ports]

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
        emulator = Process(
            ricardo_command("emulate", "--config", str(self.config_path), "--speed", str(self.speed)), "emulator"
        )
        self.processes.append(emulator)
        for ports in self.pool_ports.values():
            for port in ports:
                emulator.wait_http(f"http://127.0.0.1:{port}/v1/models")
        gateways = []
        for index, port in enumerate(self.gateway_ports):
            gateway = Process(
                ricardo_command(
                    "serve", "--config", str(self.config_path), "--port", str(port), "--replica-id", f"gw{index}"
                ),
                f"gateway{index}",
            )
            self.processes.append(gateway)
            gateways.append(gateway)
        for gateway, url in zip(gateways, self.urls, strict=True):
            gateway.wait_http(f"{url}/readyz")
        return self

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
