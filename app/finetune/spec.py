"""What a worker needs to train a job (`JobSpec`), built from the job's row: the database
worker, each node of a job on several machines and (as JSON) a remote worker get the same."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.finetune.protocol import JobConfig, JobSpec
from app.finetune.service import tuned_model_dir
from app.models import FineTuningJobRow, JobStatus
from app.services.base_models import find_base_model
from app.settings import BUNDLED_MODEL_ID, Settings


def model_dir_for(settings: Settings, engine: Engine, model: str) -> str | None:
    """The Hugging Face directory of a base model folder's id (SELFINSTRUCT_BASE_MODELS_DIR) or
    of a fine-tuned model id (the merged model for LoRA)."""
    own = find_base_model(settings, model)
    if own is not None:
        return str(own.path)
    with Session(engine) as session:
        job = session.exec(
            select(FineTuningJobRow).where(
                FineTuningJobRow.fine_tuned_model == model,
                FineTuningJobRow.status == JobStatus.succeeded.value,
            )
        ).first()
    if job is None:
        return None
    return tuned_model_dir(settings, job)


def job_spec(settings: Settings, engine: Engine, job: FineTuningJobRow) -> JobSpec:
    """What a worker needs to train a job (a remote worker gets it as JSON).

    `base_model` is None for the bundled model, which every worker finds in its own install.
    """
    hyper, method = job.hyperparameters, job.method
    lora = method.get("lora") or {}
    assert job.training_file is not None  # a job without one fails validation, never queues
    return JobSpec(
        job_id=job.id,
        base_model=None
        if job.model == BUNDLED_MODEL_ID
        else model_dir_for(settings, engine, job.model),
        training_file=job.training_file,
        validation_file=job.validation_file,
        config=JobConfig(
            method="lora" if lora else "full",
            n_epochs=hyper["n_epochs"],
            batch_size=hyper["batch_size"],
            learning_rate_multiplier=hyper["learning_rate_multiplier"],
            max_seq_len=method.get("max_seq_len", 1024),
            long_examples=method.get("long_examples", "truncate"),
            seed=job.seed or 0,
            checkpoint_interval=method.get("checkpoint_interval", 100),
            devices=method.get("devices", 1),
            nodes=job.nodes,
            parallelism=method.get("parallelism", "ddp"),
            max_steps=method.get("max_steps") or None,
            lora_r=lora.get("r"),
            lora_alpha=lora.get("alpha"),
            lora_dropout=lora.get("dropout"),
            lora_target_modules=lora.get("target_modules"),
        ),
        lease_seconds=settings.worker_lease_seconds,
    )
