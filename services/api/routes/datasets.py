"""/v1/datasets: upload image data sets (IDX, npz, zip of class folders) and list them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, status

from services.api.deps import CatalogDep, PrincipalDep, SettingsDep, get_principal
from services.api.errors import ERROR_RESPONSES, ApiProblem
from shared.datasets import DatasetError, Limits, parse_upload
from shared.schemas import DatasetPublic, DatasetsPublic

router = APIRouter(
    prefix="/v1/datasets",
    tags=["datasets"],
    responses=ERROR_RESPONSES,
    dependencies=[Depends(get_principal)],
)
CHUNK = 1 << 20


@router.post("", status_code=status.HTTP_201_CREATED)
def upload_dataset(
    request: Request,
    principal: PrincipalDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    files: Annotated[
        list[UploadFile],
        File(
            description="IDX images (+ labels), "
            "raw or gzip; or one .npz (x, y, classes); or one .zip of "
            "class folders"
        ),
    ],
    name: Annotated[str | None, Form(max_length=100)] = None,
) -> DatasetPublic:
    """Upload a data set; it is validated, stored in the object store and given an id."""
    limit = settings.UPLOAD_MAX_BYTES
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit + 64 * 1024:  # multipart framing aside, refuse before reading
        raise ApiProblem(413, f"upload of {declared} bytes is over the {limit}-byte limit")
    received: dict[str, bytes] = {}
    total = 0
    for upload in files:
        data = bytearray()
        while chunk := upload.file.read(CHUNK):
            data += chunk
            total += len(chunk)
            if total > limit:
                raise ApiProblem(413, f"upload is over the {limit}-byte limit")
        received[upload.filename or f"file{len(received)}"] = bytes(data)
    try:
        parsed = parse_upload(received, Limits(max_upload_bytes=limit))
    except DatasetError as exc:
        raise ApiProblem(exc.status, str(exc)) from exc
    return catalog.add(parsed, principal.owner, name)


@router.get("")
def list_datasets(principal: PrincipalDep, catalog: CatalogDep) -> DatasetsPublic:
    """Uploaded data sets, newest first. Built-in ones (mnist-5k, mnist, fashion-mnist, fake)
    need no upload."""
    found = catalog.list_for(principal)
    return DatasetsPublic(data=found, count=len(found))


@router.get("/{dataset_id}")
def get_dataset(dataset_id: str, principal: PrincipalDep, catalog: CatalogDep) -> DatasetPublic:
    """One uploaded data set."""
    return catalog.get(dataset_id, principal)
