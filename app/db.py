"""Engine, sessions and migrations: the only module that knows how we connect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from app.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class NotMigratedError(RuntimeError):
    """The database schema is behind the code; the message names the command that fixes it."""


def make_engine(settings: Settings) -> Engine:
    """One engine per process. SQLite gets WAL so readers never block the writer."""
    url = settings.db_url
    if settings.is_sqlite:
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # More connections than the server has threads (anyio's 40, plus the run's): a thread
        # that waits for a connection holds a thread, and a request that holds a connection may
        # need a thread to give it back, so a smaller pool can leave both waiting for its
        # timeout under load. SQLite connections are cheap.
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_pre_ping=True,
            pool_size=8,
            max_overflow=72,
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", settings.db_url.replace("%", "%%"))
    return cfg


def migrate(settings: Settings, revision: str = "head") -> None:
    if settings.is_sqlite:
        path = sa.engine.make_url(settings.db_url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)


def head_revision(settings: Settings) -> str | None:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_migrated(settings: Settings, engine: Engine) -> None:
    """Refuse to serve a schema the code does not match, saying which command fixes it."""
    current, head = current_revision(engine), head_revision(settings)
    if current != head:
        raise NotMigratedError(
            f"The database at {engine.url.render_as_string(hide_password=True)} is at schema "
            f"revision {current or 'none'}, but this version needs {head}. "
            "Run `selfinstruct migrate` (or `make run`, which migrates first)."
        )
