"""Where `ricardo admin` sends the admin token: to the gateway it names, and to no other server.

Real processes over real sockets: the command runs as a user runs it, against small HTTP servers on loopback that
record the Authorization header they are sent.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import free_port, ricardo_command


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with `reply` (a status and headers) and records the Authorization header it was sent."""

    seen: list[str | None]
    reply: tuple[int, dict[str, str]]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        status, headers = self.reply
        body = b'{"ok": true}'
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(reply: tuple[int, dict[str, str]]) -> tuple[http.server.HTTPServer, list[str | None]]:
    seen: list[str | None] = []
    handler = type("Handler", (Recorder,), {"seen": seen, "reply": reply})
    server = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def servers() -> Iterator[list[http.server.HTTPServer]]:
    started: list[http.server.HTTPServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def admin_command(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("RICARDO_ADMIN_TOKEN", "http_proxy", "HTTP_PROXY")}
    command = ricardo_command("admin", *args)
    return subprocess.run(command, env=clean | env, capture_output=True, text=True, timeout=60)


def test_the_token_generated_for_a_local_port_is_not_sent_to_another_host(servers, tmp_path: Path):
    """A loopback gateway's generated token, read for the URL's port whatever its host, went to a remote gateway
    on that port (here: through a proxy on loopback, which sees what the remote host would)."""
    proxy, seen = serve((200, {}))
    servers.append(proxy)
    port = free_port()
    runtime = tmp_path / "runtime"
    env = {"XDG_RUNTIME_DIR": str(runtime), "http_proxy": f"http://127.0.0.1:{proxy.server_port}"}
    token_file = runtime / "ricardo" / f"admin-token-{port}"
    token_file.parent.mkdir(parents=True, mode=0o700)
    token_file.write_text("generated-for-the-local-gateway\n")
    result = admin_command("--url", f"http://gateway.example.com:{port}", "GET", "/admin/pools", **env)
    assert all(header is None or "generated-for-the-local-gateway" not in header for header in seen), seen
    assert result.returncode == 2 and "no token" in result.stderr


def test_a_redirect_does_not_carry_the_token_to_another_server(servers):
    """urllib follows a redirect with every header but the body's: the token went wherever a gateway (or something
    posing as one) redirected the command."""
    elsewhere, seen_elsewhere = serve((200, {}))
    servers.append(elsewhere)
    gateway, seen = serve((307, {"Location": f"http://127.0.0.1:{elsewhere.server_port}/admin/pools"}))
    servers.append(gateway)
    token = "a-token-for-that-gateway-only"
    result = admin_command("--url", f"http://127.0.0.1:{gateway.server_port}", "--token", token, "GET", "/admin/pools")
    assert seen == [f"Bearer {token}"]
    assert seen_elsewhere == []
    assert result.returncode == 1  # a redirect is no success
