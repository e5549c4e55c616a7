"""The OpenAPI document at /openapi.json: FastAPI's, with optional parameters documented as
what they are on the wire.

An optional query or header parameter is typed `str | None` in Python, which FastAPI documents
as `anyOf: [{string...}, {null}]`. HTTP has no null parameter: absent means None, and a client
that reads the document literally sends `?cursor=null` or `Last-Event-ID: null`, which the
pattern refuses. So each parameter's schema keeps its non-null branch only (bodies keep their
nulls: JSON has them)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Serve FastAPI's document with nullable parameters rewritten; built once, on first use."""
    make = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_null_parameters(make())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def without_null_parameters(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with every path, query and header parameter's `anyOf: [X, {type: null}]`
    replaced by X (its description, title and default kept). Changes and returns `document`."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                branches = [b for b in schema.get("anyOf", []) if b != {"type": "null"}]
                if len(branches) == 1 and len(schema["anyOf"]) == 2:
                    rest = {k: v for k, v in schema.items() if k != "anyOf"}
                    parameter["schema"] = {**branches[0], **rest}
    return document
