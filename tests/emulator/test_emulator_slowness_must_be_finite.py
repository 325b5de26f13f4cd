"""`slow=X` must be a finite number > 0. `slow=inf` passed the `<= 0` check and made the backend's speed 0: its engine
task died on a ZeroDivisionError at the first request, which then waited forever (as every later one), while
`/health` still said ok. `slow=nan` passed too and made every iteration take no time at all (NaN clock)."""

import asyncio

import aiohttp
import pytest
from ricardo.emulator.faults import parse_faults
from ricardo.emulator.server import EmulatedBackend
from ricardo.profiles.engine_params import load_engine_params

from tests.gateway.fakes import port, serve


@pytest.mark.parametrize("spec", ["slow=inf", "slow=nan"])
def test_a_slowness_that_is_not_a_finite_number_is_refused(spec):
    with pytest.raises(ValueError, match="expected error-rate"):
        parse_faults(spec)


async def test_an_infinitely_slow_backend_still_answers_or_is_refused():
    """What `ricardo emulate --fault slow=inf` ran: a request that never got an answer."""
    try:
        faults = parse_faults("slow=inf")
    except ValueError:
        return  # refused: nothing to run
    backend = EmulatedBackend(load_engine_params("A10G", "llama2-7b"), "llama2-7b", speed=1000.0, faults=faults)
    at = port()
    runner = await serve(backend.app(), at)
    try:
        body = {"model": "llama2-7b", "prompt": "hello", "max_tokens": 2}
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(5):
                async with session.post(f"http://127.0.0.1:{at}/v1/completions", json=body) as response:
                    assert response.status == 200
                    await response.read()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("speed", ["0", "-2", "nan"])
def test_emulate_refuses_a_speed_that_is_not_a_finite_positive_number(speed):
    """`ricardo emulate --speed 0` (or -2, or nan) started serving
    a backend whose every completion hung on the dead engine task; it should exit at once with a one-line error."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "ricardo.cli", "emulate", "--gpu", "A10G", "--port", str(port()), "--speed", speed]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"--speed {speed}: the emulator started serving instead of refusing")
    assert done.returncode != 0 and "--speed" in done.stderr and "Traceback" not in done.stderr, done.stderr
