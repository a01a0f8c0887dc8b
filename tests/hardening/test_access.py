"""Access: who may call what, what may be read from disk, and which hosts the server may call.

The token checks walk the OpenAPI document, so a route added later is checked without editing
this file; the disk and host checks try the tricks a hostile client would.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from app.main import create_app
from app.models import FineTuningJobRow, Run, StoredFile
from app.settings import Settings
from testbed.scripted_llm import Reply, ScriptedServer
from tests.conftest import _wipe
from tests.hardening.live_server import API_TOKEN, WORKER_TOKEN

API = {"authorization": f"Bearer {API_TOKEN}"}
WORKER = {"authorization": f"Bearer {WORKER_TOKEN}"}
WRONG = {"authorization": "Bearer not-the-token-0000"}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
SECRET = "TOP-SECRET-CONTENT-5d1f"


@pytest.fixture
def guarded(settings_factory: Callable[..., Settings]) -> Iterator[TestClient]:
    """The app with both tokens set, on a clean database."""
    settings = settings_factory(api_token=API_TOKEN, worker_token=WORKER_TOKEN)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client
    _wipe(settings.db_url)


def _operations(client: TestClient) -> list[tuple[str, str, str]]:
    """(method, template, concrete path) for every operation in the live OpenAPI document; each
    path parameter gets a value of its declared type, whatever it is called."""
    spec = client.get("/openapi.json").json()
    found = []
    for template, item in spec["paths"].items():
        for method, operation in item.items():
            if method.upper() not in {"GET", *STATE_CHANGING}:
                continue
            path = template
            for param in operation.get("parameters", []):
                if param["in"] == "path":
                    kind = param.get("schema", {}).get("type")
                    value = "987654" if kind == "integer" else "no-such-thing"
                    path = path.replace("{" + param["name"] + "}", value)
            assert "{" not in path, f"an undeclared path parameter in {template}"
            found.append((method.upper(), template, path))
    return found


def _counts(client: TestClient) -> dict[str, int]:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        return {
            table.__name__: session.exec(select(func.count()).select_from(table)).one()
            for table in (Run, FineTuningJobRow, StoredFile)
        } | {"datasets": client.get("/v1/datasets").json()["count"]}


def test_every_route_takes_only_its_own_token(guarded: TestClient) -> None:
    """API routes: no token, a wrong one or the worker token is refused on every state change
    (reads stay open). Worker routes: only the worker token, for every method."""
    operations = _operations(guarded)
    before = _counts(guarded)
    refusals = 0
    for method, template, path in operations:
        worker_route = template.startswith("/v1/workers/")
        if worker_route:
            bad_tokens: list[dict[str, str]] = [{}, WRONG, API]
        elif method in STATE_CHANGING:
            bad_tokens = [{}, WRONG, WORKER]
        else:
            continue
        for headers in bad_tokens:
            response = guarded.request(method, path, json={}, headers=headers)
            assert response.status_code == 401, (method, template, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["code"] == "unauthorized"
            refusals += 1
    # Nothing any refused request carried was acted on.
    assert _counts(guarded) == before
    gated = [op for op in operations if op[0] in STATE_CHANGING or "/workers/" in op[1]]
    assert refusals == 3 * len(gated) and len(gated) >= 12
    assert any(t.startswith("/v1/workers/") for _, t, _ in operations)

    # The right token gets past the gate on every route (whatever the route then says), and
    # reads need none: so the refusals above came from the token check, not from the route.
    for method, template, path in operations:
        if template.startswith("/v1/workers/"):
            headers = WORKER
        elif method in STATE_CHANGING:
            headers = API
        else:
            headers = {}
        if template.endswith("/events") and method == "GET":
            continue  # streams; its lookup 404s on the made-up id anyway, checked below
        response = guarded.request(method, path, json={}, headers=headers)
        assert response.status_code != 401, (method, template, response.text)
    assert guarded.get("/v1/runs/987654/events").status_code == 404


def test_private_reads_close_every_read_and_the_cookie_opens_reads_only(
    settings_factory: Callable[..., Settings],
) -> None:
    """With SELFINSTRUCT_PRIVATE_READS every /v1 read needs the token (exports and uploaded
    files included); the dashboard's cookie opens reads (its event streams and downloads) but
    never a change, so another site cannot change anything through a visitor's browser."""
    settings = settings_factory(api_token=API_TOKEN, private_reads=True)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        reads = [
            (m, t, p)
            for m, t, p in _operations(client)
            if m == "GET" and t.startswith("/v1/") and not t.startswith("/v1/workers/")
        ]
        assert len(reads) >= 15
        for _, template, path in reads:
            for headers in ({}, WRONG):
                response = client.get(path, headers=headers)
                assert response.status_code == 401, (template, headers, response.text)
        for path in ("/v1/datasets/default/export", "/v1/fine_tuning/jobs", "/v1/models"):
            assert client.get(path, headers=API).status_code == 200, path
        assert client.get("/healthz").status_code == 200  # probes stay open
        assert client.get("/").status_code == 200  # the dashboard page, which asks first

        client.cookies.set("selfinstruct_token", API_TOKEN)
        assert client.get("/v1/datasets").status_code == 200
        before = _counts_with(client)
        changed = client.post("/v1/datasets", json={"name": "via-cookie"})
        assert changed.status_code == 401 and _counts_with(client) == before
        client.cookies.clear()
    _wipe(settings.db_url)
    with pytest.raises(ValueError, match="PRIVATE_READS=true needs SELFINSTRUCT_API_TOKEN"):
        Settings(private_reads=True)


