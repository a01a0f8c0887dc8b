"""Ratings in the dashboard: a task judged by the bundled model shows its level in the task
browser, the rating filter narrows the list, and the stats page charts the distribution."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.dashboard.conftest import TOKEN
from tests.dashboard.test_dashboard import open_view

pytestmark = pytest.mark.real


def test_judged_tasks_show_their_rating_filter_by_it_and_chart_it(
    page: Page, live_base: str
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=live_base, headers=auth, timeout=30) as client:
        client.post("/v1/datasets", json={"name": "rated"})
        seed = {
            "id": "colours",
            "name": "colours",
            "instruction": "Name three primary colours.",
            "instances": [{"input": "", "output": "Red, blue and yellow."}],
            "is_classification": False,
        }
        assert client.post("/v1/datasets/rated/seeds", json=[seed]).status_code < 300
        job = client.post(
            "/v1/datasets/rated/judgements", json={"model": "SmolLM2-135M-Instruct"}
        ).json()
        deadline = time.monotonic() + 600
        while (job := client.get(f"/v1/judgements/{job['id']}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        (task,) = client.get("/v1/datasets/rated/tasks").json()["data"]
    rating = task["rating"] or "unjudged"
    open_view(page, "#/d/rated/tasks")
    expect(page.locator(f'[data-task="{task["id"]}"] [data-rating="{rating}"]')).to_be_visible()
    if task["rating"]:
        other = next(level for level in "ABCD" if level != task["rating"])
        open_view(page, f"#/d/rated/tasks?rating={other}")
        expect(page.locator("[data-task]")).to_have_count(0)
        open_view(page, f"#/d/rated/tasks?rating={task['rating']}")
        expect(page.locator("[data-task]")).to_have_count(1)
    open_view(page, "#/d/rated/stats")
    expect(page.locator('[data-chart="ratings"]')).to_contain_text(rating)
