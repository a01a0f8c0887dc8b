"""A typed client generated from the live `/openapi.json` with a standard generator from the
package registry (openapi-python-client) works against the service: it creates a dataset,
imports seeds, starts a run, reads it to the end and exports."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from testbed.scripted_llm import StubLLM
from tests.conftest import _wipe
from tests.runs.conftest import STUB_MODEL, stub_settings

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real

PACKAGE = "selfinstruct_client"


def _generate(spec: dict[str, Any], where: Path) -> Any:
    """Generate the client package under `where` and import it."""
    generator = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert generator, "openapi-python-client is missing; `make test` installs it"
    path = where / "openapi.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [
            generator,
            "generate",
            "--path",
            str(path),
            "--output-path",
            str(where / PACKAGE),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))


@pytest.fixture
def api(settings_factory: Callable[..., Settings]) -> Any:
    stub = StubLLM()
    stub.start()
    settings = stub_settings(settings_factory, stub)
    _wipe(settings.db_url)
    try:
        with TestClient(create_app(settings)) as client:
            yield client
    finally:
        stub.stop()
        _wipe(settings.db_url)


def test_a_generated_client_grows_and_exports_a_dataset(api: TestClient, tmp_path: Path) -> None:
    generated = _generate(api.get("/openapi.json").json(), tmp_path)
    api_mod = importlib.import_module(f"{PACKAGE}.api")
    models = importlib.import_module(f"{PACKAGE}.models")
    create_dataset = importlib.import_module(
        f"{api_mod.__name__}.datasets.create_dataset_v1_datasets_post"
    )
    create_run = importlib.import_module(
        f"{api_mod.__name__}.runs.create_run_v1_datasets_name_runs_post"
    )
    read_run = importlib.import_module(f"{api_mod.__name__}.runs.read_run_v1_runs_run_id_get")
    export = importlib.import_module(
        f"{api_mod.__name__}.tasks.export_dataset_v1_datasets_name_export_get"
    )
    client = generated.Client(base_url="http://testserver").set_httpx_client(api)

    dataset = create_dataset.sync(client=client, body=models.DatasetCreate(name="generated"))
    assert isinstance(dataset, models.DatasetPublic) and dataset.name == "generated"

    seeds = [
        models.SeedTask.from_dict(
            {
                "id": f"s{i}",
                "name": f"seed_{i}",
                "instruction": text,
                "instances": [{"input": "", "output": f"An answer to seed {i}."}],
                "is_classification": False,
            }
        )
        for i, text in enumerate(
            [
                "Write a short poem about the sea at night.",
                "Explain how a bicycle gear system works to a child.",
                "Suggest three names for a bakery that sells only bread.",
            ]
        )
    ]
    # The generator writes `isinstance(body, list[SeedTask])` for a list body offered in
    # several content types, which Python refuses; the typed models and the client's own HTTP
    # connection are used for this one call.
    imported = client.get_httpx_client().post(
        "/v1/datasets/generated/seeds", json=[s.to_dict() for s in seeds]
    )
    result = models.SeedImportResult.from_dict(imported.json())
    assert result.created == 3

    run = create_run.sync(
        name="generated", client=client, body=models.RunCreate(target=3, model=STUB_MODEL)
    )
    assert isinstance(run, models.RunPublic), run
    deadline = time.monotonic() + 60
    while (run := read_run.sync(run_id=run.id, client=client)).status.value in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, run
        time.sleep(0.1)
    assert run.status.value == "succeeded" and run.counters.accepted == 3

    exported = export.sync_detailed(
        name="generated", client=client, format_=models.ExportFormat.ALPACA
    )
    rows = [json.loads(line) for line in exported.content.decode().splitlines()]
    assert exported.status_code == 200 and len(rows) == run.counters.instances
    assert all(row["instruction"] and row["output"] for row in rows)
