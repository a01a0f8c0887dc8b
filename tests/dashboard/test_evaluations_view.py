"""A user queues an evaluation from the dashboard and reads the answers side by side."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.dashboard.conftest import TOKEN
from tests.dashboard.test_dashboard import open_view

pytestmark = pytest.mark.real


def test_an_evaluation_queued_from_the_form_shows_its_answers_side_by_side(
    page: Page, live_base: str
) -> None:
    open_view(page, "#/evaluations")
    form = page.locator("#evaluation-form")
    form.locator('[name="dataset"]').select_option("default")
    form.locator('[name="limit"]').fill("2")
    form.locator('button[type="submit"]').click()
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()  # the first changing request asks for the token
    dialog.locator('[name="token"]').fill(TOKEN)
    dialog.locator('button[value="save"]').click()
    page.wait_for_url(re.compile(r"#/evaluations/\d+$"))
    evaluation_id = int(page.url.rsplit("/", 1)[1])

    status = page.locator("#evaluation-status")
    expect(status).to_have_text("succeeded", timeout=600_000)  # the bundled model, two cores
    evaluation = httpx.get(f"{live_base}/v1/evaluations/{evaluation_id}").json()
    (result,) = evaluation["results"]
    expect(page.locator('[data-counter="answers"] b')).to_have_text("2 / 2")
    expect(page.locator("#evaluation-results td").nth(2)).to_have_text(
        f"{result['mean_rouge_l']:.3f}"
    )
    samples = page.locator("[data-sample]")
    expect(samples).to_have_count(2)
    for i in range(2):
        expect(samples.nth(i).locator(".answer pre")).not_to_have_text("(not answered yet)")
