"""Who may call the admin API, and from where.

The admin API can rewire the gateway, so it always needs a bearer token. Without one in the config or
$RICARDO_ADMIN_TOKEN the gateway makes one at start (on loopback only), prints it once and writes it to a file
only its user can read, where `ricardo admin` and the tests find it (Jupyter's scheme). A web page the user
visits can still send requests to loopback: a cross-site request carries a foreign `Origin` (refused on every
/admin route), and a simple cross-site POST cannot be `application/json` (changes with a body require it; a
DELETE, which no page can send cross-site without a preflight, needs none without a body). DNS
rebinding makes the page same-origin, but its requests carry the attacker's name in `Host`: while the token
is generated (a developer's machine), only loopback names and configured hosts are served at all.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from ricardo.errors import InvalidInput
from ricardo.gateway.urls import is_loopback
from ricardo.protocol.openai import OpenAIError

log = logging.getLogger("ricardo.gateway")

TOKEN_MIN_LENGTH = 16
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
HOSTS_REMEMBERED = 64


class WeakToken(InvalidInput):
    pass


def admin_token_path(port: int) -> Path:
    """Where a generated token is kept: the user's runtime dir (tmpfs, gone at logout) or state dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(runtime or state) / "ricardo" / f"admin-token-{port}"


def write_admin_token(port: int, token: str) -> Path:
    """Write the token for `port`, readable by this user only (0600 in a 0700 directory), atomically."""
    path = admin_token_path(port)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(partial, path)
    return path


def read_admin_token(port: int) -> str | None:
    """The token a gateway on `port` generated, if it wrote one."""
    try:
        return admin_token_path(port).read_text().strip() or None
    except OSError:
        return None


def remove_admin_token(port: int, token: str) -> None:
    """Remove the file if it still holds `token` (another gateway may have started on the port since)."""
    if read_admin_token(port) == token:
        admin_token_path(port).unlink(missing_ok=True)


def host_name(host_header: str) -> str:
    """The name in a Host header, without the port."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


@dataclass
class AdminAccess:
    """The admin API's token and whether it was generated (then the Host header is checked too)."""

    token: str
    generated: bool = False
    allowed_hosts: set[str] = field(default_factory=set)
    _hosts_seen: dict[str, bool] = field(default_factory=dict, repr=False)  # Host header -> allowed

    @classmethod
    def for_listener(
        cls, host: str, port: int, configured: str | None, allowed_hosts: list[str] | None = None
    ) -> AdminAccess:
        """The configured token if there is one (at least TOKEN_MIN_LENGTH characters), else a new one on
        loopback (`publish` it once listening). Raises WeakToken or InvalidInput."""
        hosts = {h.lower() for h in allowed_hosts or ()}
        if configured is not None:
            return cls(strong(configured, "admin"), False, hosts)
        if not is_loopback(host):
            raise InvalidInput(
                "the admin API needs a token (admin_token in the config or $RICARDO_ADMIN_TOKEN) "
                "when listening beyond loopback"
            )
        return cls(secrets.token_urlsafe(32), True, hosts)

    def publish(self, port: int) -> None:
        """A generated token: write it where `ricardo admin` reads it and print it, once. Called after the
        port is bound, so that a gateway that cannot start does not overwrite the token of the one running."""
        if self.generated:
            path = write_admin_token(port, self.token)
            print(f"ricardo: admin API token (also in {path}): {self.token}", file=sys.stderr, flush=True)

    def withdraw(self, port: int) -> None:
        if self.generated:
            remove_admin_token(port, self.token)

    def host_allowed(self, host_header: str) -> bool:
        known = self._hosts_seen.get(host_header)
        if known is None:
            name = host_name(host_header)
            known = is_loopback(name) or name.lower() in self.allowed_hosts
            if len(self._hosts_seen) < HOSTS_REMEMBERED:  # every request asks; clients send a handful of names
                self._hosts_seen[host_header] = known
        return known

    def check_token(self, request: web.Request) -> None:
        if not bearer_is(request, self.token):
            raise OpenAIError(
                401,
                "admin API: missing or wrong bearer token",
                "authentication_error",
                headers={"WWW-Authenticate": "Bearer"},
            )


