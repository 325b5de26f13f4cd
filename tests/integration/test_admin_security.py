"""The admin API closed to the web, as a developer runs it: a gateway on loopback with no token configured.

Real processes over real sockets: the gateway generates its token, and every check is what a browser page,
a DNS-rebinding page or a careless operator would send.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import ClassVar

import pytest
from ricardo.gateway.security import admin_token_path

from tests.integration.harness import Cluster, Process, free_port, ricardo_command

POOLS = {"a10g": ("A10G", 1)}
SMALL = {"model": "llama2-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(POOLS, tmp_path_factory.mktemp("admin-security"), speed=10.0).start()
    yield cluster
    cluster.stop()


def call(url: str, method: str = "GET", body: bytes | dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}"), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), exc.headers


def admin(cluster: Cluster, path: str, method: str = "GET", body: dict | None = None, **headers: str):
    changes = body is not None or method in ("POST", "PUT")  # a DELETE without a body needs no content type
    sent = {**cluster.admin_headers(), **({"Content-Type": "application/json"} if changes else {}), **headers}
    return call(cluster.url + path, method, body, sent)


def backends(cluster: Cluster) -> list[str]:
    status, answer, _ = admin(cluster, "/admin/pools")
    assert status == 200
    return [b["url"] for pool in answer["pools"] for b in pool["backends"]]


def raw_request(port: int, head: bytes, body: bytes = b"") -> int:
    """Send bytes that no HTTP client library would send; return the status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_the_generated_token_is_written_for_this_user_only_and_printed_once(cluster):
    path = admin_token_path(cluster.gateway_port)
    token = path.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    log = cluster.logs()
    assert log.count(token) == 1 and "admin API token" in log
    assert call(cluster.url + "/admin/pools")[0] == 401
    assert admin(cluster, "/admin/pools")[0] == 200


def test_a_cross_site_post_cannot_add_a_backend(cluster):
    """What a web page can send without a preflight: text/plain, with the browser's Origin."""
    before = backends(cluster)
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    url = cluster.url + "/admin/pools/a10g/backends"
    body = json.dumps({"url": "http://127.0.0.1:9"}).encode()
    assert call(url, "POST", body, evil)[0] == 403  # without the token, as a page would
    assert call(url, "POST", body, {**evil, **cluster.admin_headers()})[0] == 403  # even with it
    status, answer, _ = call(url, "POST", body, {"Content-Type": "text/plain", **cluster.admin_headers()})
    assert status == 415 and answer["error"]["code"] == "unsupported_media_type"
    assert admin(cluster, "/admin/pools", Origin="http://evil.example")[0] == 403  # reads too
    assert admin(cluster, "/admin/openapi.json", Origin="null")[0] == 403
    assert backends(cluster) == before
    assert admin(cluster, "/admin/slo", Origin=cluster.url)[0] == 200  # the gateway's own origin is fine
    # behind a proxy that ends TLS, the status page's https:// origin reaches the gateway over http
    assert admin(cluster, "/admin/slo", Origin=cluster.url.replace("http://", "https://"))[0] == 200
    assert admin(cluster, "/admin/slo", Origin=cluster.url.replace("http://", "ftp://"))[0] == 403
    assert admin(cluster, "/admin/slo", Origin=cluster.url + ".evil.example")[0] == 403


def test_a_delete_needs_json_only_if_it_has_a_body(cluster):
    """No page can send a DELETE cross-site without a CORS preflight (never granted), so a DELETE without a body
    needs no content type; a body, on any method, must still be JSON."""
    made = [admin(cluster, "/admin/keys", "POST", {"name": f"deleted{i}"})[1]["id"] for i in range(2)]
    url = cluster.url + "/admin/keys/"
    status, answer, _ = call(url + made[0], "DELETE", b"{}", {"Content-Type": "text/plain", **cluster.admin_headers()})
    assert status == 415 and answer["error"]["code"] == "unsupported_media_type"
    assert call(url + made[0], "DELETE", None, cluster.admin_headers())[0] == 200  # no body, no content type
    assert call(url + made[1], "DELETE", None, {"Origin": "http://evil.example", **cluster.admin_headers()})[0] == 403
    status, answer, _ = call(cluster.url + "/admin/keys", "POST", None, cluster.admin_headers())
    assert status == 415, "a POST without a body still needs the JSON content type"
    assert admin(cluster, url.removeprefix(cluster.url) + made[1], "DELETE")[0] == 200
    assert not {k["id"] for k in admin(cluster, "/admin/keys")[1]["keys"]} & set(made)