def _counts_with(client: TestClient) -> int:
    return client.get("/v1/datasets", headers=API).json()["count"]  # type: ignore[no-any-return]


def test_worker_routes_are_closed_without_a_worker_token(
    settings_factory: Callable[..., Settings],
) -> None:
    """Unset SELFINSTRUCT_WORKER_TOKEN disables remote workers; the API token does not open them."""
    settings = settings_factory(api_token=API_TOKEN)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        for method, template, path in _operations(client):
            if template.startswith("/v1/workers/"):
                for headers in ({}, API, {"authorization": "Bearer "}):
                    response = client.request(
                        method, path, json={"worker_id": "w"}, headers=headers
                    )
                    assert response.status_code == 401, (template, headers)
                    assert "disabled" in response.json()["detail"]
    _wipe(settings.db_url)


# --- files and folders ---------------------------------------------------------------------


def _plant_secrets(data_dir: Path) -> list[Path]:
    """Files a traversal would reach: beside the files folder, in the data dir, above it."""
    (data_dir / "files").mkdir(parents=True, exist_ok=True)
    targets = [data_dir / "secret.jsonl", data_dir.parent / "secret.jsonl"]
    for target in targets:
        target.write_text(SECRET)
    return targets


def test_file_routes_cannot_read_outside_the_files_folder(guarded: TestClient) -> None:
    """`../`, encoded and double-encoded dots and slashes, absolute paths, and a symlink planted
    in the files folder: every attempt is a 404 and no byte of what lies outside comes back."""
    data_dir: Path = guarded.app.state.settings.data_dir  # type: ignore[attr-defined]
    _plant_secrets(data_dir)
    # A link inside the files folder with a well-formed id, pointing out; no row names it.
    link_id = "file-" + "ab" * 12
    os.symlink(data_dir / "secret.jsonl", data_dir / "files" / f"{link_id}.jsonl")
    attempts = [
        "..%2Fsecret",
        "..%2F..%2Fsecret.jsonl",
        "%2e%2e%2fsecret",
        "%2e%2e%2f%2e%2e%2fsecret.jsonl",
        "%252e%252e%252fsecret",
        "..%5Csecret",
        "%2Fetc%2Fpasswd",
        "%2F" + str(data_dir / "secret.jsonl").lstrip("/").replace("/", "%2F"),
        "file-..%2F..%2Fsecret",
        "file-" + "0" * 24 + "%00",
        link_id,
        "..",
        ".",
    ]
    for attempt in attempts:
        for suffix in ("", "/content"):
            response = guarded.get(f"/v1/files/{attempt}{suffix}")
            if response.status_code == 200:  # the client drops "/.": the list of files, no more
                assert (attempt, suffix) == (".", "") and response.json()["object"] == "list"
                continue
            assert response.status_code in (404, 405), (attempt, response.status_code)
            assert SECRET not in response.text, attempt
            if response.status_code == 404:
                assert response.json()["code"] == "not_found"
    # Raw `../` (a client that does not normalise the path) never leaves the route either.
    raw = guarded.get("/v1/files/../../secret.jsonl")
    assert SECRET not in raw.text and raw.status_code == 404


