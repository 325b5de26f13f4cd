"""A throw-away redis-server for tests: own port, no persistence, stoppable and restartable on the same port.

    server = RedisServer(); server.start()   # server.url == "redis://127.0.0.1:<port>/0"
    server.stop(); server.start()            # comes back empty on the same port (an outage without persistence)
    server.pause(); server.resume()          # SIGSTOP/SIGCONT: a Redis that accepts connections but never answers
    server.stop()

Never touches the machine's default 127.0.0.1:6379.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

from tests.integration.harness import free_port

BINARY = os.environ.get("REDIS_SERVER", shutil.which("redis-server") or "/usr/bin/redis-server")


def available() -> bool:
    return os.access(BINARY, os.X_OK)


class RedisServer:
    def __init__(self, port: int | None = None, binary: str = BINARY):
        self.port = port or free_port()
        self.binary = binary
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 5.0) -> RedisServer:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while not self._answers_ping():
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace")
                self.process = None
                raise RuntimeError(f"redis-server exited on port {self.port}: {error}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
