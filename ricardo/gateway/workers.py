"""`ricardo serve --workers N`: N gateway processes on one port, and the parent that supervises them.

One event loop uses one core; a host with more serves more with more processes. Each worker is a whole
`ricardo serve` bound with SO_REUSEPORT to the same address, and the kernel spreads new connections across
them. The workers are replicas of each other in every other way: they share config changes, key limits and
spend, predictor learning and scaling samples through the state store, so several workers need `--redis-url`
(with the in-process store each would hold its own config, and an admin change would reach one worker only).
Metrics: each worker writes its values to files in a private directory (prometheus-client's multiprocess
mode, `PROMETHEUS_MULTIPROC_DIR`), and any worker's `/metrics` sums them over all workers (gauges by the mode
each declares, gateway/metrics.py).

The parent starts the workers, forwards SIGTERM and SIGINT to them (each drains as a lone gateway does),
restarts one that dies later on, and gives up (stopping the others) when one dies within its first seconds:
a worker that cannot start would only die again. A token it generated for the admin API is the same for all
workers, and written once, by the parent.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.security import AdminAccess

STARTUP_GRACE_S = 10.0  # a worker that dies sooner than this after it started is not restarted
RESTART_DELAY_S = 1.0
POLL_S = 0.2
TOKEN_ENV = "RICARDO_WORKER_ADMIN_TOKEN"  # the token the parent generated, passed to its workers
READY_ENV = "RICARDO_WORKER_READY_FD"  # a pipe the worker writes a byte to once it is listening
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_admin(config: GatewayConfig) -> AdminAccess | None:
    """In a worker: the admin access its parent generated (then the worker does not publish it), else None."""
    token = os.environ.pop(TOKEN_ENV, None)
    if token is None:
        return None
    return AdminAccess(token, True, {h.lower() for h in config.auth.allowed_hosts or ()})


def tell_parent_ready() -> None:
    """In a worker, once it listens: tell the parent (it says the gateway is listening when all workers are)."""
    fd = os.environ.pop(READY_ENV, None)
    if fd is not None:
        os.write(int(fd), b"1")
        os.close(int(fd))


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Supervisor:
    def __init__(self, args: argparse.Namespace, config: GatewayConfig, admin: AdminAccess):
        self.args, self.config, self.admin = args, config, admin
        self.port = config.port or free_port(config.host)
        self.metrics_dir = tempfile.mkdtemp(prefix="ricardo-metrics-")
        self.workers: dict[int, tuple[subprocess.Popen, float]] = {}  # index -> (process, started at)
        self.waiting: dict[int, int] = {}  # read end of a worker's ready pipe -> its index, until it says so
        self.stopping = False
        self.listening = 0  # workers that said they listen

    def command(self, index: int) -> list[str]:
        a = self.args
        argv = [sys.executable, "-m", "ricardo.cli", "serve", "--worker", "--port", str(self.port)]
        argv += ["--host", self.config.host, "--log-level", a.log_level, "--log-format", a.log_format]
        if a.config:
            argv += ["--config", a.config]
        if a.redis_url:
            argv += ["--redis-url", a.redis_url]
        if a.replica_id:
            argv += ["--replica-id", f"{a.replica_id}-w{index}"]
        return argv

    def spawn(self, index: int) -> None:
        env = {**os.environ, MULTIPROC_ENV: self.metrics_dir}
        if self.admin.generated:
            env[TOKEN_ENV] = self.admin.token
        read, write = os.pipe()
        env[READY_ENV] = str(write)
        try:
            self.workers[index] = (subprocess.Popen(self.command(index), env=env, pass_fds=[write]), time.monotonic())
        finally:
            os.close(write)
        self.waiting[read] = index

    def signal_all(self, signum: int) -> None:
        for process, _ in self.workers.values():
            if process.poll() is None:
                process.send_signal(signum)

    def run(self) -> int:
        def stop(signum: int, frame: object) -> None:
            self.stopping = True
            self.signal_all(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            for index in range(self.args.workers):
                self.spawn(index)
            published = False
            code = 0
            while self.workers:
                self._wait_ready()
                if not published and self.listening >= self.args.workers:
                    self.admin.publish(self.port)
                    published = True
                    print(
                        f"ricardo gateway listening on http://{self.config.host}:{self.port} "
                        f"({self.args.workers} workers)",
                        flush=True,
                    )
                for index, (process, started) in list(self.workers.items()):
                    if process.poll() is None:
                        continue
                    del self.workers[index]
                    self._forget(process.pid)
                    if self.stopping:  # stopped by the signal before its handler was set is a stop too
                        code = code or (0 if process.returncode == -signal.SIGTERM else process.returncode)
                    elif time.monotonic() - started < STARTUP_GRACE_S:
                        print(
                            f"ricardo serve: worker {index} exited with {process.returncode} at start; stopping",
                            file=sys.stderr,
                            flush=True,
                        )
                        self.stopping = True
                        self.signal_all(signal.SIGTERM)
                        code = process.returncode or 1
                    else:
                        print(f"ricardo serve: worker {index} exited with {process.returncode}; restarting", flush=True)
                        time.sleep(RESTART_DELAY_S)
                        self.spawn(index)
            return code
        finally:
            for process, _ in self.workers.values():  # only if the loop itself failed
                process.kill()
            self.admin.withdraw(self.port)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _wait_ready(self) -> None:
        """Wait POLL_S for workers to say they listen (or die: the pipe closes)."""
        if not self.waiting:
            time.sleep(POLL_S)
            return
        ready, _, _ = select.select(list(self.waiting), [], [], POLL_S)
        for fd in ready:
            if os.read(fd, 1):  # empty: the worker died before it listened (the supervision loop sees to that)
                self.listening += 1
            os.close(fd)
            del self.waiting[fd]

    def _forget(self, pid: int) -> None:
        """A dead worker's live gauges leave the sums (its counters stay: what it counted happened)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_dir)
