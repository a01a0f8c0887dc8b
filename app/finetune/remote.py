"""A fine-tune worker on another machine: it talks to the API over HTTP with a worker token,
downloads the training data, trains with `training/`, and reports as it goes, in the worker
protocol's models (app/finetune/protocol.py). Each job trains in a child process, as on the
database worker (app/finetune/runner.py): an idle remote worker holds no training memory, and an
out-of-memory kill fails the job instead of taking the worker down.

It needs no database: nothing here imports sqlalchemy, sqlmodel or the app's tables
(tests/finetune/test_protocol.py holds it to that)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx

from app.finetune.protocol import (
    ClaimRequest,
    CompleteRequest,
    Continue,
    EventsRequest,
    JobSpec,
    WorkerEvent,
    parse_event,
)
from app.finetune.runner import Heartbeat, run_training
from app.worker_ids import new_worker_id

log = logging.getLogger("selfinstruct.remote_worker")

# Statuses a restarting API or a proxy in front of it answers for a while; worth another try.
TRANSIENT_STATUSES = frozenset({502, 503, 504})


class RemoteFinetuneWorker:
    """Claims and trains jobs over HTTP.

    The API may restart (or a proxy may drop a connection) while a job trains: a request that
    fails to connect or gets a 502/503/504 is retried with backoff for up to `api_retry_s`,
    training pausing meanwhile, so a job survives an API outage instead of failing with it.
    """

    def __init__(
        self,
        *,
        api_url: str,
        token: str,
        work_dir: Path,
        device: str = "auto",
        poll_seconds: float = 5.0,
        client: httpx.Client | None = None,
        api_retry_s: float = 600.0,
    ) -> None:
        # Idle connections expire before the server's keep-alive (uvicorn: 5 s) can close them
        # under a request; polling every 5 s would otherwise race it.
        self.http = client or httpx.Client(
            base_url=api_url.rstrip("/"),
            timeout=120,
            limits=httpx.Limits(keepalive_expiry=2.0),
        )
        self.headers = {"authorization": f"Bearer {token}"}
        self.work_dir = work_dir
        self.device = device
        self.poll_seconds = poll_seconds
        self.api_retry_s = api_retry_s
        self.worker_id = new_worker_id()

    def _post(self, path: str, body: ClaimRequest) -> httpx.Response:
        deadline = time.monotonic() + self.api_retry_s
        delay = 0.2
        payload = body.model_dump(mode="json", exclude_unset=True)
        while True:
            try:
                response = self.http.post(path, json=payload, headers=self.headers)
            except httpx.TransportError as exc:
                failure: str = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in TRANSIENT_STATUSES:
                    response.raise_for_status()
                    return response
                failure = f"HTTP {response.status_code}"
            if time.monotonic() + delay > deadline:
                raise RuntimeError(
                    f"the API did not answer POST {path} for {self.api_retry_s:.0f}s; "
                    f"last error: {failure}"
                )
            log.warning("POST %s failed (%s); retrying in %.1fs", path, failure, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _download(self, file_id: str, into: Path) -> Path:
        path = into / f"{file_id}.jsonl"
        with (
            path.open("wb") as fh,
            self.http.stream(
                "GET", f"/v1/files/{file_id}/content", headers=self.headers
            ) as response,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes():
                fh.write(chunk)
        return path

    def run_once(self) -> bool:
        """Claim and train one job; False when none was waiting."""
        claimed = self._post("/v1/workers/finetune/claim", ClaimRequest(worker_id=self.worker_id))
        if claimed.status_code == 204:
            return False
        spec = JobSpec.model_validate(claimed.json())
        job_id = spec.job_id
        job_dir = self.work_dir / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        train_path = self._download(spec.training_file, job_dir)
        valid_path = self._download(spec.validation_file, job_dir) if spec.validation_file else None
        proceed = True

        def report(events: list[WorkerEvent]) -> bool:
            nonlocal proceed
            reply = self._post(
                f"/v1/workers/finetune/{job_id}/events",
                EventsRequest(worker_id=self.worker_id, events=events),
            )
            proceed = proceed and Continue.model_validate(reply.json()).proceed
            return proceed

        def on_event(event: dict[str, Any]) -> None:
            report([parse_event(event)])

        # An empty report renews the lease while no event comes: loading a large model or one
        # long step can outlast it, and another worker would take over a job still alive.
        with Heartbeat(lambda: report([]), spec.lease_seconds) as heartbeat:
            outcome = run_training(
                spec,
                train_path=train_path,
                valid_path=valid_path,
                output_dir=job_dir / "output",
                device=self.device,
                on_event=on_event,
                should_stop=lambda: not proceed or heartbeat.lost,
            )
        if outcome is not None:
            self._post(
                f"/v1/workers/finetune/{job_id}/complete",
                CompleteRequest(worker_id=self.worker_id, outcome=outcome),
            )
        return True

    def run_forever(self, *, once: bool = False) -> None:
        while True:
            try:
                worked = self.run_once()
            except Exception:
                # An API gone for longer than api_retry_s, a refused request: the job's lease
                # runs out on the API side and the job is claimed again; this worker goes on.
                log.exception("remote worker %s: job attempt failed", self.worker_id)
                worked = False
            if not worked:
                if once:
                    return
                time.sleep(self.poll_seconds)
