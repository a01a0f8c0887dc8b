"""What every part of the API shares: errors, ids, request bodies that refuse unknown keys,
and the health checks."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

DATASET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
# The largest id the tables hold: their ids are INTEGER, 32 bits on PostgreSQL. A larger one
# cannot name anything, and the schema says so rather than the database refusing it.
MAX_ID = 2**31 - 1


class ErrorItem(BaseModel):
    line: int | None = Field(default=None, description="1-based line (or array index + 1).")
    field: str | None = Field(default=None, description="The offending field, dotted.")
    reason: str


class ErrorResponse(BaseModel):
    """Every error body has this shape; `errors` lists each problem when there are several."""

    detail: str
    code: str
    errors: list[ErrorItem] = Field(default_factory=list)


# --- health ---


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    schema_revision: str | None


class Strict(BaseModel):
    """A request body: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")
