"""A backend's session serves every client: a cookie one answer sets must not ride on the next request."""

from __future__ import annotations

from aiohttp import web
from ricardo.gateway.config import LimitsConfig
from ricardo.gateway.pools import new_session


async def test_a_backend_cookie_is_not_sent_on_later_requests(unused_tcp_port: int) -> None:
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response(text="ok")
        response.set_cookie("session", "alice")
        return response

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "localhost", unused_tcp_port).start()
    session = new_session(LimitsConfig(), None)  # a backend by name: aiohttp's default jar ignores IP addresses
    try:
        for _ in range(2):
            async with session.post(f"http://localhost:{unused_tcp_port}/") as response:
                assert response.status == 200 and "session" in response.headers.get("Set-Cookie", "")
    finally:
        await session.close()
        await runner.cleanup()
    assert seen == [None, None]