def strong(token: str, what: str) -> str:
    """`token` if it is at least TOKEN_MIN_LENGTH printable ASCII characters; raises WeakToken otherwise."""
    if len(token) < TOKEN_MIN_LENGTH or not token.isascii() or not token.isprintable():
        raise WeakToken(
            f"the {what} token must be at least {TOKEN_MIN_LENGTH} printable ASCII characters "
            f"(it has {len(token)}); make one with: python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    return token


def bearer_is(request: web.Request, token: str) -> bool:
    """Whether the request's Authorization header is `Bearer <token>` (compared in constant time)."""
    given = request.headers.get("Authorization", "")
    # compare_digest needs equal types; a header with bytes beyond ASCII is simply wrong, not a crash
    return given.isascii() and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@dataclass(frozen=True)
class MetricsAccess:
    """Who may read /metrics. It names client keys with their spend and refusals, and every pool with its price and
    load: not for anyone who can reach the port. With a metrics token (`auth.metrics_token` or $RICARDO_METRICS_TOKEN,
    what Prometheus's `authorization` sends) that token or the admin token is asked for; without one, /metrics is
    open on a loopback listener (this machine's users only) and asks for the admin token beyond it."""

    token: str | None
    open: bool

    @classmethod
    def for_listener(cls, host: str, configured: str | None) -> MetricsAccess:
        """Raises WeakToken for a configured token shorter than TOKEN_MIN_LENGTH."""
        token = None if configured is None else strong(configured, "metrics")
        return cls(token, token is None and is_loopback(host))

    def check(self, request: web.Request, admin: AdminAccess) -> None:
        if self.open or bearer_is(request, admin.token) or (self.token is not None and bearer_is(request, self.token)):
            return
        raise OpenAIError(
            401,
            "/metrics: missing or wrong bearer token (auth.metrics_token, or the admin token)",
            "authentication_error",
            headers={"WWW-Authenticate": "Bearer"},
        )


def own_origin(origin: str, request: web.Request) -> bool:
    """Whether a browser's `Origin` names this gateway: its host and port, by either scheme (behind a proxy that ends
    TLS, the page's https:// reaches the gateway as http://; a page of another scheme on this very host and port is
    this gateway's, or the proxy's in front of it)."""
    scheme, _, host = origin.lower().partition("://")
    return scheme in ("http", "https") and host == request.host.lower()


def guard(access: AdminAccess, metrics: MetricsAccess) -> Middleware:
    """The middleware: Host (while the token is generated, every route), then on /admin: Origin, token and,
    for changes, the JSON content type; on /metrics, `metrics`' rule."""

    @web.middleware
    async def admin_guard(request: web.Request, handler):
        if access.generated and not access.host_allowed(request.host):
            raise OpenAIError(
                403,
                "this gateway serves loopback names only (add the name to auth.allowed_hosts to serve it)",
                "permission_error",
            )
        if request.path == "/metrics":
            metrics.check(request, access)
        elif request.path == "/admin" or request.path.startswith("/admin/"):
            origin = request.headers.get("Origin")
            if origin is not None and not own_origin(origin, request):
                raise OpenAIError(403, "admin API: cross-origin requests are refused", "permission_error")
            if request.path != "/admin/openapi.json":
                access.check_token(request)
            # a DELETE without a body needs no content type: a page cannot send a DELETE cross-site without a CORS
            # preflight, which this gateway never grants; a body, on any method, must be JSON
            needs_json = request.method in MUTATING and (request.method != "DELETE" or request.body_exists)
            if needs_json and request.content_type != "application/json":
                raise OpenAIError(
                    415,
                    "admin API: changes must be sent as Content-Type: application/json",
                    code="unsupported_media_type",
                )
        return await handler(request)

    return admin_guard
