"""The dashboard: static files (HTML, vanilla JS, CSS) served at "/", after the API routes.

The page calls the same /v1 API as every other client, with the token the user types in; the
files themselves need no token. The mount matches only GET/HEAD requests outside the API's
paths, so the API keeps its own 404s, 405s and slash redirects, and the UI is not part of
the OpenAPI schema (a Mount never is)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.routing import Match, Mount, get_route_path
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Paths that belong to the API (routes, docs, schema, probes): never answered by the UI.
API_PATHS = ("/v1", "/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")

# The page loads only its own files and talks only to this origin; images are blob: URLs of
# artifacts fetched with the token. No inline scripts or styles, no third-party origins.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self' blob:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Revalidate (ETag) on every load, so a new release's files are picked up at once.
    "cache-control": "no-cache",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


class UiMount(Mount):
    """A Mount at "/" that leaves API paths and non-GET methods to the API's router."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        super().__init__("/", app=app, name=name)
        self.path = "/"  # the request-latency metric's route label ("" otherwise)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return Match.NONE, {}
        path = get_route_path(scope)
        if any(path == api or path.startswith(api + "/") for api in API_PATHS):
            return Match.NONE, {}
        return super().matches(scope)


def mount(app: FastAPI) -> None:
    """Serve the dashboard at "/". Call after including the API routers."""
    files = StaticFiles(directory=STATIC_DIR, html=True)
    app.router.routes.append(UiMount(SecurityHeaders(files), name="ui"))
