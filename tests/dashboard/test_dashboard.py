"""A user works through the dashboard in a real browser: starts a run and watches it, reviews
tasks, exports them and looks at the dataset's shape."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.dashboard.conftest import ARTIFACTS, TINY_BASE, TOKEN
from tests.factories import seed

pytestmark = pytest.mark.real
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def counter(page: Page, name: str) -> int:
    text = page.locator(f'[data-counter="{name}"] b').inner_text()
    return int(text.replace(",", ""))


def export(base: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{base}/v1/datasets/default/export", timeout=30).text
    return [json.loads(line) for line in body.splitlines() if line]


def open_view(page: Page, fragment: str) -> None:
    page.goto(f"/{fragment}")
    encoded = quote(fragment, safe="#/?=&")  # as the browser keeps it in location.hash
    expect(page.locator("#view")).to_have_attribute("data-ready", encoded)


def test_datasets_page_lists_the_starter_pool_and_shows_chinese(page: Page, live_base: str) -> None:
    open_view(page, "#/")
    expect(page.locator("table")).to_contain_text("default")
    # the starter pool's languages, detected from its seeds with no setting
    shares = httpx.get(f"{live_base}/v1/datasets/default").json()["languages"]
    expected = " · ".join(f"{code} {round(share * 100)}%" for code, share in shares.items())
    expect(page.locator('[data-languages="default"]')).to_have_text(expected)
    assert set(shares) == {"en", "zh"}
    chinese = httpx.get(
        f"{live_base}/v1/datasets/default/tasks", params={"contains": "的", "limit": 1}
    ).json()["data"][0]
    open_view(page, "#/d/default/tasks?contains=的")
    card = page.locator(f'[data-task="{chinese["id"]}"] .instruction')
    assert card.inner_text() == chinese["instruction"]


def test_a_run_started_from_the_form_is_watched_to_the_end_then_reviewed(
    page: Page, live_base: str
) -> None:
    runs_before = httpx.get(f"{live_base}/v1/datasets/default/runs").json()["data"]
    open_view(page, "#/d/default")
    form = page.locator("#run-form")

    # the API's validation, shown next to the field, and nothing created
    form.locator('[name="target"]').fill("0")
    form.locator('button[type="submit"]').click()
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()  # the first changing request asks for the token
    dialog.locator('[name="token"]').fill(TOKEN)
    dialog.locator('button[value="save"]').click()
    expect(form.locator(".field-error")).to_contain_text("greater than or equal to 1")
    assert httpx.get(f"{live_base}/v1/datasets/default/runs").json()["data"] == runs_before

    form.locator('[name="target"]').fill("1")
    form.locator('[name="sampling.max_tokens"]').fill("160")
    form.locator('[name="seed"]').fill("3")
    form.locator('button[type="submit"]').click()
    page.wait_for_url(re.compile(r"#/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])

    seen_candidates: list[int] = []
    status = page.locator("#run-status")
    for _ in range(1800):  # the bundled model on two cores: allow up to 15 minutes
        seen_candidates.append(counter(page, "candidates"))
        if status.inner_text() in ("succeeded", "failed", "cancelled"):
            break
        page.wait_for_timeout(500)
    assert status.inner_text() == "succeeded", page.locator("#run-message").inner_text()
    run = httpx.get(f"{live_base}/v1/runs/{run_id}").json()
    assert seen_candidates[0] == 0 and seen_candidates[-1] == run["counters"]["candidates"] > 0
    assert counter(page, "accepted") == run["counters"]["accepted"] == 1
    assert counter(page, "requests") == run["counters"]["requests"]
    assert counter(page, "in_flight") == 0  # a finished run has nothing in flight
    expect(page.locator('[data-counter="requests_per_s"] span')).to_have_text("requests/s")
    expect(page.locator('[data-counter="accepted_per_s"] span')).to_have_text("accepted/s")
    rows = page.locator("#run-candidates tr")
    expect(rows).to_have_count(run["counters"]["candidates"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)

    # review: reject the accepted task, accept it again, then edit it
    task = httpx.get(
        f"{live_base}/v1/datasets/default/tasks", params={"run_id": run_id, "status": "accepted"}
    ).json()["data"][0]
    open_view(page, f"#/d/default/tasks?run_id={run_id}")
    card = page.locator(f'[data-task="{task["id"]}"]')
    page.once("dialog", lambda d: d.accept("not useful"))
    card.locator('[data-action="reject"]').click()
    expect(card.locator(".badge")).to_have_text("rejected")
    assert task["instruction"] not in [t["instruction"] for t in export(live_base)]
    card.locator('[data-action="accept"]').click()
    expect(card.locator(".badge")).to_have_text("accepted")
    assert task["instruction"] in [t["instruction"] for t in export(live_base)]

    card.locator('[data-action="edit"]').click()
    edit = card.locator(".edit-form")
    edit.locator('[name="instances"]').fill("[]")
    edit.locator('button[type="submit"]').click()
    expect(edit.locator(".field-error")).to_contain_text("at least 1")  # the API's rule
    edit.locator('[name="instruction"]').fill("把这段文字翻译成英文。")
    edit.locator('[name="instances"]').fill(
        json.dumps([{"input": "你好，世界", "output": "Hello, world"}], ensure_ascii=False)
    )
    edit.locator('button[type="submit"]').click()
    expect(card.locator(".badge")).to_have_text("rejected")  # the original, kept
    expect(page.locator(".task .instruction", has_text="把这段文字翻译成英文。")).to_be_visible()
    exported = {t["instruction"]: t for t in export(live_base)}
    assert "把这段文字翻译成英文。" in exported and task["instruction"] not in exported
    page.screenshot(path=str(ARTIFACTS / "dashboard-tasks.png"), full_page=True)
    assert exported["把这段文字翻译成英文。"]["instances"] == [
        {"input": "你好，世界", "output": "Hello, world"}
    ]


def test_stats_page_draws_every_chart(page: Page, live_base: str) -> None:
    stats = httpx.get(f"{live_base}/v1/datasets/default/stats").json()
    open_view(page, "#/d/default/stats")
    charts = page.locator("#stats-charts [data-chart]")
    expect(charts).to_have_count(8)  # the judge ratings chart too
    rouge_bars = page.locator('[data-chart="rouge"] rect')
    expect(rouge_bars).to_have_count(len(stats["rouge_to_nearest_seed"]))
    for name in ("instruction_length", "input_length", "output_length"):
        expect(page.locator(f'[data-chart="{name}"] rect')).to_have_count(len(stats[name]))
    assert counter(page, "instructions") == stats["instructions"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard-stats.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_fine_tune_form_shows_the_api_validation(page: Page, live_base: str) -> None:
    open_view(page, "#/d/default")
    models = [m["id"] for m in httpx.get(f"{live_base}/v1/models").json()["data"]]
    for form_id in ("run-form", "job-form"):  # each form lists every model
        options = page.locator(f'#{form_id} [name="model"] option')
        assert options.evaluate_all("els => els.map(e => e.value)") == models
    page.evaluate(f"localStorage.setItem('selfinstruct.apiToken', '{TOKEN}')")
    form = page.locator("#job-form")
    form.locator('[name="suffix"]').fill("no spaces allowed")
    form.locator('button[type="submit"]').click()
    expect(form.locator(".field-error")).to_contain_text("pattern")
    assert httpx.get(f"{live_base}/v1/fine_tuning/jobs").json()["data"] == []


def test_a_fine_tune_job_started_from_the_form_draws_its_loss_curve(
    page: Page, live_base: str, live_env: dict[str, str]
) -> None:
    tiny = [seed() for _ in range(4)]  # short examples keep a CPU job to seconds a step
    httpx.post(f"{live_base}/v1/datasets", json={"name": "tiny"}, headers=AUTH)
    httpx.post(f"{live_base}/v1/datasets/tiny/seeds", json=tiny, headers=AUTH)
    open_view(page, "#/d/tiny")
    page.evaluate(f"localStorage.setItem('selfinstruct.apiToken', '{TOKEN}')")
    form = page.locator("#job-form")
    form.locator('[name="model"]').select_option(TINY_BASE)  # the bundled model takes minutes
    for name, value in {
        "suffix": "dash",
        "hyperparameters.batch_size": "2",
        "max_steps": "4",
        "max_seq_len": "64",
        "lora.r": "4",
    }.items():
        form.locator(f'[name="{name}"]').fill(value)
    form.locator('button[type="submit"]').click()
    page.wait_for_url(re.compile(r"#/jobs/[^/]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-status")).to_have_text("queued")
    command = ["worker", "--kind", "finetune", "--device", "cpu", "--once"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *command],
        env=live_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        final = re.compile("^(succeeded|failed|cancelled)$")
        expect(page.locator("#job-status")).to_have_text(final, timeout=600_000)
    finally:
        worker.kill()
        worker.wait()
    job = httpx.get(f"{live_base}/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "succeeded", page.locator("#job-error").inner_text()
    expect(page.locator("#loss-chart svg")).to_have_attribute("data-points", "4")
    expect(page.locator("#loss-chart path.line").first).to_be_visible()
    steps = page.locator('[data-counter="step"] b')
    expect(steps).to_have_text("4")
    expect(page.locator("#job-summary")).to_contain_text(job["fine_tuned_model"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)
    assert page.locator("#job-events pre").count() >= 4


def test_the_run_form_offers_every_strategy_and_documents_are_managed(
    page: Page, live_base: str
) -> None:
    page.goto("/")
    page.evaluate(f"localStorage.setItem('selfinstruct.apiToken', '{TOKEN}')")
    open_view(page, "#/d/default")
    form = page.locator("#run-form")
    options = form.locator('[name="strategy"] option')
    assert options.evaluate_all("els => els.map(e => e.value)") == [
        "self_instruct", "alpaca", "template", "evolve", "backtranslate", "magpie",
    ]  # fmt: skip
    form.locator('[name="strategy"]').select_option("evolve")
    expect(form.locator('[data-strategy="evolve"]')).to_be_visible()
    expect(form.locator('[data-strategy="magpie"]')).to_be_hidden()
    expect(form.locator('[name="evolve.operations.deepen"]')).to_be_enabled()
    expect(form.locator('[name="magpie.system_prompt"]')).to_be_disabled()

    # backtranslate with no documents: the API's refusal is shown, and no run is created
    runs_before = httpx.get(f"{live_base}/v1/datasets/default/runs").json()["count"]
    form.locator('[name="strategy"]').select_option("backtranslate")
    form.locator('[name="target"]').fill("1")
    form.locator('button[type="submit"]').click()
    expect(form).to_contain_text("needs documents")
    assert httpx.get(f"{live_base}/v1/datasets/default/runs").json()["count"] == runs_before

    text = "# Tea\n\nGreen tea is brewed below boiling.\n\n# Bread\n\nBread needs time to rise."
    page.locator("#document-form input[type=file]").set_input_files(
        [{"name": "notes.md", "mimeType": "text/markdown", "buffer": text.encode()}]
    )
    page.locator('#document-form button[type="submit"]').click()
    item = page.locator("#documents li[data-document]")
    expect(item).to_contain_text("notes.md · markdown · 2 passages")
    docs = httpx.get(f"{live_base}/v1/datasets/default/documents").json()["data"]
    assert [(d["name"], d["passages"]) for d in docs] == [("notes.md", 2)]
    item.locator("button").click()
    expect(page.locator("#documents")).to_contain_text("No documents yet.")
    assert httpx.get(f"{live_base}/v1/datasets/default/documents").json()["count"] == 0


@pytest.fixture(scope="module")
def private_base(live_env: dict[str, str]) -> Iterator[str]:
    """A second server on the same database with private reads."""
    from testbed.live import free_port, serve_api, wait_ready

    port = free_port()
    env = {**live_env, "SELFINSTRUCT_PRIVATE_READS": "true", "SELFINSTRUCT_EMBEDDED_WORKER": "0"}
    log = Path(live_env["SELFINSTRUCT_DATA_DIR"]) / "private-server.log"
    server = serve_api(env, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        yield base
    finally:
        server.kill()
        server.wait(timeout=30)


def test_with_private_reads_the_dashboard_asks_for_the_token_first(
    browser: Any, private_base: str
) -> None:
    context = browser.new_context(base_url=private_base)
    page = context.new_page()
    try:
        assert httpx.get(f"{private_base}/v1/datasets").status_code == 401
        page.goto("/#/")
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#token-reason")).to_contain_text("reading needs its API token")
        dialog.locator('[name="token"]').fill(TOKEN)
        dialog.locator('button[value="save"]').click()
        expect(page.locator("table")).to_contain_text("default")
        # downloads and event streams carry the token in the read cookie the page set
        export = page.request.get("/v1/datasets/default/export")
        assert export.status == 200
        assert page.request.post("/v1/datasets", data={"name": "x"}).status == 401
    finally:
        context.close()
