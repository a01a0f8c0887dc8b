"""Shared fixtures: the API against SQLite and a real PostgreSQL, isolated per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from app.db import make_engine, migrate
from app.main import create_app
from app.settings import Settings
from generators.llama_server import serve_llama_cpp
from testbed.postgres import postgres_server

SHARED = Path(__file__).resolve().parents[2] / "shared"
ORIGINAL_SEEDS = SHARED / "data" / "selfinstruct_seed_tasks.jsonl"
# The model name the shared llama.cpp server answers to: not the bundled model's own id, which
# the service serves in-process, so a test's endpoint never shadows it.
LLAMA_ALIAS = "smollm2-llamacpp"
TABLES = [
    "recipe_event",
    "recipe",
    "job_part",
    "finetune_checkpoint",
    "finetune_event",
    "finetune_job",
    "task",
    "run",
    "dataset",
]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """One real llama.cpp server (`python -m llama_cpp.server`, the bundled GGUF) for the whole
    session: each start loads the model again, and no test changes the server."""
    with serve_llama_cpp(model_alias=LLAMA_ALIAS, n_ctx=4096) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sqlite-only",
        action="store_true",
        help="run tests marked both_databases on SQLite alone (make test-fast)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Database tests run on SQLite; those marked `both_databases` on PostgreSQL too.

    Behaviour that the database decides (locking, concurrency, migrations, JSON types, several
    processes) is marked; the rest is the same code path on both and runs once.
    """
    if "db_url" not in metafunc.fixturenames:
        return
    both = metafunc.definition.get_closest_marker("both_databases") is not None
    if metafunc.config.getoption("--sqlite-only"):
        both = False
    postgres: object = "postgres"
    if metafunc.definition.get_closest_marker("postgres_slow") is not None:
        postgres = pytest.param("postgres", marks=pytest.mark.slow)
    metafunc.parametrize(
        "db_url", ["sqlite", postgres] if both else ["sqlite"], indirect=True, scope="session"
    )


@pytest.fixture(scope="session")
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    migrate(Settings(database_url=url))
    return url


@pytest.fixture
def settings_factory(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {"database_url": db_url, "data_dir": tmp_path / "data"}
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return build


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    return settings_factory()


def _wipe(url: str) -> None:
    engine = make_engine(Settings(database_url=url))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(sa.text(f"DELETE FROM {table}"))
    engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A live app on a clean database (only the starter `default` dataset exists)."""
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    _wipe(settings.db_url)


@pytest.fixture
def original_seeds_path() -> Path:
    if not ORIGINAL_SEEDS.exists():
        pytest.skip(f"needs ../shared ({ORIGINAL_SEEDS} is missing)")
    return ORIGINAL_SEEDS
