"""A strategy added as one file. The module below is written to a folder of its own and
registered the way a strategy package registers one: an entry point of group
`selfinstruct.strategies`, which is one line of the package's pyproject.toml and, once pip
installed it, one line of its dist-info, written here by hand. Processes started with that
folder on PYTHONPATH then offer the strategy everywhere: the OpenAPI document's run schema,
GET /v1/strategies, `selfinstruct generate --strategy` and the dashboard's run form; and a run
of it goes from the form (and from the CLI) to `succeeded` against the scripted model. This
test process itself never imports the module: its registry stays the built-in one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlmodel import Session, select

from app.db import make_engine, migrate
from app.models import Task
from app.settings import Settings
from testbed.live import running_api
from testbed.scripted_llm import StubLLM
from tests.dashboard.conftest import ARTIFACTS, TOKEN
from tests.runs.conftest import STUB_MODEL
from tests.runs.test_generate_cli import _serve_once

pytestmark = pytest.mark.real
NAME = "subject_list"

PLUGIN = '''"""subject_list: each prompt asks for a numbered list of tasks about one subject;
the run is done after `prompts` prompts."""

import re

from pydantic import Field

from app.strategies import Candidate, Strategy, StrictSpec


class SubjectSpec(StrictSpec):
    subject: str = Field("kitchens", max_length=200, description="What every task is about.")
    prompts: int = Field(2, ge=1, le=50, description="Prompts before the run is done.")


class SubjectListFields(StrictSpec):
    subject_list: SubjectSpec = Field(default_factory=SubjectSpec)


class SubjectList(Strategy):
    name = "subject_list"
    summary = "numbered tasks about one subject"
    fields = SubjectListFields
    uses_topic = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self.spec = self.setting("subject_list")
        self.sent = 0

    async def generate(self, rng):
        self.sent += 1
        prompt = f"Tasks about {self.spec.subject}, one per line:\\n1."
        gen = await self.ctx.complete(prompt, self.ctx.sampling(), ("\\n\\n",))
        if gen is None:
            return None
        lineage = {
            **self.ctx.lineage,
            "subject": self.spec.subject,
            "template_version": "subject-list-v1",
            "request_id": gen.request_id,
        }
        items = [i.strip() for i in re.split(r"\\n\\d+\\.", gen.text) if i.strip()]
        return self.answered([Candidate(instruction=i, lineage=lineage) for i in items], gen.text)

    def can_prompt(self, *, launching, candidates):
        return self.sent + launching < self.spec.prompts

    def exhausted(self):
        return "prompts_used" if self.sent >= self.spec.prompts else None
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The strategy's one file, and the entry point pip would have written for its package."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "subject_list_strategy.py").write_text(PLUGIN, encoding="utf-8")
    dist = folder / "subject_list_strategy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: subject-list-strategy\nVersion: 0.1\n", encoding="utf-8"
    )
    (dist / "entry_points.txt").write_text(
        f"[selfinstruct.strategies]\n{NAME} = subject_list_strategy:SubjectList\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="module")
def stub_llm() -> Iterator[StubLLM]:
    server = StubLLM()
    server.start()
    yield server
    server.stop()


def plugin_env(plugin_dir: Path, stub: StubLLM, data: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "DATABASE_URL": f"sqlite:///{data / 'plugin.db'}",
        "SELFINSTRUCT_DATA_DIR": str(data),
        "SELFINSTRUCT_ENDPOINTS": json.dumps(
            [{"name": "stub", "base_url": stub.base_url, "models": [STUB_MODEL]}]
        ),
    }


def _tasks(db_url: str, run_id: int) -> list[Task]:
    engine = make_engine(Settings(database_url=db_url))
    try:
        with Session(engine) as session:
            return list(session.exec(select(Task).where(Task.run_id == run_id)))
    finally:
        engine.dispose()


def test_the_cli_offers_and_runs_a_strategy_added_as_one_file(
    plugin_dir: Path, stub_llm: StubLLM, tmp_path: Path
) -> None:
    """About 15 s: four CLI processes (help twice, the starter pool, the run)."""
    env = plugin_env(plugin_dir, stub_llm, tmp_path)
    cli = [sys.executable, "-m", "app.cli", "generate"]
    shown = subprocess.run([*cli, "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert NAME in re.sub(r"[\s│]", "", shown.stdout), shown.stdout  # the choices, wrapped
    migrate(Settings(database_url=env["DATABASE_URL"], data_dir=tmp_path))
    _serve_once(env)  # the starter pool in `default`
    params = {NAME: {"subject": "bicycles", "prompts": 2}, "classify": False}
    command = [*cli, "--target", "100", "--model", STUB_MODEL, "--strategy", NAME]
    done = subprocess.run(
        [*command, "--params", json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(
        r"run (\d+) succeeded: (\d+) accepted, \d+ rejected \(prompts_used\)", done.stdout
    )
    assert found is not None and int(found.group(2)) > 0, done.stdout
    tasks = _tasks(env["DATABASE_URL"], int(found.group(1)))
    accepted = [t for t in tasks if t.status == "accepted"]
    assert len(accepted) == int(found.group(2))
    assert all(t.lineage["strategy"] == NAME and t.lineage["subject"] == "bicycles" for t in tasks)
    assert all(t.instances for t in accepted)  # the stream's own instance step wrote them
    # the built-in registry of this process never saw it
    assert NAME not in subprocess.run(
        [*cli, "--help"], capture_output=True, text=True, timeout=60
    ).stdout.replace("\n", "")


@pytest.fixture(scope="module")
def plugin_base(
    plugin_dir: Path, stub_llm: StubLLM, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`selfinstruct serve` with the strategy on its path, its embedded worker on the stub."""
    data = tmp_path_factory.mktemp("plugin-server")
    env = plugin_env(plugin_dir, stub_llm, data)
    migrate(Settings(database_url=env["DATABASE_URL"], data_dir=data))
    env.update(SELFINSTRUCT_API_TOKEN=TOKEN, SELFINSTRUCT_WORKER_POLL_SECONDS="0.2")
    with running_api(env, data / "server.log") as base:
        yield base


