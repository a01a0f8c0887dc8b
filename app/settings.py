"""The one settings object: read from the environment once, validated, injected everywhere."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_TOKENS = {"changethis", "changeme", "secret", "token", "password"}
TOKEN_RECIPE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
BUNDLED_MODEL_ID = "SmolLM2-135M-Instruct"


DEFAULT_ENDPOINT_CONCURRENCY = 32
"""Requests in flight per server by default. vLLM and llama.cpp servers batch requests, so a
few dozen at once keeps one busy; raise it towards the server's batch size (vLLM's
`--max-num-seqs`, 256 by default; llama.cpp's `--parallel`) and lower it for hosted APIs with
tight rate limits. A 429 lowers it at run time anyway (generators/pool.py)."""


class ReplicaConfig(BaseModel):
    """One more server of an endpoint's models (a replica of the same deployment)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(min_length=1)
    max_concurrency: int | None = Field(
        default=None, ge=1, le=1024, description="This replica's limit; default: the endpoint's."
    )


class EndpointConfig(BaseModel):
    """An OpenAI-compatible server (or a pool of replicas) runs may use; clients pick models,
    never URLs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    base_url: str | None = Field(
        default=None, description="The server; with `replicas`, the first of the pool."
    )
    replicas: list[ReplicaConfig] = Field(
        default_factory=list, description="Servers of the same models; least loaded first."
    )
    api_key: SecretStr | None = None
    models: list[str] = Field(min_length=1, description="Model ids this endpoint serves.")
    mode: Literal["completion", "chat"] = Field(
        default="completion", description="Raw continuation (/v1/completions) or chat."
    )
    max_concurrency: int = Field(default=DEFAULT_ENDPOINT_CONCURRENCY, ge=1, le=1024)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=5, ge=0, le=100)
    chat_template: str | None = Field(
        default=None,
        description="The models' Jinja chat template, for strategies that need it (GET "
        "/v1/strategies) on a completion endpoint that does not report it (llama.cpp's server "
        "does, at /props).",
    )
    structured_output: Literal["none", "json_schema", "grammar"] = Field(
        default="none",
        description="How the servers constrain an answer to a shape (the judge's rating): "
        "json_schema (`response_format`: OpenAI, vLLM), grammar (GBNF: llama.cpp's servers), "
        "or none (answers are parsed from text).",
    )

    @model_validator(mode="after")
    def _one_pool(self) -> EndpointConfig:
        urls = self.urls()
        if not urls:
            raise ValueError(
                f"endpoint '{self.name}' has no server: set `base_url` or list `replicas`"
            )
        doubled = sorted({u for u in urls if urls.count(u) > 1})
        if doubled:
            raise ValueError(
                f"endpoint '{self.name}' lists {doubled[0]} twice; list each replica once"
            )
        return self

    def urls(self) -> list[str]:
        """Every server of the pool, first `base_url`, compared without trailing slashes."""
        raw = ([self.base_url] if self.base_url else []) + [r.base_url for r in self.replicas]
        return [u.rstrip("/") for u in raw]


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_per_1k: float = Field(ge=0)
    completion_per_1k: float = Field(ge=0)


class Settings(BaseSettings):
    """Service configuration. Every field is an environment variable (docs/CONFIGURATION.md)."""

    # An empty variable means "unset": docker-compose.yml passes `${SELFINSTRUCT_X:-}` through
    # from .env as an empty string when the user leaves a line blank, and an empty base models
    # dir would otherwise be the working directory, an empty bool or JSON list an error.
    model_config = SettingsConfigDict(
        env_prefix="SELFINSTRUCT_",
        env_file=None,
        env_ignore_empty=True,
        extra="ignore",
        validate_default=True,
    )

    # --- storage ---
    data_dir: Path = Field(
        default=Path("data"),
        description="Folder for the SQLite file, artifacts and caches. Created on start.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        description="SQLAlchemy URL; empty means a SQLite file under the data dir. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )

    # --- HTTP ---
    host: str = Field(default="127.0.0.1", description="Interface `selfinstruct serve` binds.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `selfinstruct serve` binds.")
    api_token: SecretStr | None = Field(
        default=None,
        description="When set, every state-changing route needs `Authorization: Bearer <token>`.",
    )
    private_reads: bool = Field(
        default=False,
        description="Every /v1 read needs the API token too (exports, uploaded files and "
        "tasks included); needs SELFINSTRUCT_API_TOKEN.",
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )

    # --- seeds ---
    seed_import_max_tasks: int = Field(
        default=10_000, gt=0, description="Most tasks one seed import may carry."
    )
    seed_import_max_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="Largest seed import (JSON, JSONL or an uploaded file), in bytes (413 above).",
    )
    load_starter_seeds: bool = Field(
        default=True,
        description="Create dataset `default` with the bundled starter seeds when it is missing.",
    )

    # --- documents (strategy backtranslate) ---
    document_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="Largest document one upload may hold; a larger one refuses the upload.",
    )

    # --- generation ---
    endpoints: list[EndpointConfig] = Field(
        default_factory=list,
        description='OpenAI-compatible servers as JSON, e.g. [{"name": "vllm", "base_url": '
        '"http://10.0.0.5:8000/v1", "models": ["Qwen2.5-7B-Instruct"]}]',
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description='Per-model prices per 1K tokens as JSON, e.g. {"gpt-4o-mini": '
        '{"prompt_per_1k": 0.00015, "completion_per_1k": 0.0006}}',
    )
    local_queue_size: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Chat and evaluation requests on in-process models that may run or wait "
        "at once; beyond it the answer is 429 with Retry-After.",
    )
    chat_max_n: int = Field(
        default=8, ge=1, le=32, description="Most choices (`n`) one chat completion may ask for."
    )
    chat_max_tokens: int = Field(
        default=4096,
        ge=16,
        le=32768,
        description="Most tokens one chat completion may ask for per choice.",
    )
    local_threads: int | None = Field(
        default=None, ge=1, description="CPU threads for the bundled model; empty = all cores."
    )
    max_active_runs_per_dataset: int = Field(
        default=4, ge=1, description="Queued or running runs one dataset may have at once."
    )
    max_run_target: int = Field(default=100_000, ge=1, description="Largest `target` a run takes.")
    max_run_shards: int = Field(
        default=16,
        ge=1,
        description="Most shards a run may ask for: workers that execute it together, each "
        "with its share of the target, caps and concurrency (PostgreSQL only).",
    )
    neighbours_process_min_pool: int = Field(
        default=100_000,
        ge=0,
        description="Pools at least this large compute each stored task's 10 nearest neighbours "
        "in a process of their own, off the decision path (0: always; a large value: never).",
    )
    pool_cache_mb: int = Field(
        default=1024,
        ge=0,
        description="Memory a generation worker may keep datasets' pools in between runs (MiB), "
        "so the next run on a large pool starts at once instead of loading it again; the least "
        "recently used dataset's pool goes first. A pool of 1M short tasks holds about 680 MiB. "
        "0: none kept.",
    )

    # --- fine-tuning ---
    max_training_examples: int = Field(
        default=200_000, ge=1, description="Most examples one training file may hold."
    )
    finetune_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where fine-tune workers train by default."
    )
    ablation_confirm_above: int = Field(
        default=3,
        ge=0,
        description="An ablation that trains more models than this (groups + 1) needs "
        "`confirm: true`; the refusal states its cost.",
    )
    finetune_max_devices: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Most devices (`devices`) one fine-tune job may ask for; a worker also "
        "refuses more than it has.",
    )
    finetune_max_nodes: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Most machines (`nodes`) one fine-tune job may ask for; each node is a "
        "fine-tune worker (`selfinstruct worker --kind finetune`) sharing the database and the "
        "data folder.",
    )
    rendezvous_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="How long the nodes of a job on several machines wait for each other "
        "(torchrun's join_timeout); a job whose nodes did not all join by then fails, saying "
        "which.",
    )
    node_address: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="The address other machines reach this fine-tune worker at, for the "
        "rendezvous of a job on several nodes (a host name or IPv4 address); unset: this "
        "machine's host name.",
    )
    rendezvous_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="The port a fine-tune worker serves a multi-node job's rendezvous on "
        "(0: a free one), for networks that open only chosen ports.",
    )
    base_models_dir: Path | None = Field(
        default=None,
        description="A folder of Hugging Face model folders (config.json, weights, tokenizer) "
        "that jobs may fine-tune; each is listed in GET /v1/models under its folder name.",
    )

    # --- workers ---
    worker_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of remote fine-tune workers (the /v1/workers routes); "
        "unset disables them.",
    )
    embedded_worker: bool = Field(
        default=True, description="Run a generation worker inside the API process."
    )
    finetune_workers: int = Field(
        default=1,
        ge=0,
        le=1,
        description="Fine-tune workers `selfinstruct serve` starts and supervises, each in a "
        "process of its own (0: none, for deployments with dedicated workers).",
    )
    worker_lease_seconds: float = Field(
        default=30.0, gt=0, description="How long a claimed job stays claimed without a renewal."
    )
    worker_poll_seconds: float = Field(default=1.0, gt=0, description="Idle wait between claims.")
    job_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="How many times a run, judgement job or evaluation may lose its worker (a "
        "kill, a crash, a lease that ran out) with no progress committed since its claim before "
        "it fails as `worker_lost`. A graceful stop does not count.",
    )
    finetune_attempts: int = Field(
        default=2,
        ge=1,
        le=100,
        description="The same for fine-tune jobs: a training that kills its worker (out of "
        "memory) is tried once more from its last checkpoint, then fails as `worker_lost`.",
    )

    # --- lists ---
    page_size_max: int = Field(default=1000, gt=0, description="Largest `limit` a list accepts.")

    @field_validator("api_token", "worker_token")
    @classmethod
    def _refuse_placeholder_token(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if value.get_secret_value().lower() in PLACEHOLDER_TOKENS:
            raise ValueError(
                f"SELFINSTRUCT_{(info.field_name or '').upper()} is a placeholder; set a random "
                f"value, e.g. `{TOKEN_RECIPE}`"
            )
        return value

    @field_validator("endpoints")
    @classmethod
    def _unique_models(cls, value: list[EndpointConfig]) -> list[EndpointConfig]:
        seen: dict[str, str] = {}
        for endpoint in value:
            for model in endpoint.models:
                if model == BUNDLED_MODEL_ID or model in seen:
                    raise ValueError(
                        f"model id '{model}' of endpoint '{endpoint.name}' is already served by "
                        f"'{seen.get(model, 'the bundled model')}'; model ids must be unique"
                    )
                seen[model] = endpoint.name
        return value

    @model_validator(mode="after")
    def _reads_need_a_token(self) -> Settings:
        if self.private_reads and self.api_token is None:
            raise ValueError(
                "SELFINSTRUCT_PRIVATE_READS=true needs SELFINSTRUCT_API_TOKEN: without a token "
                "no client could read anything"
            )
        return self

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'selfinstruct.db').as_posix()}"
        if self.database_url.startswith("postgresql://"):
            # psycopg 3 is the driver we ship; plain URLs would ask for psycopg2.
            self.database_url = "postgresql+psycopg://" + self.database_url[len("postgresql://") :]
        return self

    def unguarded_bind(self, host: str) -> str | None:
        """Why serving on `host` would hand the API to anyone who reaches it, or None.

        Beyond loopback (0.0.0.0 in a container, a LAN address) any client could change or
        delete data unless the API token guards the routes; `selfinstruct serve` refuses to
        start then, rather than run open by accident. Loopback stays open for `make run`."""
        if is_loopback(host) or self.api_token is not None:
            return None
        return (
            f"refusing to serve on {host}, beyond loopback, without SELFINSTRUCT_API_TOKEN: "
            f"set SELFINSTRUCT_API_TOKEN to a random value (`{TOKEN_RECIPE}`) so that only "
            "holders of the token can change data, or bind 127.0.0.1 (--host)."
        )

    @property
    def db_url(self) -> str:
        assert self.database_url is not None  # filled by the validator
        return self.database_url

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: localhost, 127.0.0.0/8 or ::1.

    Any other name counts as reachable from outside: it may resolve to a public interface."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    """Settings read once per process; tests build their own `Settings(...)` instead."""
    return Settings()
