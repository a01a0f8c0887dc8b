"""A live server with an API token, and Debian's Chromium driven by Playwright (never a
downloaded browser)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db import migrate
from app.settings import Settings
from testbed.live import free_port, serve_api, wait_ready
from tests.finetune.test_finetune_e2e import tiny_base_dir  # noqa: F401 (a fixture)

TOKEN = "dashboard-test-token"
# Screenshots of failures and of the pages, outside the repository unless asked for.
ARTIFACTS = Path(
    os.environ.get("SELFINSTRUCT_TEST_ARTIFACTS")
    or Path(tempfile.gettempdir()) / "selfinstruct-test-artifacts"
)
TINY_BASE = "tiny-llama"  # an own base model (a random 2-layer Llama): a job trains in seconds


@pytest.fixture(scope="module")
def live_env(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path) -> dict[str, str]:  # noqa: F811
    """The environment of the server and of any worker started beside it."""
    data = tmp_path_factory.mktemp("dashboard")
    base_models = data / "base-models"
    shutil.copytree(tiny_base_dir, base_models / TINY_BASE)
    url = f"sqlite:///{data / 'dashboard.db'}"
    migrate(Settings(database_url=url, data_dir=data))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SELFINSTRUCT_DATA_DIR": str(data),
        "SELFINSTRUCT_API_TOKEN": TOKEN,
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.2",
        "SELFINSTRUCT_BASE_MODELS_DIR": str(base_models),
    }
    return env


@pytest.fixture(scope="module")
def live_base(live_env: dict[str, str]) -> Iterator[str]:
    """`selfinstruct serve` on SQLite with the bundled model and its embedded worker."""
    port = free_port()
    server = serve_api(live_env, port, Path(live_env["SELFINSTRUCT_DATA_DIR"]) / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        yield base
    finally:
        server.kill()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = shutil.which("chromium")
    if executable is None:
        raise RuntimeError(
            "Debian's chromium is missing: scripts/ensure-test-services.sh installs it"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_base: str):  # type: ignore[no-untyped-def]
    context = browser.new_context(base_url=live_base, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"
