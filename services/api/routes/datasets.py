"""/v1/datasets: upload image data sets (IDX, npz, zip of class folders) and list them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request, status
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from services.api.deps import (
    CatalogDep,
    DatasetIdDep,
    PrincipalDep,
    get_principal,
)
from services.api.errors import ERROR_RESPONSES, ApiProblem
from shared.schemas import DatasetPublic, DatasetsPublic
from shared.uploads import DatasetError

router = APIRouter(
    prefix="/v1/datasets",
    tags=["datasets"],
    responses=ERROR_RESPONSES,
    dependencies=[Depends(get_principal)],
)
T = TypeVar("T")
# The multipart form POST /v1/datasets takes. The route reads it itself, after the quota
# check, so it is documented here rather than declared as File/Form parameters (FastAPI would
# parse those before any check ran). Its size is capped by limits.RequestGuard
# (UPLOAD_MAX_BYTES for the whole body, so for every part, files included).
MAX_FILES = 8
TEXT_FIELD_MAX_BYTES = 1024
UPLOAD_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            },
                            "minItems": 1,
                            "maxItems": MAX_FILES,
                            "description": "IDX images (+ labels), raw or gzip; or one .npz "
                            "(x, y, classes); or one .zip of class folders",
                        },
                        "name": {"type": "string", "maxLength": 100},
                        "name_encoding": {
                            "type": "string",
                            "maxLength": 32,
                            "description": "The code page of zip entry names stored without "
                            'the UTF-8 flag (e.g. "cp866"). When not given, such names are '
                            "read as UTF-8 if they decode as UTF-8 (tools that omit the "
                            "flag), else as cp437, the zip standard's",
                        },
                    },
                }
            }
        },
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, openapi_extra=UPLOAD_FORM)
async def upload_dataset(
    request: Request, principal: PrincipalDep, catalog: CatalogDep
) -> DatasetPublic:
    """Upload a data set; it is validated, stored in the object store and given an id.
    429/413 before the body is read when the owner's data set quota is used up."""
    await _catalog_call(catalog.check_quota, principal.owner)
    try:
        async with catalog.upload_slot():  # 503 before any body byte when all are taken
            async with request.form(
                max_files=MAX_FILES, max_fields=MAX_FILES, max_part_size=TEXT_FIELD_MAX_BYTES
            ) as form:
                files: dict[str, bytes] = {}
                for i, part in enumerate(form.getlist("files")):
                    if not isinstance(part, UploadFile):
                        raise ApiProblem(422, "files: each part must be a file", field="files")
                    files[part.filename or f"file{i}"] = await part.read()
                name, name_encoding = _text(form, "name"), _text(form, "name_encoding")
            if not files:
                raise ApiProblem(422, "files: at least one file is required", field="files")
            return await _catalog_call(catalog.ingest, files, principal.owner, name, name_encoding)
    except DatasetError as exc:
        raise _problem(exc) from exc


def _text(form: FormData, field: str) -> str | None:
    value = form.get(field)
    if value is not None and not isinstance(value, str):
        raise ApiProblem(422, f"{field}: expected text, not a file", field=field)
    return value


async def _catalog_call(call: Callable[..., T], *args: Any) -> T:
    """A catalog call in the thread pool (it does Redis, S3 and CPU work); DatasetError as the
    API's error (its status, message, field, Retry-After)."""
    try:
        return await run_in_threadpool(call, *args)
    except DatasetError as exc:
        raise _problem(exc) from exc


def _problem(exc: DatasetError) -> ApiProblem:
    retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    return ApiProblem(exc.status, str(exc), field=exc.field, headers=retry)


@router.get("")
def list_datasets(principal: PrincipalDep, catalog: CatalogDep) -> DatasetsPublic:
    """Uploaded data sets, newest first. Built-in ones (mnist-5k, mnist, fashion-mnist, fake)
    need no upload."""
    found = catalog.list_for(principal)
    return DatasetsPublic(data=found, count=len(found))


@router.get("/{dataset_id}")
def get_dataset(
    dataset_id: DatasetIdDep, principal: PrincipalDep, catalog: CatalogDep
) -> DatasetPublic:
    """One uploaded data set."""
    return catalog.get(dataset_id, principal)