def test_dns_rebinding_is_refused_by_host(cluster):
    """A rebinding page is same-origin to the browser, but names its own host in Host."""
    rebound = {"Host": f"evil.example:{cluster.gateway_port}", "Origin": f"http://evil.example:{cluster.gateway_port}"}
    assert admin(cluster, "/admin/pools", **rebound)[0] == 403
    status, answer, _ = call(cluster.url + "/v1/chat/completions", "POST", SMALL, rebound)
    assert status == 403 and answer["error"]["type"] == "permission_error"
    assert call(cluster.url + "/v1/models", headers={"Host": f"localhost:{cluster.gateway_port}"})[0] == 200


@pytest.mark.parametrize(
    "header, status",
    [
        (b"Authorization: Bearer \xff\xfe\r\n", 401),
        ("Authorization: Bearer h\u00e9h\u00e9\r\n".encode(), 401),
        (b"Authorization: \x01\r\n", 400),  # a control character: aiohttp's parser refuses the request
    ],
)
def test_bad_authorization_bytes_are_401_not_500(cluster, header, status):
    head = f"GET /admin/pools HTTP/1.1\r\nHost: 127.0.0.1:{cluster.gateway_port}\r\n".encode() + header
    assert raw_request(cluster.gateway_port, head) == status


@pytest.mark.parametrize(
    "header, status",
    [
        (b"x-request-id: \xff\xfe\r\n", 200),  # replaced by a fresh id: it could not be sent on
        (b"x-custom: \xc3\xa9t\xc3\xa9\r\n", 200),  # forwarded upstream as it came
        (b"x-slo-tpot-ms: \xff\r\n", 400),
        (b"x-ricardo-hops: \xff\r\n", 400),
    ],
)
def test_bad_header_bytes_on_v1_are_answered_not_500(cluster, header, status):
    body = json.dumps(SMALL).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{cluster.gateway_port}\r\n"
        "Content-Type: application/json\r\n"
    ).encode() + header
    assert raw_request(cluster.gateway_port, head, body) == status


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",  # the same address in decimal
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]:8000/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/",
    ],
)
def test_metadata_link_local_and_other_schemes_are_refused(cluster, url):
    before = backends(cluster)
    status, answer, _ = admin(cluster, "/admin/pools/a10g/backends", "POST", {"url": url})
    assert status == 422, answer
    assert backends(cluster) == before


def test_the_gateway_itself_is_refused_as_a_backend(cluster):
    port = cluster.gateway_port
    for url in (f"http://127.0.0.1:{port}", f"http://localhost:{port}/", f"http://0.0.0.0:{port}"):
        status, answer, _ = admin(cluster, "/admin/pools/a10g/backends", "POST", {"url": url})
        assert status == 422 and "own address" in answer["error"]["message"], (url, answer)
    status, answer, _ = admin(
        cluster, "/admin/pools", "POST", {"name": "loop", "hardware": "L4", "backends": [f"http://localhost:{port}"]}
    )
    assert status == 422, answer