def test_the_api_and_the_dashboard_offer_and_run_a_strategy_added_as_one_file(
    browser: object, plugin_base: str
) -> None:
    """About 10 s with the server's start; the run itself takes a second or two."""
    base = plugin_base
    openapi = httpx.get(f"{base}/openapi.json").json()
    run_schema = openapi["components"]["schemas"]["RunCreate"]
    assert run_schema["properties"]["strategy"]["enum"][-1] == NAME
    assert (
        f"{NAME} (numbered tasks about one subject)"
        in run_schema["properties"]["strategy"]["description"]
    )
    assert run_schema["properties"][NAME] == {"$ref": "#/components/schemas/SubjectSpec"}
    assert openapi["components"]["schemas"]["SubjectSpec"]["properties"]["prompts"]["maximum"] == 50
    listed = {s["name"]: s for s in httpx.get(f"{base}/v1/strategies").json()["data"]}
    assert listed[NAME]["uses_topic"] is False
    assert set(listed[NAME]["settings"][NAME]["properties"]) == {"subject", "prompts"}

    context = browser.new_context(base_url=base)  # type: ignore[attr-defined]
    page: Page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto("/")
        page.evaluate(f"localStorage.setItem('selfinstruct.apiToken', '{TOKEN}')")
        page.goto("/#/d/default")
        expect(page.locator("#view")).to_have_attribute("data-ready", "#/d/default")
        form = page.locator("#run-form")
        options = form.locator('[name="strategy"] option')
        assert options.evaluate_all("els => els.map(e => e.value)") == list(listed)
        expect(form.locator(f'[name="{NAME}.subject"]')).to_be_disabled()
        form.locator('[name="strategy"]').select_option(NAME)
        box = form.locator(f'[data-strategy="{NAME}"]')
        expect(box).to_be_visible()
        expect(box).to_contain_text("numbered tasks about one subject")
        expect(box).to_contain_text("What every task is about.")
        expect(form.locator('[data-strategy="evolve"]')).to_be_hidden()

        # the API's validation of the strategy's own field, shown next to it
        form.locator('[name="model"]').select_option(STUB_MODEL)
        form.locator('[name="target"]').fill("100")
        form.locator(f'[name="{NAME}.prompts"]').fill("0")
        form.locator('button[type="submit"]').click()
        expect(form.locator(".field-error")).to_contain_text("greater than or equal to 1")

        form.locator(f'[name="{NAME}.prompts"]').fill("2")
        form.locator(f'[name="{NAME}.subject"]').fill("lighthouses")
        form.locator('button[type="submit"]').click()
        page.wait_for_url(re.compile(r"#/runs/\d+$"))
        run_id = int(page.url.rsplit("/", 1)[1])
        final = re.compile("^(succeeded|failed|cancelled)$")
        expect(page.locator("#run-status")).to_have_text(final, timeout=60_000)
        run = httpx.get(f"{base}/v1/runs/{run_id}").json()
        assert run["status"] == "succeeded", run
        assert run["strategy"] == NAME and run["stop_reason"] == "prompts_used", run
        assert run["params"][NAME] == {"subject": "lighthouses", "prompts": 2}
        assert run["counters"]["accepted"] > 0
        tasks = httpx.get(
            f"{base}/v1/datasets/default/tasks", params={"run_id": run_id, "limit": 100}
        ).json()["data"]
        assert tasks and all(t["lineage"]["subject"] == "lighthouses" for t in tasks)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-strategy-plugin.png"), full_page=True)
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"
