"""Dataset versions: freeze a selection of a dataset's tasks, list and read them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from app.api.deps import DatasetDep, SessionDep
from app.schemas.common import MAX_ID, ErrorResponse
from app.schemas.versions import VersionCreate, VersionPublic, VersionsPublic
from app.services import versions as svc
from app.services.export import Selection

router = APIRouter(prefix="/datasets/{name}/versions", tags=["versions"])

VersionId = Annotated[int, Path(ge=1, le=MAX_ID, description="Version id.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def create_version(session: SessionDep, dataset: DatasetDep, body: VersionCreate) -> VersionPublic:
    """Freeze the selected tasks, as they are now, as a version.

    A selection that holds no task is refused (422: each selection field `selects no task`).
    """
    selection = Selection(**body.model_dump(exclude={"tag"}))
    version = svc.create_version(
        session=session, dataset=dataset, selection=selection, tag=body.tag
    )
    return svc.version_public(version=version, dataset=dataset)


@router.get("", responses={404: {"model": ErrorResponse}})
def list_versions(session: SessionDep, dataset: DatasetDep) -> VersionsPublic:
    """List the dataset's versions, newest first, with their counts."""
    data = [
        svc.version_public(version=v, dataset=dataset)
        for v in svc.list_versions(session=session, dataset=dataset)
    ]
    return VersionsPublic(data=data, count=len(data))


@router.get("/{version_id}", responses={404: {"model": ErrorResponse}})
def read_version(session: SessionDep, dataset: DatasetDep, version_id: VersionId) -> VersionPublic:
    """Read one version: its selection, content hash and counts by origin, strategy, language,
    rating and split."""
    version = svc.get_version(session=session, dataset=dataset, version_id=version_id)
    return svc.version_public(version=version, dataset=dataset)
