"""The dashboard: static files served by the API itself, so `make run` needs no other server."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def dashboard() -> FileResponse:
    """The single page; it routes by URL fragment, so every view is this one file."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
