"""Builds the FastAPI application; nothing else happens here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.api.main import api_router, health_router, openapi_builder, workers_router
from app.bootstrap import ensure_default_dataset, refresh_contamination_marks
from app.db import check_migrated, make_engine
from app.errors import install_error_handlers
from app.limits import BodyLimitMiddleware, LocalQueue
from app.llm import price_table
from app.metrics import MetricsMiddleware, use_prices
from app.settings import Settings, get_settings
from app.web import STATIC_DIR
from app.web import router as web_router
from app.worker import Worker

DESCRIPTION = """
Grow instruction-tuning data from a small seed pool with the Self-Instruct method, keep every
candidate with the reason it was accepted or rejected, and export JSONL for fine-tuning.

State-changing routes need `Authorization: Bearer <token>` when `SELFINSTRUCT_API_TOKEN` is set.
Errors are JSON: `{"detail": ..., "code": ..., "errors": [{"line", "field", "reason"}]}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        check_migrated(settings, engine)
        ensure_default_dataset(engine=engine, settings=settings)
        refresh_contamination_marks(engine=engine)
        app.state.engine = engine
        worker = Worker(engine=engine, settings=settings) if settings.embedded_worker else None
        thread = worker.start_thread() if worker else None
        try:
            yield
        finally:
            if worker and thread:
                worker.stop()
                thread.join(timeout=10)
            engine.dispose()

    app = FastAPI(
        title="selfinstruct",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.local_queue = LocalQueue(settings.local_queue_size)
    use_prices(price_table(settings))
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    app.include_router(health_router)
    app.include_router(api_router)
    app.include_router(workers_router)
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = openapi_builder(app)  # type: ignore[method-assign]
    return app