def test_uploaded_file_names_cannot_place_files(guarded: TestClient) -> None:
    """The client's filename is metadata: the bytes land in the files folder under a fresh id."""
    data_dir: Path = guarded.app.state.settings.data_dir  # type: ignore[attr-defined]
    line = b'{"messages": [{"role": "user", "content": "hi"}]}\n'
    for name in ("../../escape.jsonl", "/tmp/escape-abs.jsonl", "..\\..\\escape.jsonl", ".."):
        response = guarded.post(
            "/v1/files", files={"file": (name, line)}, data={"purpose": "fine-tune"}, headers=API
        )
        assert response.status_code == 200, response.text
        meta = response.json()
        assert "/" not in meta["filename"] and meta["filename"] not in ("", ".")
        assert re.fullmatch(r"file-[0-9a-f]{24}", meta["id"])
        assert guarded.get(f"/v1/files/{meta['id']}/content").content == line
    written = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*.jsonl"))
    assert all(p.startswith("files/file-") for p in written), written
    assert not (data_dir.parent / "escape.jsonl").exists()
    assert not Path("/tmp/escape-abs.jsonl").exists()


def _claimed_job(client: TestClient) -> str:
    job = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "SmolLM2-135M-Instruct", "dataset": "default"},
        headers=API,
    )
    assert job.status_code == 200, job.text
    claim = client.post("/v1/workers/finetune/claim", json={"worker_id": "w1"}, headers=WORKER)
    assert claim.status_code == 200 and claim.json()["job_id"] == job.json()["id"]
    return str(job.json()["id"])


def test_a_worker_cannot_point_the_api_at_a_model_outside_its_data_dir(
    guarded: TestClient,
) -> None:
    """The API loads a tuned model from the folder a remote worker reports; that folder must lie
    inside the data dir, so a worker token cannot make the API open `/etc` or follow a link out."""
    data_dir: Path = guarded.app.state.settings.data_dir  # type: ignore[attr-defined]
    job_id = _claimed_job(guarded)
    (data_dir / "remote-worker").mkdir(parents=True, exist_ok=True)
    os.symlink("/etc", data_dir / "remote-worker" / "escape")
    for bad in (
        "/etc",
        str(data_dir / ".." / ".." / "etc"),
        str(data_dir / "remote-worker" / "escape"),
        "../../../../etc",
    ):
        refused = guarded.post(
            f"/v1/workers/finetune/{job_id}/complete",
            json={"worker_id": "w1", "outcome": {"status": "succeeded", "model_dir": bad}},
            headers=WORKER,
        )
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["errors"][0]["field"] == "outcome.model_dir"
        assert guarded.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "running"
    good = data_dir / "remote-worker" / job_id / "output" / "final"
    done = guarded.post(
        f"/v1/workers/finetune/{job_id}/complete",
        json={"worker_id": "w1", "outcome": {"status": "succeeded", "model_dir": str(good)}},
        headers=WORKER,
    )
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded"


def test_malformed_worker_reports_are_refused_whole(guarded: TestClient) -> None:
    """A step event without its numbers or an outcome without a status is a 422 naming the
    problem, and records nothing (no half-written event list, the job still running)."""
    job_id = _claimed_job(guarded)
    events_before = guarded.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100").json()["data"]
    good = {"type": "step", "step": 1, "total_steps": 2, "train_loss": 1.5}
    for events in ([good, {"type": "step", "step": 2}], [{"type": "checkpoint", "step": "x"}]):
        refused = guarded.post(
            f"/v1/workers/finetune/{job_id}/events",
            json={"worker_id": "w1", "events": events},
            headers=WORKER,
        )
        assert refused.status_code == 422, refused.text
        assert "events" in refused.json()["detail"]
    for outcome in ({}, {"status": "failed"}, {"status": "won"}):
        refused = guarded.post(
            f"/v1/workers/finetune/{job_id}/complete",
            json={"worker_id": "w1", "outcome": outcome},
            headers=WORKER,
        )
        assert refused.status_code == 422, (outcome, refused.text)
    after = guarded.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100").json()["data"]
    assert after == events_before
    assert guarded.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "running"
    for unknown in ("ftjob-nope", "0"):
        response = guarded.post(
            f"/v1/workers/finetune/{unknown}/events",
            json={"worker_id": "w1", "events": [good]},
            headers=WORKER,
        )
        assert response.status_code == 404, response.text


# --- outbound hosts ------------------------------------------------------------------------


