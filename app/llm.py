"""The model catalogue: which models runs may use, and the backend that serves each.

Clients name a model id; only settings map ids to URLs, so no request can make the server
call an arbitrary host.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

import generators.local  # noqa: F401  (registers the "local" backend)
from app.errors import NotFound
from app.finetune.service import tuned_model_dir
from app.models import FineTuningJobRow, JobStatus
from app.schemas.common import ErrorItem
from app.services.base_models import list_base_models
from app.settings import BUNDLED_MODEL_ID, EndpointConfig, Settings
from generators.base import Backend, create_backend
from generators.openai_compat import OpenAIBackend
from generators.pricing import DEFAULT_PRICES, PriceTable


@dataclass(frozen=True)
class ModelEntry:
    id: str
    backend: Literal["local", "openai"]
    endpoint: EndpointConfig | None = None
    mode: Literal["completion", "chat"] = "completion"
    model_path: str | None = None  # a fine-tuned or own base model's Hugging Face directory
    created: int | None = None
    base_model: bool = False  # from SELFINSTRUCT_BASE_MODELS_DIR: fine-tunable, not tuned here

    @property
    def owned_by(self) -> str:
        if self.base_model:
            return "selfinstruct:base-model"
        if self.model_path is not None:
            return "selfinstruct:fine-tune"
        return "selfinstruct" if self.endpoint is None else self.endpoint.name


def catalogue(settings: Settings, engine: Engine | None = None) -> list[ModelEntry]:
    """The bundled model, configured endpoints' models, the base model folders of
    SELFINSTRUCT_BASE_MODELS_DIR, and (with `engine`) fine-tuned ones."""
    entries = [ModelEntry(id=BUNDLED_MODEL_ID, backend="local")]
    for endpoint in settings.endpoints:
        entries += [
            ModelEntry(id=m, backend="openai", endpoint=endpoint, mode=endpoint.mode)
            for m in endpoint.models
        ]
    taken = {entry.id for entry in entries}  # a folder never hides a configured model
    entries += [
        ModelEntry(
            id=model.id,
            backend="local",
            mode="chat",
            model_path=str(model.path),
            created=model.created,
            base_model=True,
        )
        for model in list_base_models(settings)
        if model.id not in taken
    ]
    if engine is not None:
        with Session(engine) as session:
            for job in session.exec(
                select(FineTuningJobRow)
                .where(FineTuningJobRow.status == JobStatus.succeeded.value)
                .order_by(col(FineTuningJobRow.created_at))
            ):
                if job.fine_tuned_model:
                    entries.append(
                        ModelEntry(
                            id=job.fine_tuned_model,
                            backend="local",
                            mode="chat",
                            model_path=tuned_model_dir(settings, job),
                            created=int(job.finished_at.timestamp()) if job.finished_at else None,
                        )
                    )
    return entries


def find_model(
    settings: Settings, model_id: str, engine: Engine | None = None, *, field: str = "model"
) -> ModelEntry:
    """The catalogue entry of `model_id`; anything else (a URL included) is refused before any
    network call, naming the request `field` it came from. A 404, not a 422, for a model or a
    judge alike: the request is well formed (the schema cannot list models that come and go with
    fine-tunes), the model it names does not exist."""
    entries = catalogue(settings, engine)
    for entry in entries:
        if entry.id == model_id:
            return entry
    known = ", ".join(e.id for e in entries)
    raise NotFound(
        f"Model '{model_id}' is not available (field `{field}`); GET /v1/models lists them "
        f"({known}). Servers come from SELFINSTRUCT_ENDPOINTS, never from a request.",
        errors=[ErrorItem(field=field, reason="not a model id from GET /v1/models")],
    )


_backends: dict[tuple[int, str], Backend] = {}
_lock = threading.Lock()


def backend_for(settings: Settings, entry: ModelEntry) -> Backend:
    """One backend per model and event loop: httpx clients must not cross event loops."""
    key = (id(asyncio.get_running_loop()), entry.id)
    with _lock:
        backend = _backends.get(key)
        if backend is None:
            backend = _build(settings, entry)
            _backends[key] = backend
        return backend


def replica_health(settings: Settings, entry: ModelEntry) -> list[dict[str, object]]:
    """The pool's replicas as this process sees them (state shared by every event loop)."""
    if entry.endpoint is None:
        return []
    backend = backend_for(settings, entry)
    return backend.replica_health() if isinstance(backend, OpenAIBackend) else []


def _build(settings: Settings, entry: ModelEntry) -> Backend:
    if entry.endpoint is None:
        return create_backend(
            "local",
            {
                "model_id": entry.id,
                "model_path": entry.model_path,
                "n_threads": settings.local_threads,
            },
        )
    ep = entry.endpoint
    # The pool: `base_url` (if set) at the endpoint's concurrency, then each replica at its own.
    servers = [(ep.base_url, ep.max_concurrency)] if ep.base_url else []
    servers += [(r.base_url, r.max_concurrency or ep.max_concurrency) for r in ep.replicas]
    (first, first_concurrency), *more = servers
    return create_backend(
        "openai",
        {
            "base_url": first,
            "replicas": [{"base_url": url, "max_concurrency": c} for url, c in more],
            "api_key": ep.api_key,
            "model": entry.id,
            "timeout_s": ep.timeout_s,
            "max_concurrency": first_concurrency,
            "max_retries": ep.max_retries,
            "requests_per_minute": ep.requests_per_minute,
            "tokens_per_minute": ep.tokens_per_minute,
            "chat_template": ep.chat_template,
            "structured_output": ep.structured_output,
        },
    )


def price_table(settings: Settings) -> PriceTable:
    return DEFAULT_PRICES.merged({k: v.model_dump() for k, v in settings.prices.items()})


async def probe(settings: Settings, entry: ModelEntry, timeout_s: float = 3.0) -> bool:
    """Whether the model answers now; never raises, never waits long."""
    try:
        return await asyncio.wait_for(backend_for(settings, entry).check(), timeout=timeout_s)
    except Exception:
        return False
