"""The one settings object: read from the environment once, validated, injected everywhere."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_TOKENS = {"changethis", "changeme", "secret", "token", "password"}


class Settings(BaseSettings):
    """Service configuration. Every field is an environment variable (see the README's table)."""

    model_config = SettingsConfigDict(
        env_prefix="SELFINSTRUCT_", env_file=None, extra="ignore", validate_default=True
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
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )

    # --- seeds ---
    seed_import_max_tasks: int = Field(
        default=10_000, gt=0, description="Most tasks one seed import may carry."
    )
    load_starter_seeds: bool = Field(
        default=True,
        description="Create dataset `default` with the bundled starter seeds when it is missing.",
    )

    # --- lists ---
    page_size_max: int = Field(default=1000, gt=0, description="Largest `limit` a list accepts.")

    @field_validator("api_token")
    @classmethod
    def _refuse_placeholder_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if value.get_secret_value().lower() in PLACEHOLDER_TOKENS:
            raise ValueError(
                "SELFINSTRUCT_API_TOKEN is a placeholder; set a random value, "
                "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return value

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'selfinstruct.db').as_posix()}"
        if self.database_url.startswith("postgresql://"):
            # psycopg 3 is the driver we ship; plain URLs would ask for psycopg2.
            self.database_url = "postgresql+psycopg://" + self.database_url[len("postgresql://") :]
        return self

    @property
    def db_url(self) -> str:
        assert self.database_url is not None  # filled by the validator
        return self.database_url

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """Settings read once per process; tests build their own `Settings(...)` instead."""
    return Settings()
