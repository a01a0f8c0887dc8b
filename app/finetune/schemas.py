"""OpenAI's fine-tuning and files shapes, so the `openai` SDK works with only `base_url` changed,
plus our extensions (a dataset instead of a file, LoRA, progress) in the same objects."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    sha256: str


class FileDeleted(BaseModel):
    """OpenAI's answer to `DELETE /v1/files/{file_id}` (`client.files.delete()`)."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ModelDeleted(BaseModel):
    """OpenAI's answer to `DELETE /v1/models/{model}` (`client.models.delete()`)."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Annotated[int, Field(ge=1, le=50)] | Literal["auto"] = Field(
        "auto", description="1-50; auto = 3."
    )
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        "auto", description="1-256; auto = 8."
    )
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] = Field(
        "auto", description="Scales the base learning rate; 0 < m <= 10; auto = 1."
    )

    def resolved(self) -> dict[str, Any]:
        return {
            "n_epochs": 3 if self.n_epochs == "auto" else self.n_epochs,
            "batch_size": 8 if self.batch_size == "auto" else self.batch_size,
            "learning_rate_multiplier": (
                1.0 if self.learning_rate_multiplier == "auto" else self.learning_rate_multiplier
            ),
        }


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"] = "supervised"
    supervised: Supervised = Field(default_factory=Supervised)


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1, le=1024)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


# Exactly one source: a file id or a dataset name (the other absent or null), and hyperparameters
# in `method` or at the top level, not in both; stated in the schema too so that generated
# clients and fuzzers know it.
_ONE_SOURCE: dict[str, Any] = {
    "not": {
        "required": ["method", "hyperparameters"],
        "properties": {"method": {"type": "object"}, "hyperparameters": {"type": "object"}},
    },
    "oneOf": [
        {
            "required": ["training_file"],
            "properties": {
                "training_file": {"type": "string"},
                "dataset": {"type": "null"},
                "version": {"type": "null"},
            },
        },
        {
            "required": ["dataset"],
            "properties": {"dataset": {"type": "string"}, "training_file": {"type": "null"}},
        },
    ],
}


class FineTuningJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_SOURCE)

    model: str = Field(description="A base model from GET /v1/models or a fine-tuned one.")
    training_file: str | None = Field(None, description="A file id from POST /v1/files.")
    validation_file: str | None = None
    dataset: str | None = Field(
        None, description="Instead of a file: freeze this dataset's accepted tasks (and seeds)."
    )
    version: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="With `dataset`: train on this version of it (its tasks outside the "
        "held-out share). Left out: a version of the dataset's seeds and accepted tasks as they "
        "are now is made (or an identical one reused) and recorded on the job. A version "
        "with only held-out tasks is refused (422: `no train-side tasks`).",
    )
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,40}$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Training seed.")
    method: Method | None = None
    hyperparameters: Hyperparameters | None = Field(
        None, description="Legacy place; prefer method."
    )
    lora: LoraSettings | None = Field(None, description="LoRA instead of full fine-tuning.")
    max_seq_len: int = Field(1024, ge=32, le=32768)
    long_examples: Literal["truncate", "drop", "fail"] = Field(
        "truncate",
        description="An example longer than max_seq_len: truncate (keep the prompt, cut the "
        "answer's end), drop it, or fail the job. Counts appear in training_data and events.",
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    checkpoint_interval: int = Field(
        100, ge=1, le=100_000, description="Checkpoint every N steps; a lost job resumes there."
    )
    devices: int = Field(
        1,
        ge=1,
        le=1024,
        description="Devices that train the job together (torchrun, data parallel): GPUs on a "
        "CUDA worker; on a CPU worker, processes that share its cores. At most "
        "SELFINSTRUCT_FINETUNE_MAX_DEVICES; a worker with fewer fails the job saying so. "
        "Each step's examples are shared out: batch_size and losses mean what they mean on one.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Machines that train the job together, each a fine-tune worker training "
        "with `devices` devices; they meet at a torchrun rendezvous that the worker claiming "
        "the job serves and other workers join. At most SELFINSTRUCT_FINETUNE_MAX_NODES; the "
        "job fails when not every node joined within SELFINSTRUCT_RENDEZVOUS_TIMEOUT_S. Losses "
        "and the model are those of one device training the same batches.",
    )
    parallelism: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="With devices > 1: ddp keeps a whole model on each device; fsdp shards "
        "weights, gradients and optimizer state across them, for models too big for one "
        "(full fine-tuning only).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> FineTuningJobCreate:
        if (self.training_file is None) == (self.dataset is None):
            raise ValueError("give exactly one of training_file and dataset")
        if self.version is not None and self.dataset is None:
            raise ValueError("version names a version of `dataset`; give dataset with it")
        if self.method is not None and self.hyperparameters is not None:
            raise ValueError("give hyperparameters inside method, or at the top level, not both")
        return self

    def hyper(self) -> Hyperparameters:
        if self.method is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Progress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: int | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    status_message: str | None = Field(
        None, description="Why a queued job waits, when no fine-tune worker can take it."
    )


class TrainingData(BaseModel):
    examples: int | None = None
    tokens: int | None = None
    sha256: str | None = None
    truncated_examples: int | None = Field(
        None, description="Examples cut to max_seq_len (known once training starts)."
    )
    dropped_examples: int | None = Field(
        None, description="Examples left out: too long, or nothing to learn after the cut."
    )


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str = "selfinstruct"
    result_files: list[str] = Field(default_factory=list)
    status: str
    validation_file: str | None
    training_file: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    trained_tokens: int | None
    error: JobError | None
    seed: int
    suffix: str | None
    # --- extensions ---
    dataset: str | None = None
    version: int | None = Field(
        None, description="The dataset version it trained on (GET /v1/datasets/{name}/versions)."
    )
    nodes: int = Field(1, description="Machines that train the job together.")
    progress: Progress
    training_data: TrainingData


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any]
    type: Literal["message", "metrics"] = "message"


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    step_number: int
    metrics: dict[str, float | None]
    fine_tuning_job_id: str


class Page(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
