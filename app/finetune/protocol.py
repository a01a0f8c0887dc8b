"""The fine-tune worker protocol: what a worker gets to train a job (`JobSpec`), what it reports
while training (one event model per kind, told apart by `type`), and how the job ended
(`Outcome`).

Both workers speak it: the database worker turns training's events into these models and
records them through the same function the HTTP routes call for a remote worker, which sends
exactly these models, so one validation serves both and the OpenAPI schema shows them.

This module needs pydantic alone: a remote worker imports it without the database's packages.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

# Text the database can hold (PostgreSQL refuses NUL characters), stated in the schema.
NO_NUL = "^[^\u0000]*$"
Text = Annotated[str, Field(max_length=200, pattern=NO_NUL)]
PathText = Annotated[str, Field(max_length=4096, pattern=NO_NUL)]
# A step is stored in an INTEGER column; other counts only in JSON.
Step = Annotated[int, Field(ge=0, le=2**31 - 1)]
# Counts stay below 2**53, where every integer is also an exact JSON (double) number: a client
# that compares numbers as doubles (most JSON Schema validators) takes 2**62 + 1 for 2**62 and
# would send a count this server refuses. 10**15 tokens is far beyond any job.
MAX_COUNT = 10**15
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Seconds = Annotated[float, Field(ge=0, le=1e12)]


def _whole(value: object) -> object:
    """3.0 is the integer 3 in JSON; text, booleans and fractions are not counts."""
    if isinstance(value, bool | str):
        raise ValueError("must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


# A count a client may send as 3.0: the bounds sit on the type, so the schema shows them too.
WholeCount = Annotated[int, Field(ge=0, le=MAX_COUNT), BeforeValidator(_whole)]


# --- the job ----------------------------------------------------------------------------------


class JobConfig(BaseModel):
    """The fields of training's FinetuneConfig that a job sets; the rest keep their defaults."""

    method: Literal["full", "lora"]
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    max_seq_len: int
    long_examples: Literal["truncate", "drop", "fail"] = "truncate"
    seed: int = 0
    checkpoint_interval: int = 100
    devices: int = 1
    nodes: int = Field(1, description="Machines; a remote worker is only given jobs on one.")
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    max_steps: int | None = Field(None, description="Absent: train every epoch.")
    lora_r: int | None = Field(None, description="LoRA only, as are the other lora_ fields.")
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_target_modules: list[str] | None = None

    def training_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for FinetuneConfig: fields left unset there take its defaults."""
        return self.model_dump(exclude_none=True)


class JobSpec(BaseModel):
    """What a worker needs to train a job."""

    job_id: str
    base_model: str | None = Field(
        description="A Hugging Face model folder; null for the bundled model, which every worker "
        "finds in its own install."
    )
    training_file: str = Field(description="A file id; GET /v1/files/{id}/content has its data.")
    validation_file: str | None = None
    config: JobConfig
    lease_seconds: float = Field(
        description="The claim's lease: a worker renews it (any events report) more often "
        "than this, also while no event comes."
    )


# --- events -----------------------------------------------------------------------------------


class StartEvent(BaseModel):
    """Training began (or resumed): the data and how the job runs."""

    type: Literal["start"]
    start_step: Step | None = None
    total_steps: Step | None = None
    n_train_examples: Count | None = None
    n_valid_examples: Count | None = None
    train_tokens: Count | None = None
    truncated_examples: Count = Field(0, description="Examples cut to max_seq_len.")
    dropped_examples: Count = Field(0, description="Examples left out (long_examples).")
    params: Count | None = None
    trainable_params: Count | None = None
    device: Text | None = None
    devices: Count | None = None
    parallelism: Text | None = None
    dtype: Text | None = None
    compiled: bool | None = None
    gradient_checkpointing: bool | None = None
    loss_chunk_tokens: Count | None = None
    loss_kernel: Text | None = None
    attn_implementation: Text | None = None
    memory_estimate_bytes: Count | None = None
    memory_available_bytes: Count | None = None
    method: Text | None = None

    def message(self) -> str:
        return "Training started"


class StepEvent(BaseModel):
    """One optimizer step."""

    type: Literal["step"]
    step: Step
    total_steps: Step
    train_loss: float
    epoch: Count | None = None
    lr: float | None = None
    tokens: Count | None = None
    tokens_per_s: float | None = None
    trained_tokens: Count | None = None
    elapsed_s: Seconds | None = Field(None, description="Since training began.")
    mfu: float | None = None

    def message(self) -> str:
        return f"Step {self.step}/{self.total_steps}: training loss={self.train_loss:.4f}"


class EvalEvent(BaseModel):
    """The validation loss at a step."""

    type: Literal["eval"]
    step: Step
    eval_loss: float

    def message(self) -> str:
        return f"Step {self.step}: validation loss={self.eval_loss:.4f}"


class CheckpointEvent(BaseModel):
    """A checkpoint was written; a job claimed again resumes from the newest."""

    type: Literal["checkpoint"]
    step: Step
    path: PathText

    def message(self) -> str:
        return f"Checkpoint saved at step {self.step}"


class CancelledEvent(BaseModel):
    """Training stopped before its end: the job was cancelled, taken over or handed back."""

    type: Literal["cancelled"]
    step: Step

    def message(self) -> str:
        return "Training cancelled"


class DoneEvent(BaseModel):
    """Training finished and wrote the final model."""

    type: Literal["done"]
    step: Step
    final_dir: PathText | None = None
    trained_tokens: Count | None = None
    train_loss: float | None = None
    eval_loss: float | None = None

    def message(self) -> str:
        return f"Training finished after step {self.step}"


WorkerEvent = Annotated[
    StartEvent | StepEvent | EvalEvent | CheckpointEvent | CancelledEvent | DoneEvent,
    Field(discriminator="type"),
]
_EVENT = TypeAdapter[WorkerEvent](WorkerEvent)


def parse_event(event: dict[str, Any]) -> WorkerEvent:
    """Training's event (a plain dict) as the protocol's model; ValidationError if it is not one."""
    return _EVENT.validate_python(event)


def event_data(event: WorkerEvent) -> dict[str, Any]:
    """The fields the worker sent (no defaults filled in): what a job's event shows as `data`."""
    return event.model_dump(mode="json", exclude_unset=True)


