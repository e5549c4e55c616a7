"""The API's front door: nothing of a request body is read before its headers, token, media
type and size are checked.

FastAPI parses a body (JSON or a multipart form, spooling files to the temp dir) before the
route's dependencies run, so the token check in `deps.get_principal` comes too late to protect
the process. `RequestGuard` sits in front of the app and answers, before any `receive()`:

- 400 when a header that decides who is calling or how the body is framed or parsed
  (Authorization, Content-Type, Content-Length, Transfer-Encoding) appears twice, or when
  Content-Length and Transfer-Encoding come together: two parsers could each pick a
  different one;
- 401 on a /v1 request with a body and no valid bearer token;
- 415 when the body's media type is not the one the route takes (a `BodyRule`);
- 413 when the declared Content-Length is over the route's limit; a chunked body is counted
  as it is handed to the app and refused (413) as soon as it passes the limit.

Bytes handed to the app are counted in `trainyard_http_request_body_bytes_total`."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import CODES, ApiProblem, error_response
from services.api.metrics import REQUEST_BODY_BYTES
from shared.auth import Principal, TokenTable

JSON = "application/json"
MULTIPART = "multipart/form-data"
# Headers that may appear once at most (lower case, as ASGI gives them).
SINGLE = (b"authorization", b"content-type", b"content-length", b"transfer-encoding")
CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class BodyRule:
    """What a route takes as a body: one media type, at most `max_bytes` bytes on the wire."""

    media_type: str
    max_bytes: int

    def accepts(self, content_type: str) -> bool:
        media = content_type.split(";", 1)[0].strip().lower()
        if self.media_type == JSON:  # as FastAPI parses it: application/json or */*+json
            return media == JSON or (media.startswith("application/") and media.endswith("+json"))
        return media == self.media_type


class BodyTooLarge(ApiProblem):
    """Raised from `receive()` when a body passes its limit; rendered as a 413 by the app's
    error handler (or by the guard itself)."""

    def __init__(self, where: str, max_bytes: int) -> None:
        super().__init__(413, f"the request body is over the {max_bytes}-byte limit of {where}")


class RequestGuard:
    """Pure ASGI middleware; see the module docstring. `rules` maps (method, path) to the
    route's `BodyRule` (a path segment `*` matches any one segment); every other request with
    a body takes `default` (JSON)."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: TokenTable,
        default: BodyRule,
        rules: dict[tuple[str, str], BodyRule],
    ) -> None:
        self.app, self.tokens, self.default, self.rules = app, tokens, default, rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in headers and name in SINGLE:
                await self._refuse(scope, send, 400, f"duplicate {name.decode()} header")
                return
            headers.setdefault(name, value)
        declared = headers.get(b"content-length")
        chunked = b"transfer-encoding" in headers
        if declared is not None and chunked:
            await self._refuse(
                scope, send, 400, "Content-Length and Transfer-Encoding together are ambiguous"
            )
            return
        if declared is not None and not declared.isdigit():
            await self._refuse(scope, send, 400, "Content-Length is not a number")
            return
        if not chunked and (declared is None or int(declared) == 0):  # no body to guard
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        where = f"{method} {path}"
        api = path == "/v1" or path.startswith("/v1/")
        if api and self._principal(headers.get(b"authorization")) is None:
            await self._refuse(
                scope,
                send,
                401,
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
            return
        rule = self._rule(method, path.rstrip("/"))
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        # A method no route has on this path is the router's 404/405 (with Allow), answered
        # without reading the body, which stays capped at the default limit meanwhile.
        if _routed(scope) and not rule.accepts(content_type):
            given = f"not {content_type!r}" if content_type else "and no Content-Type was given"
            await self._refuse(scope, send, 415, f"{where} takes {rule.media_type} {given}")
            return
        if declared is not None and int(declared) > rule.max_bytes:
            await self._refuse(
                scope,
                send,
                413,
                f"a request body of {declared.decode('latin-1')} bytes is over the "
                f"{rule.max_bytes}-byte limit of {where}",
            )
            return
        await self._counted(scope, receive, send, rule, where)

    async def _counted(
        self, scope: Scope, receive: Receive, send: Send, rule: BodyRule, where: str
    ) -> None:
        """The app, with a receive() that hands it at most `rule.max_bytes` body bytes. An
        answer that starts before the body was read whole (a 413 past the limit, a 404/405,
        an error) closes the connection: the server would otherwise read the rest to find the
        next request."""
        total, started, read_whole = 0, False, False

        async def counting_receive() -> Message:
            nonlocal total, read_whole
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if total + size > rule.max_bytes:
                    raise BodyTooLarge(where, rule.max_bytes)
                total += size
                read_whole = not message.get("more_body", False)
                route = getattr(scope.get("route"), "path", "unmatched")
                REQUEST_BODY_BYTES.labels(scope["method"], route).inc(size)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not read_whole:
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # when the app's own error handler did not answer it
            if not started:
                await self._refuse(scope, send, 413, str(exc.detail))

    def _rule(self, method: str, path: str) -> BodyRule:
        """The rule of (method, path): an exact key, else a key whose path has `*` segments
        (each matches one segment: "/v1/jobs/*/predict"), else the default."""
        found = self.rules.get((method, path))
        if found is not None:
            return found
        parts = path.split("/")
        for (rule_method, pattern), rule in self.rules.items():
            wanted = pattern.split("/")
            if (
                rule_method == method
                and len(wanted) == len(parts)
                and "*" in wanted
                and all(w == p or (w == "*" and p) for w, p in zip(wanted, parts, strict=True))
            ):
                return rule
        return self.default

    def _principal(self, authorization: bytes | None) -> Principal | None:
        """As `deps.get_principal` reads it: `Bearer <token>`, the scheme in any case."""
        scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.tokens.authenticate(token)

    @staticmethod
    async def _refuse(
        scope: Scope,
        send: Send,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer without reading the body; the server closes the connection after it."""

        async def no_body() -> Message:  # the response never reads the request
            return {"type": "http.disconnect"}

        headers = {**(headers or {}), "Connection": "close"}  # the body is never read
        response = error_response(status, CODES[status], message, headers=headers)
        await response(scope, no_body, send)


def _routed(scope: Scope) -> bool:
    """Whether a route of the app takes this method on this path (Starlette sets
    scope["app"] before the middleware stack runs)."""
    routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
    return any(route.matches(scope)[0] is Match.FULL for route in routes)
