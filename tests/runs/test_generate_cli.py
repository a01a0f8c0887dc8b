"""`selfinstruct generate` runs the same pipeline as the API, in the foreground."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.scripted_llm import StubLLM
from tests.conftest import _wipe
from tests.runs.conftest import STUB_MODEL

# Starts real processes (servers, workers, trainers): not in make test-fast.
pytestmark = pytest.mark.real


def _serve_once(env: dict[str, str]) -> None:
    """Create `default` with the starter seeds, as `make run` does."""
    serve_once = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fastapi.testclient import TestClient;"
            "from app.main import create_app; TestClient(create_app()).__enter__()",
        ],
        env={**env, "SELFINSTRUCT_EMBEDDED_WORKER": "false"},
        capture_output=True,
        text=True,
    )
    assert serve_once.returncode == 0, serve_once.stderr


@pytest.mark.both_databases
def test_generate_reaches_target_and_reports(db_url: str, stub: StubLLM, tmp_path: Path) -> None:
    _wipe(db_url)
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SELFINSTRUCT_DATA_DIR": str(tmp_path),
        "SELFINSTRUCT_ENDPOINTS": json.dumps(
            [{"name": "stub", "base_url": stub.base_url, "models": [STUB_MODEL]}]
        ),
    }
    _serve_once(env)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "generate",
            "--target",
            "3",
            "--model",
            STUB_MODEL,
            "--params",
            '{"prompt": {"prompts_per_batch": 2}}',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "succeeded: 3 accepted" in result.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", "--target", "3", "--model", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "Model 'nope' is not available" in refused.stderr
    _wipe(db_url)


def test_generate_backtranslates_the_documents_it_is_given(
    db_url: str, stub: StubLLM, tmp_path: Path
) -> None:
    _wipe(db_url)
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "SELFINSTRUCT_DATA_DIR": str(tmp_path),
        "SELFINSTRUCT_ENDPOINTS": json.dumps(
            [{"name": "stub", "base_url": stub.base_url, "models": [STUB_MODEL]}]
        ),
    }
    _serve_once(env)
    notes = tmp_path / "notes.md"
    notes.write_text(
        "# Bread\n\nBread needs flour, water, salt and time to rise.\n\n"
        "# Tea\n\nGreen tea is brewed with water below boiling, about 80 degrees.\n"
    )
    command = [sys.executable, "-m", "app.cli", "generate", "--target", "5"]
    command += ["--model", STUB_MODEL, "--strategy", "backtranslate", "--document", str(notes)]
    result = subprocess.run(
        [*command, "--dataset", "default"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "'notes.md': 2 passages" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0, result.stderr
    assert "passages_used" in result.stdout
    _wipe(db_url)
