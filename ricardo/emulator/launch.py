"""Start emulated backends: one engine and one port per backend, all in one event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from ricardo.emulator.faults import parse_faults
from ricardo.emulator.kvtransfer import DEFAULT_LINK_GBPS
from ricardo.emulator.server import EmulatedBackend
from ricardo.profiles.engine_params import load_engine_params
from ricardo.protocol.runtime import run_event_loop, stop_on_signals

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class BackendSpec:
    hardware: str
    model: str
    host: str
    port: int
    faults: str | None = None  # a fault spec (emulator/faults.py)
    role: str = "unified"  # of a pair: prefill or decode (what it prints; a request's kv_transfer_params decide)
    link_gbps: float = DEFAULT_LINK_GBPS  # the link a decode side pulls KV caches over


class _Side(BaseModel):
    model_config = ConfigDict(extra="ignore")
    hardware: str
    backends: list[str] = []


class _Pool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    hardware: str | None = None
    backends: list[str] = []
    model: str | None = None
    models: list[str] | None = None
    prefill: _Side | None = None  # a disaggregated pair's sides
    decode: _Side | None = None
    link_gbps: float = DEFAULT_LINK_GBPS

    def sides(self) -> list[tuple[str, str, list[str]]]:
        """(role, hardware, backends) of each side: one unified, or a pair's prefill and decode."""
        if self.prefill is not None and self.decode is not None:
            return [
                ("prefill", self.prefill.hardware, self.prefill.backends),
                ("decode", self.decode.hardware, self.decode.backends),
            ]
        return [("unified", self.hardware, self.backends)] if self.hardware else []


class _Config(BaseModel):
    """The part of a gateway config the emulator needs: which hardware answers on which local port."""

    model_config = ConfigDict(extra="ignore")
    models: list[str] = ["llama2-7b"]
    pools: list[_Pool]


def with_faults(specs: list[BackendSpec], faults: list[str]) -> list[BackendSpec]:
    """Give backends faults: `SPEC` for every backend, `PORT:SPEC` for the one on that port (it wins)."""
    common = [f for f in faults if not f.partition(":")[0].isdigit()]
    by_port = {int(f.partition(":")[0]): f.partition(":")[2] for f in faults if f.partition(":")[0].isdigit()}
    unknown = set(by_port) - {s.port for s in specs}
    if unknown:
        raise SystemExit(f"--fault for a port no backend listens on: {sorted(unknown)}")
    result = []
    for spec in specs:
        chosen = by_port.get(spec.port, ",".join(common) or None)
        parse_faults(chosen)  # fail at start, not at the first request
        result.append(dataclasses.replace(spec, faults=chosen))
    return result


def backends_from_config(path: str) -> list[BackendSpec]:
    with open(path) as f:
        config = _Config.model_validate(yaml.safe_load(f))
    specs = []
    for pool in config.pools:
        model = pool.model or (pool.models or config.models)[0]
        for role, hardware, backends in pool.sides():
            for url in backends:
                parts = urlsplit(url)
                if parts.hostname in LOCAL_HOSTS and parts.port:
                    specs.append(BackendSpec(hardware, model, parts.hostname, parts.port, None, role, pool.link_gbps))
    if not specs:
        raise SystemExit(f"{path}: no backend on a local address to emulate")
    return specs


async def serve_backends(specs: list[BackendSpec], speed: float, stop: asyncio.Event) -> None:
    runners = []
    try:
        for spec in specs:
            faults = parse_faults(spec.faults)
            params = load_engine_params(
                spec.hardware, spec.model
            )  # timed as its model, where the engine model knows it
            backend = EmulatedBackend(params, spec.model, speed=speed, faults=faults, link_gbps=spec.link_gbps)
            # a client that goes away cancels its handler, and so its sequence, as vLLM aborts such a request
            runner = web.AppRunner(backend.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
            await runner.setup()
            await web.TCPSite(runner, spec.host, spec.port).start()
            runners.append(runner)
            note = f" with faults {spec.faults}" if spec.faults else ""
            if spec.role == "decode":
                note += f" (decode side, KV over {spec.link_gbps:g} Gb/s)"
            elif spec.role == "prefill":
                note += " (prefill side)"
            print(f"emulating {spec.hardware} serving {spec.model} on http://{spec.host}:{spec.port}{note}", flush=True)
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def run_backends(specs: list[BackendSpec], speed: float = 1.0) -> int:
    async def main() -> None:
        await serve_backends(specs, speed, stop_on_signals())

    try:
        run_event_loop(main())
    except OSError as exc:
        print(f"ricardo emulate: {exc}", file=sys.stderr)
        return 1
    return 0
