"""An operator drives the same services from the `selfinstruct` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from testbed.live import free_port, serve_api, wait_ready
from tests.factories import jsonl, seed

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    from tests.conftest import _wipe

    _wipe(db_url)
    return {**os.environ, "DATABASE_URL": db_url, "SELFINSTRUCT_DATA_DIR": str(tmp_path)}


def test_migrate_serve_import_and_export(cli_env: dict[str, str], tmp_path: Path) -> None:
    assert "current schema" in _cli(cli_env, "migrate").stdout
    port = free_port()
    server = serve_api(cli_env, port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        assert httpx.get(f"{base}/v1/datasets/default").json()["seeds"] >= 40
        assert httpx.post(f"{base}/v1/datasets", json={"name": "cli"}).status_code == 201
    finally:
        server.terminate()
        server.wait(timeout=30)

    seeds_file = tmp_path / "seeds.jsonl"
    seeds_file.write_bytes(jsonl([seed(id="a"), seed(id="b", instruction="Translate to French.")]))
    assert (
        "2 created, 0 updated in 'cli'"
        in _cli(cli_env, "seeds", "import", str(seeds_file), "--dataset", "cli").stdout
    )
    out = tmp_path / "out.jsonl"
    _cli(
        cli_env,
        "export",
        "--dataset",
        "cli",
        "--format",
        "alpaca",
        "--include-seeds",
        "-o",
        str(out),
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in rows][1] == "Translate to French."
    stdout_rows = _cli(cli_env, "export", "--dataset", "cli", "--include-seeds").stdout
    assert len(stdout_rows.splitlines()) == 2


def test_invalid_seed_file_is_refused_with_line_numbers(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl([seed(), {"id": "x"}]))
    result = _cli(cli_env, "seeds", "import", str(bad), check=False)
    assert result.returncode == 2
    assert "line 2: instruction: Field required" in result.stderr
    missing = _cli(cli_env, "export", "--dataset", "nope", check=False)
    assert missing.returncode == 2
    assert "Dataset 'nope' does not exist" in missing.stderr
