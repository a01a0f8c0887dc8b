"""A user watches a recipe on the dashboard: its steps fill in with their jobs, the versions and
the round table appear while it runs, and the page never needs a reload."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from app.db import migrate
from app.settings import Settings
from tests.dashboard.conftest import ARTIFACTS, TOKEN
from tests.dashboard.test_dashboard import open_view
from tests.judge.conftest import JUDGE_MODEL, JudgeStub, judge_endpoints
from tests.runs.conftest import STUB_MODEL

pytestmark = pytest.mark.real

RECIPE = {
    "name": "watched",
    "dataset": "default",
    "steps": [
        {
            "name": "gen",
            "kind": "generate",
            "params": {"strategy": "self_instruct", "model": STUB_MODEL, "target": 3},
        },
        {"name": "rate", "kind": "judge", "params": {"model": JUDGE_MODEL}},
        {"name": "freeze", "kind": "version", "params": {}},
    ],
}


@pytest.fixture(scope="module")
def stub() -> Iterator[JudgeStub]:
    server = JudgeStub()
    server.delay_s = 0.15  # slow enough that the page sees the recipe running
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live_env(tmp_path_factory: pytest.TempPathFactory, stub: JudgeStub) -> dict[str, str]:
    """This module's server generates and judges on the scripted server, not the bundled model,
    and needs no base model to fine-tune."""
    data = tmp_path_factory.mktemp("dashboard-recipes")
    url = f"sqlite:///{data / 'dashboard.db'}"
    migrate(Settings(database_url=url, data_dir=data))
    return {
        **os.environ,
        "DATABASE_URL": url,
        "SELFINSTRUCT_DATA_DIR": str(data),
        "SELFINSTRUCT_API_TOKEN": TOKEN,
        "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.2",
        "SELFINSTRUCT_ENDPOINTS": json.dumps(judge_endpoints(stub)),
    }


def test_a_running_recipe_shows_its_steps_jobs_versions_and_rounds_live(
    page: Page, live_base: str
) -> None:
    posted = httpx.post(
        f"{live_base}/v1/recipes", json=RECIPE, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert posted.status_code == 202, posted.text
    recipe_id = posted.json()["id"]

    open_view(page, f"#/recipes/{recipe_id}")  # at once: the scripted server's latency
    status = page.locator("#recipe-status")
    expect(status).to_have_text("running", timeout=20_000)
    expect(status).to_have_text("succeeded", timeout=60_000)  # no reload: the events move it
    recipe = httpx.get(f"{live_base}/v1/recipes/{recipe_id}").json()
    assert recipe["status"] == "succeeded", recipe

    steps = page.locator("#recipe-steps tr")
    expect(steps).to_have_count(3)
    for step in recipe["steps"]:
        cells = page.locator(f'[data-step="{step["round"]}:{step["name"]}"] td')
        expect(cells.nth(4)).to_have_text("succeeded")
        job = step["job"]
        if job["kind"] == "run":  # the dashboard has a page for runs: the step links to it
            expect(cells.nth(3).get_by_role("link")).to_have_attribute(
                "href", f"#/runs/{job['id']}"
            )
        else:  # judgements and versions have none: their id, as text
            expect(cells.nth(3)).to_have_text(f"{job['kind']} #{job['id']}")
            expect(cells.nth(3).get_by_role("link")).to_have_count(0)
    versions = ", ".join(f"#{v}" for v in recipe["versions"])
    expect(page.locator("#recipe-versions")).to_contain_text(f"Versions made: {versions}")
    rounds = page.locator("#recipe-rounds tr")
    expect(rounds).to_have_count(1)
    for i, row_data in enumerate(recipe["table"]):
        cells = rounds.nth(i).locator("td")
        expect(cells.nth(1)).to_have_text(str(row_data["new_tasks"]))
        expect(cells.nth(2)).to_have_text(f"#{row_data['version']}")
        expect(cells.nth(8)).to_have_text(f"{row_data['requests']:,}")
    expect(page.locator("#recipe-where")).to_contain_text("stopped: rounds_done")
    expect(page.locator("#cancel-recipe")).to_be_disabled()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-recipe.png"), full_page=True)

    # the list of recipes leads back to it
    open_view(page, "#/recipes")
    row = page.locator(f'[data-recipe="{recipe_id}"]')
    expect(row).to_contain_text("watched")
    expect(row.locator(".badge")).to_have_text("succeeded")
    row.get_by_role("link", name=f"#{recipe_id}").click()
    expect(page.locator("#view")).to_have_attribute("data-ready", f"#/recipes/{recipe_id}")
    expect(page.locator("#recipe-steps tr")).to_have_count(3)
