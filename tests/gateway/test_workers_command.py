"""What `ricardo serve --workers N` passes on to each worker process."""

from __future__ import annotations

import argparse

from ricardo.cli import build_parser
from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.security import AdminAccess
from ricardo.gateway.workers import Supervisor


def test_every_serve_option_reaches_the_workers() -> None:
    args = build_parser().parse_args(
        ["serve", "--workers", "2", "--redis-url", "redis://127.0.0.1:1/0", "--log-format", "json", "--port", "18000"]
    )
    assert isinstance(args, argparse.Namespace)
    pools = [{"name": "a", "hardware": "A10G", "backends": ["http://127.0.0.1:9"]}]
    config = GatewayConfig.model_validate({"host": "127.0.0.1", "port": 18000, "models": ["llama2-7b"], "pools": pools})
    command = Supervisor(args, config, AdminAccess("x" * 32)).command(0)
    assert "--log-format" in command and command[command.index("--log-format") + 1] == "json", command