class Listener:
    """A TCP port that counts every connection: the host a client would like us to call."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


CHAT_REPLY = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "allowed-model",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@pytest.fixture
def hosts(settings_factory: Callable[..., Settings]) -> Iterator[tuple[TestClient, Any, Listener]]:
    """The app with one allowed endpoint (a scripted server) and a listener it must never call."""
    allowed = ScriptedServer()
    allowed.default = Reply(body=CHAT_REPLY)
    allowed.start()
    forbidden = Listener()
    endpoint = {
        "name": "allowed",
        "base_url": allowed.base_url,
        "models": ["allowed-model"],
        "mode": "chat",
        "max_retries": 0,
        "timeout_s": 5,
    }
    settings = settings_factory(api_token=API_TOKEN, endpoints=[endpoint], embedded_worker=False)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        client.headers.update(API)
        yield client, allowed, forbidden
    _wipe(settings.db_url)
    forbidden.close()
    allowed.stop()


def test_clients_cannot_choose_the_host_the_server_calls(
    hosts: tuple[TestClient, Any, Listener],
) -> None:
    """Every request that leads to a model call (run, chat, evaluation, fine-tune job) names a
    model id, never a URL: a URL, an unknown id or a server field is a 4xx naming the field, and
    the host the client named hears nothing."""
    client, allowed, forbidden = hosts
    url = forbidden.url
    attempts: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/datasets/default/runs", {"target": 1, "model": url}, "model"),
        ("/v1/datasets/default/runs", {"target": 1, "model": "unknown-model"}, "model"),
        ("/v1/datasets/default/runs", {"target": 1, "base_url": url}, "base_url"),
        ("/v1/datasets/default/runs", {"target": 1, "endpoint": {"base_url": url}}, "endpoint"),
        (
            "/v1/chat/completions",
            {"model": url, "messages": [{"role": "user", "content": "x"}]},
            "model",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "allowed-model",
                "base_url": url,
                "messages": [{"role": "user", "content": "x"}],
            },
            "base_url",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "allowed-model",
                "api_base": url,
                "messages": [{"role": "user", "content": "x"}],
            },
            "api_base",
        ),
        ("/v1/evaluations", {"models": ["allowed-model", url], "dataset": "default"}, "models.1"),
        (
            "/v1/evaluations",
            {"models": ["allowed-model"], "dataset": "default", "base_url": url},
            "base_url",
        ),
        ("/v1/fine_tuning/jobs", {"model": url, "dataset": "default"}, "model"),
        ("/v1/fine_tuning/jobs", {"model": "allowed-model", "dataset": "default"}, "model"),
        (
            "/v1/fine_tuning/jobs",
            {"model": "SmolLM2-135M-Instruct", "dataset": "default", "base_url": url},
            "base_url",
        ),
    ]
    for path, body, field in attempts:
        response = client.post(path, json=body)
        assert 400 <= response.status_code < 500, (path, body, response.text)
        error = response.json()
        named = {item.get("field") for item in error["errors"]} | {error["detail"]}
        assert any(field in (n or "") for n in named), (path, field, error)
    assert forbidden.connections == 0
    assert allowed.received == []  # refused before any model call, not after
    counts = _counts(client)
    assert counts["Run"] == 0 and counts["FineTuningJobRow"] == 0
    # The configured endpoint is the one place calls go: a chat with its model reaches it.
    ok = client.post(
        "/v1/chat/completions",
        json={"model": "allowed-model", "messages": [{"role": "user", "content": "x"}]},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"] == "hi"
    assert len(allowed.requests_to("/chat/completions")) == 1
    assert forbidden.connections == 0


def test_endpoint_urls_come_only_from_settings() -> None:
    """The one source of URLs validates them at start: an endpoint needs a name, a URL and
    models, and model ids cannot shadow each other (so no request resolves to another host)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="already served"):
        Settings(
            endpoints=[
                {"name": "a", "base_url": "http://127.0.0.1:1/v1", "models": ["m"]},
                {"name": "b", "base_url": "http://127.0.0.1:2/v1", "models": ["m"]},
            ]  # type: ignore[list-item]
        )
    with pytest.raises(ValidationError, match="already served"):
        Settings(
            endpoints=[
                {"name": "a", "base_url": "http://x/v1", "models": ["SmolLM2-135M-Instruct"]}
            ]  # type: ignore[list-item]
        )
