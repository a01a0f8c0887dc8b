"""An API that listens beyond loopback without a token refuses to start, before it touches data.

The checks run `selfinstruct serve` for real but never let it bind anything but loopback: a
refused start exits before it binds, and an allowed one stops at the schema check of an empty
data folder (the next step after the guard), which proves it got past the guard.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings, is_loopback

TOKEN = "k3Jx9mVQ2fUe7rLwZ0aHqT5sNpYb4cDg"


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`selfinstruct serve` on an empty data folder, with no SELFINSTRUCT_* setting but `env`."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SELFINSTRUCT_") and k != "DATABASE_URL"
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", *args],
        env={
            **clean,
            "SELFINSTRUCT_DATA_DIR": str(tmp_path / "data"),
            "SELFINSTRUCT_FINETUNE_WORKERS": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_on_every_interface_without_a_token_exits_naming_the_setting(
    tmp_path: Path,
) -> None:
    result = _serve(tmp_path, "--host", "0.0.0.0")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()  # one sentence, nothing else
    assert line.startswith("error: refusing to serve on 0.0.0.0, beyond loopback, without ")
    assert "set SELFINSTRUCT_API_TOKEN to a random value" in line
    assert not (tmp_path / "data").exists(), "refused before the database was opened"


def test_the_images_host_setting_is_refused_too(tmp_path: Path) -> None:
    # the API image sets SELFINSTRUCT_HOST=0.0.0.0 and runs a bare `selfinstruct serve`
    result = _serve(tmp_path, SELFINSTRUCT_HOST="0.0.0.0", SELFINSTRUCT_PRIVATE_READS="false")
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0" in result.stderr
    assert "SELFINSTRUCT_API_TOKEN" in result.stderr


def test_with_a_token_serve_gets_past_the_guard(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--host", "0.0.0.0", SELFINSTRUCT_API_TOKEN=TOKEN)
    # the next step refuses an unmigrated database: the guard let it through
    assert result.returncode == 2
    assert "refusing" not in result.stderr
    assert "Run `selfinstruct migrate`" in result.stderr
    assert (tmp_path / "data").is_dir()


def test_loopback_needs_no_token_even_where_the_setting_says_otherwise(tmp_path: Path) -> None:
    # --host wins over SELFINSTRUCT_HOST, and `make run` stays tokenless on 127.0.0.1
    result = _serve(tmp_path, "--host", "127.0.0.1", SELFINSTRUCT_HOST="0.0.0.0")
    assert "refusing" not in result.stderr
    assert "Run `selfinstruct migrate`" in result.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("10.0.0.5", False),
        ("api.example.com", False),  # a name may resolve to any interface
    ],
)
def test_loopback_is_only_this_machine(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    problem = Settings(host=host, api_token=None).unguarded_bind(host)
    assert (problem is None) is loopback
    assert Settings(host=host, api_token=TOKEN).unguarded_bind(host) is None


def test_private_reads_alone_is_no_token() -> None:
    # private reads guard reads with the API token, so they cannot stand in for it
    with pytest.raises(ValidationError, match="SELFINSTRUCT_PRIVATE_READS=true needs"):
        Settings(host="0.0.0.0", private_reads=True, api_token=None)
    settings = Settings(host="0.0.0.0", private_reads=True, api_token=TOKEN)
    assert settings.unguarded_bind("0.0.0.0") is None


def test_a_placeholder_worker_token_is_named_as_such() -> None:
    with pytest.raises(ValidationError, match="SELFINSTRUCT_WORKER_TOKEN is a placeholder"):
        Settings(worker_token="changeme")
    with pytest.raises(ValidationError, match="SELFINSTRUCT_API_TOKEN is a placeholder"):
        Settings(api_token="secret")
