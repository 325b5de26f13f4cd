"""`ricardo serve`: run the gateway; `ricardo config reference`: its config's keys; `ricardo admin`: call its admin
API."""

from __future__ import annotations

import argparse

# the cyclic collector's youngest generation, in objects (Python's default: 700); see _serve
YOUNG_GC_THRESHOLD = 20_000


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve", help="run the gateway", description="Run the OpenAI-compatible cost-aware gateway."
    )
    p.add_argument("--config", help="gateway config YAML (default: the embedded config with emulated local pools)")
    p.add_argument("--host", help="override the config's listen address")
    p.add_argument("--port", type=int, help="override the config's port")
    p.add_argument("--redis-url", help="share state with other replicas through this Redis (default: in-process)")
    p.add_argument("--replica-id", help="name of this replica in shared state (default: host-pid-random)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serve with this many processes sharing the port (SO_REUSEPORT); more than 1 needs --redis-url",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of the processes of --workers
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one object per line (ts, level, logger, msg and the record's fields); default: %(default)s",
    )
    p.set_defaults(func=_serve)

    c = subparsers.add_parser("config", help="about the gateway config", description="About the gateway config.")
    config_commands = c.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    r = config_commands.add_parser(
        "reference",
        help="print the config reference (every key, type, default, meaning) as Markdown",
        description="Generate the config reference (docs/config.md) from the config's schema.",
    )
    r.add_argument("--out", help="write it to this file (default: print it)")
    r.set_defaults(func=_config_reference)

    a = subparsers.add_parser(
        "admin",
        help="call the gateway's admin API",
        description="Call the admin API with its token: --token, else $RICARDO_ADMIN_TOKEN, else the token the "
        "gateway generated on that port. Prints the answer; exits 1 unless it is a 2xx.",
    )
    a.add_argument("method", choices=["GET", "POST", "PUT", "DELETE"])
    a.add_argument("path", help="e.g. /admin/pools, /admin/keys")
    a.add_argument("body", nargs="?", help='JSON body, e.g. \'{"name": "alice", "budget_usd_per_day": 5}\'')
    a.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway (default: %(default)s)")
    a.add_argument("--token", help="admin token (default: $RICARDO_ADMIN_TOKEN or the generated one)")
    a.set_defaults(func=_admin)


def _serve(args: argparse.Namespace) -> int:
    import gc
    import os
    import sys

    from aiohttp import web
    from pydantic import ValidationError

    from ricardo.errors import InvalidInput
    from ricardo.gateway.app import build_app
    from ricardo.gateway.config import load_config
    from ricardo.gateway.logs import setup_logging
    from ricardo.gateway.security import AdminAccess, MetricsAccess
    from ricardo.gateway.shutdown import drain
    from ricardo.gateway.state import GatewayState
    from ricardo.gateway.urls import redact
    from ricardo.gateway.workers import Supervisor, tell_parent_ready, worker_admin
    from ricardo.protocol.runtime import run_event_loop, stop_on_signals

    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except (OSError, ValidationError, InvalidInput) as exc:
        print(f"ricardo serve: bad config: {redact(str(exc))}", file=sys.stderr)
        return 2
    updates = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("redis_url", args.redis_url),
            ("replica_id", args.replica_id),
        )
        if v is not None
    }
    config = config.model_copy(update=updates)
    if args.workers > 1 and not config.redis_url:
        print(
            "ricardo serve: --workers above 1 needs --redis-url: the workers share config changes, key limits, "
            "learning and scaling samples through it (each would otherwise keep its own)",
            file=sys.stderr,
        )
        return 2
    configured = config.admin_token or os.environ.get("RICARDO_ADMIN_TOKEN") or None
    try:
        admin = worker_admin(config) if args.worker else None
        admin = admin or AdminAccess.for_listener(config.host, config.port, configured, config.auth.allowed_hosts)
        metrics_token = config.auth.metrics_token or os.environ.get("RICARDO_METRICS_TOKEN") or None
        metrics = MetricsAccess.for_listener(config.host, metrics_token)
    except InvalidInput as exc:
        print(f"ricardo serve: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:  # the parent: its workers check the config and hold the state
        return Supervisor(args, config, admin).run()
    try:
        state = GatewayState(config)
    except InvalidInput as exc:
        print(f"ricardo serve: {redact(str(exc))}", file=sys.stderr)
        return 2

    async def main() -> None:
        # handler cancellation: a client that goes away cancels its request, and so the upstream one
        runner = web.AppRunner(
            build_app(config, state, admin, metrics), access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await runner.setup()
        # what startup built (the predictor, the profiles, the modules: ~76k objects) lives as long as the process:
        # out of the cyclic collector's sight, whose full collections otherwise walk all of it (~40 ms, on the loop)
        # every few seconds under load
        gc.freeze()
        # a young generation larger than what requests in flight hold: at the default 700 objects, 32 requests in
        # flight set off a collection every ~10 requests (~5% of the CPU, 0.2 ms each); nearly everything a request
        # makes is freed by reference counting, so collections past that size are rare
        gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
        # a worker shares the port with its siblings: the kernel spreads connections across them
        await web.TCPSite(runner, config.host, config.port, reuse_port=args.worker or None).start()
        if args.worker:
            tell_parent_ready()
        else:  # a worker's parent publishes the token it generated, once
            admin.publish(config.port)
        print(f"ricardo gateway listening on http://{config.host}:{config.port}", flush=True)
        stop = stop_on_signals()
        try:
            await stop.wait()
            await drain(state, config.shutdown)
        finally:
            await runner.cleanup()
            if not args.worker:
                admin.withdraw(config.port)

    try:
        run_event_loop(main())
    except OSError as exc:
        print(f"ricardo serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ricardo.gateway.reference import reference

    text = reference()
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


def _admin(args: argparse.Namespace) -> int:
    import json
    import os
    import sys
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    from ricardo.gateway.security import read_admin_token
    from ricardo.gateway.urls import is_loopback

    try:
        parts = urlsplit(args.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        print(f"ricardo admin: --url {args.url}: {exc}", file=sys.stderr)
        return 2
    # a token is generated by a gateway on loopback only: one read for this port belongs to this machine's gateway,
    # never to another host's on the same port
    local = is_loopback(parts.hostname or "")
    token = args.token or os.environ.get("RICARDO_ADMIN_TOKEN") or (read_admin_token(port) if local else None)
    if not token:
        where = f"none generated for port {port}" if local else "a generated token is for a gateway on loopback only"
        print(f"ricardo admin: no token: give --token or $RICARDO_ADMIN_TOKEN ({where})", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {token}"}
    if args.body is not None or args.method in ("POST", "PUT"):  # a DELETE without a body needs no content type
        headers["Content-Type"] = "application/json"
    data = args.body.encode() if args.body is not None else None

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        """A redirect is answered as it came (an HTTPError): urllib would follow it with the Authorization header,
        sending the admin token wherever it points."""

        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    url = args.url.rstrip("/") + "/" + args.path.lstrip("/")
    try:
        request = urllib.request.Request(url, data=data, method=args.method, headers=headers)
        with urllib.request.build_opener(NoRedirects).open(request, timeout=30) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except (OSError, ValueError) as exc:  # ValueError: a URL urllib cannot call (http.client.InvalidURL too)
        print(f"ricardo admin: {url}: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(json.loads(answer), indent=2))
    except ValueError:
        print(answer.decode(errors="replace"))
    return 0 if 200 <= status < 300 else 1
