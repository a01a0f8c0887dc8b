"""Start-up work: the `default` dataset with the starter seeds, so a new user can generate, and
contamination marks a killed process left behind."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from app.models import Dataset
from app.services.datasets import DEFAULT_DATASET
from app.services.decontamination import refresh_all
from app.services.seeds import import_seeds, starter_seeds
from app.settings import Settings

log = logging.getLogger("selfinstruct")


def ensure_default_dataset(*, engine: Engine, settings: Settings) -> None:
    if not settings.load_starter_seeds:
        return
    with Session(engine, expire_on_commit=False) as session:
        if session.exec(select(Dataset.id).where(Dataset.name == DEFAULT_DATASET)).first():
            return
        dataset = Dataset(
            name=DEFAULT_DATASET,
            description="Starter pool: the project's own English and Chinese seed tasks.",
        )
        session.add(dataset)
        try:
            session.flush()
        except IntegrityError:  # another process created it first
            session.rollback()
            return
        result = import_seeds(session=session, dataset=dataset, seeds=starter_seeds())
        log.info("created dataset 'default' with %d starter seeds", result.created)


def refresh_contamination_marks(*, engine: Engine) -> None:
    """Marks are refreshed by the writes (app/services/decontamination.py); a process killed
    between a commit and the refresh of the datasets that name its dataset left them behind,
    and reads never write. Cheap when every dataset is up to date."""
    refresh_all(engine)
