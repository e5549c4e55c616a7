"""One error shape for every 4xx/5xx: {"error": {"code", "message", "field"?, "details"?}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from shared.catalog import DatasetNotFound
from shared.schemas import ErrorBody, ErrorResponse
from shared.state.records import JobNotFound
from shared.status import IllegalTransition

log = logging.getLogger(__name__)

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}

# Documented on every route: the shape above, for any client or server error.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Client error"},
    "5XX": {"model": ErrorResponse, "description": "Server error"},
}


class ApiProblem(HTTPException):
    """An HTTPException with a code and, optionally, the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.code = code or CODES.get(status, "error")
        self.field = field


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, field=field, details=details))
    return JSONResponse(body.model_dump(exclude_none=True), status, headers=headers)


def _field_of(error: dict[str, Any]) -> str | None:
    """("body", "classifier", "epochs") -> "epochs"; a bad `task` names the discriminator; a
    cross-field rule (shared/schemas.py _field_error) names its field in ctx["field"]."""
    ctx = error.get("ctx") or {}
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return str(ctx.get("discriminator", "task")).strip("'")
    if isinstance(ctx.get("field"), str):
        return str(ctx["field"])
    # The top-level name only: after it come list indexes and union members' tags
    # (("body", "classifier", "crop", "constrained-int") -> "crop", not "crop.constrained-int").
    parts = [p for p in error["loc"][1:] if isinstance(p, str)]
    parts = [p for p in parts if p not in ("classifier", "gan", "cgan")]
    return parts[0] if parts else None


METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The `Allow` of a 405: each method some route fully matches at this path, e.g.
    "GET, HEAD, POST" for /v1/jobs (Starlette's own names the first matching route's only)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": _field_of(e), "message": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        first = details[0] if details else {"field": None, "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return error_response(422, "validation_error", str(message), first["field"], details)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or CODES.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return error_response(
            exc.status_code, code, str(exc.detail), getattr(exc, "field", None), headers=headers
        )

    @app.exception_handler(JobNotFound)
    @app.exception_handler(DatasetNotFound)
    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return error_response(404, "not_found", str(exc))

    @app.exception_handler(IllegalTransition)
    async def conflict(_: Request, exc: IllegalTransition) -> JSONResponse:
        return error_response(409, "conflict", str(exc))

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        # The client hung up before its body was complete: nothing was stored, no one reads
        # the answer, and it is not a server error.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return error_response(400, "bad_request", "the client disconnected mid-request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the server log")