class Recorder(http.server.BaseHTTPRequestHandler):
    """A backend that records the Authorization header it receives (the health probe's completion, or its
    GET /v1/models)."""

    seen: ClassVar[list[str | None]] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        message = {"role": "assistant", "content": "pong"}
        self.answer(
            {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "length"}]}
        )

    def do_GET(self):
        self.answer({"object": "list", "data": []})

    def answer(self, body: dict) -> None:
        Recorder.seen.append(self.headers.get("Authorization"))
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_url_credentials_are_used_upstream_and_redacted_wherever_shown(cluster):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        secret = "s3cr3t-pa55word"
        url = f"http://bob:{secret}@127.0.0.1:{port}"
        status, answer, _ = admin(cluster, "/admin/pools/a10g/backends", "POST", {"url": url})
        assert status == 201, answer
        assert secret not in json.dumps(answer)
        deadline = time.monotonic() + 5
        while "Basic Ym9iOnMzY3IzdC1wYTU1d29yZA==" not in Recorder.seen:  # bob:s3cr3t-pa55word
            assert time.monotonic() < deadline, Recorder.seen
            time.sleep(0.1)
        assert f"http://bob:***@127.0.0.1:{port}" in backends(cluster)
        with urllib.request.urlopen(cluster.url + "/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert f'backend="http://bob:***@127.0.0.1:{port}"' in metrics
        status, answer, _ = admin(cluster, "/admin/pools/a10g/backends", "POST", {"url": url})
        assert status == 409 and secret not in json.dumps(answer)  # the error names it redacted
        status, _, _ = admin(cluster, "/admin/pools/a10g/backends/drain", "POST", {"url": f"http://127.0.0.1:{port}"})
        assert status == 200  # named without its credentials, as the admin API shows it
        status, _, _ = admin(cluster, "/admin/pools/a10g/backends/remove", "POST", {"url": f"http://127.0.0.1:{port}"})
        assert status == 200
        log = cluster.logs()
        assert "added to pool a10g" in log and f"bob:***@127.0.0.1:{port}" in log  # the audit log
        assert secret not in log and secret not in metrics
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "env, args, message",
    [
        ({"RICARDO_ADMIN_TOKEN": "short"}, [], "admin token must be at least 16"),
        ({"RICARDO_METRICS_TOKEN": "short"}, [], "metrics token must be at least 16"),
        ({}, ["--host", "0.0.0.0"], "needs a token"),
    ],
)
def test_a_weak_or_missing_token_stops_the_gateway_from_starting(cluster, env, args, message):
    clean = {k: v for k, v in os.environ.items() if k not in ("RICARDO_ADMIN_TOKEN", "RICARDO_METRICS_TOKEN")}
    command = ricardo_command("serve", "--config", str(cluster.config_path), "--port", str(free_port()), *args)
    done = subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, (done.returncode, done.stderr)


def start_gateway(tmp_path, name: str, port: int, backend: str, **settings) -> Process:
    config = {
        "host": "127.0.0.1",
        "port": port,
        "health_interval_s": 0.2,
        "pools": [{"name": "next", "hardware": "A10G", "backends": [backend]}],
        **settings,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))
    return Process(ricardo_command("serve", "--config", str(path)), name)


def test_a_request_past_two_gateways_ends_in_a_508(cluster, tmp_path):
    """A gateway in front of the cluster's: two in a row serve; a request that had passed through two gateways
    before reaching them is refused by the second, and the first passes the 508 on."""
    port = free_port()
    front = start_gateway(tmp_path, "front", port, cluster.url)
    try:
        front.wait_http(f"http://127.0.0.1:{port}/readyz")  # its probe completion went through both
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert call(url, "POST", SMALL, {"Content-Type": "application/json"})[0] == 200
        started = time.monotonic()
        status, answer, _ = call(url, "POST", SMALL, {"Content-Type": "application/json", "x-ricardo-hops": "2"})
        assert status == 508 and answer["error"]["code"] == "loop_detected", answer
        assert time.monotonic() - started < 5
        assert "passed through 3 gateways" in answer["error"]["message"]
    finally:
        front.stop()


