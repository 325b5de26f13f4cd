"""The status page at /ui: a small self-contained page (vanilla JS, inline SVG charts; no CDN, nothing fetched
from elsewhere) served from the package, that reads and changes the gateway through the admin API.

The page itself holds no data and needs no token: a browser cannot put a bearer token on a navigation. It asks
for the admin token once, keeps it in the tab's sessionStorage (gone with the tab; never in a URL, a cookie or
the page) and sends it as the Authorization header of its same-origin calls to /admin, where security.guard
checks it as for any client. No cookie is involved, so another site cannot make the browser send the token
(no CSRF); the guard refuses cross-origin calls anyway. The page's headers forbid framing (clickjacking of the
price editor), inline and foreign scripts, and form submissions (the login form is handled in script, so the
token can never end up in a query string), and ask for no caching and no referrer.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

FILES = {
    "/ui": ("index.html", "text/html"),
    "/ui/": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/app.css": ("app.css", "text/css"),
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def add_ui_routes(app: web.Application) -> None:
    folder = resources.files("ricardo.gateway").joinpath("data/ui")
    for path, (name, content_type) in FILES.items():
        body = folder.joinpath(name).read_bytes()  # read once: the files are part of the package

        async def serve(request: web.Request, body: bytes = body, content_type: str = content_type) -> web.Response:
            return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)

        app.router.add_get(path, serve)