# --- the outcome ------------------------------------------------------------------------------


class JobErrorReport(BaseModel):
    code: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    message: str = Field(max_length=10_000, pattern=NO_NUL)
    param: str | None = Field(None, max_length=100, pattern=NO_NUL)


class Succeeded(BaseModel):
    """The job trained to its end and wrote its model."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["succeeded"]
    # A count: JSON's 3.0 is the integer 3 (JSON Schema says so), but "3" and true are refused.
    trained_tokens: WholeCount | None = None
    steps: WholeCount | None = Field(
        None, description="Optimizer steps done in all, those before a resume included."
    )
    total_steps: WholeCount | None = None
    model_dir: PathText | None = Field(
        None,
        description="The tuned model's folder; must lie inside the API's data dir, which the "
        "API loads it from (resolved, links followed): a folder outside the data dir is refused.",
    )


class Failed(BaseModel):
    """The job cannot be trained; `error` says why."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["failed"]
    error: JobErrorReport


Outcome = Annotated[Succeeded | Failed, Field(discriminator="status")]


# --- the remote worker's requests ---------------------------------------------------------------


class ClaimRequest(BaseModel):
    worker_id: str = Field(min_length=1, max_length=200, pattern=NO_NUL)


class EventsRequest(ClaimRequest):
    events: list[WorkerEvent] = Field(
        max_length=1000, description="Oldest first; none at all only renews the lease."
    )


class CompleteRequest(ClaimRequest):
    outcome: Outcome


class Continue(BaseModel):
    proceed: bool = Field(description="False: the job was cancelled or taken over; stop now.")