def test_two_gateways_routing_to_each_other_never_become_ready(tmp_path):
    """A loop no static check sees (each is the other's backend): each one's probe completion can only pass if the
    other's backend is up already, so neither ever is, and a request is refused at once instead of looping."""
    ports = [free_port(), free_port()]
    processes = []
    try:
        for i, (own, other) in enumerate([ports, ports[::-1]]):
            processes.append(start_gateway(tmp_path, f"loop{i}", own, f"http://127.0.0.1:{other}"))
        for process, port in zip(processes, ports, strict=True):
            process.wait_http(f"http://127.0.0.1:{port}/healthz")
        time.sleep(1.0)  # a few health rounds (every 0.5 s) with both listening
        for port in ports:
            status, ready, _ = call(f"http://127.0.0.1:{port}/readyz")
            assert status == 503 and ready["pools"] == {"next": 0}, ready
        started = time.monotonic()
        status, answer, _ = call(f"http://127.0.0.1:{ports[0]}/v1/chat/completions", "POST", SMALL)
        assert status == 503 and answer["error"]["type"] == "service_unavailable", answer
        assert time.monotonic() - started < 5
    finally:
        for process in processes:
            process.stop()


def test_ricardo_admin_reads_the_generated_token(cluster):
    clean = {k: v for k, v in os.environ.items() if k != "RICARDO_ADMIN_TOKEN"}

    def admin_cli(*args: str) -> subprocess.CompletedProcess:
        command = ricardo_command("admin", "--url", cluster.url, *args)
        return subprocess.run(command, env=clean, capture_output=True, text=True, timeout=60)

    made = admin_cli("POST", "/admin/keys", '{"name": "cli"}')
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["key"].startswith("sk-rc-")
    listed = admin_cli("GET", "/admin/keys")
    assert listed.returncode == 0 and "cli" in listed.stdout and "sk-rc-" in listed.stdout  # the prefix only
    assert json.loads(made.stdout)["key"] not in listed.stdout
    assert admin_cli("DELETE", "/admin/keys/key-nonesuch").returncode == 1
    assert admin_cli("DELETE", f"/admin/keys/{json.loads(made.stdout)['id']}").returncode == 0


def test_keys_are_optional_on_loopback_but_a_revoked_one_is_refused(cluster):
    status, made, _ = admin(cluster, "/admin/keys", "POST", {"name": "optional", "requests_per_second": 1})
    assert status == 201
    send = {"Content-Type": "application/json"}
    url = cluster.url + "/v1/chat/completions"
    assert call(url, "POST", SMALL, send)[0] == 200  # no key
    assert call(url, "POST", SMALL, {**send, "Authorization": "Bearer sk-placeholder"})[0] == 200  # not one of ours
    with_key = {**send, "Authorization": f"Bearer {made['key']}"}
    assert [call(url, "POST", SMALL, with_key)[0] for _ in range(3)].count(429) >= 1  # a key shown is a key used
    assert admin(cluster, f"/admin/keys/{made['id']}", "DELETE")[0] == 200
    status, answer, _ = call(url, "POST", SMALL, with_key)
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"


def metrics_status(port: int, token: str | None = None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b"ricardo_requests" in response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_metrics_name_client_keys_so_beyond_loopback_they_ask_for_a_token(cluster, tmp_path):
    """/metrics carries client keys' names and spend: open on loopback (the cluster's gateway), closed beyond it to
    anyone without the metrics token or the admin token; with a metrics token, closed on loopback too."""
    assert metrics_status(int(cluster.url.rsplit(":", 1)[1])) == 200
    admin_token, metrics_token = "a" * 24, "m" * 24
    ports = [free_port(), free_port()]
    gateways = [
        start_gateway(tmp_path, "wide", ports[0], cluster.url, host="0.0.0.0", admin_token=admin_token),
        start_gateway(tmp_path, "scraped", ports[1], cluster.url, auth={"metrics_token": metrics_token}),
    ]
    try:
        for gateway, port in zip(gateways, ports, strict=True):
            gateway.wait_http(f"http://127.0.0.1:{port}/healthz")
        wide, scraped = ports
        assert [metrics_status(wide, t) for t in (None, "wrong-token-000000000000", admin_token)] == [401, 401, 200]
        assert [metrics_status(scraped, t) for t in (None, admin_token, metrics_token)] == [401, 401, 200]
    finally:
        for gateway in gateways:
            gateway.stop()
