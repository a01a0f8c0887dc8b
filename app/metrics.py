"""Prometheus metrics.

In process (each API or worker process reports its own): HTTP requests; model calls per model
(requests, errors by kind, retries, latency, tokens, cost) recorded by an observer every backend
calls; and each replica's attempts, in-flight requests and concurrency limit, read from the
process's replica pools at scrape time. From the database at scrape time (every process reports
the same truth): tasks by dataset, origin and status; candidates by dataset and verdict (and
rejection reason); runs by status; and the latest fine-tune jobs' step, loss and tokens/s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from sqlalchemy.engine import Engine
from sqlmodel import col
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.models import Dataset, FineTuningJobRow, Run, Task
from generators import base as generator_base
from generators.errors import GeneratorError
from generators.pool import shared_replicas
from generators.pricing import DEFAULT_PRICES, PriceTable

disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "selfinstruct_http_requests",
    "HTTP requests by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "selfinstruct_http_request_duration_seconds",
    "HTTP request latency by method and route template.",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


MODEL_REQUESTS = Counter(
    "selfinstruct_model_requests",
    "Prompts sent to a model (retries inside one prompt count once), by outcome.",
    ["model", "backend", "outcome"],
    registry=REGISTRY,
)
MODEL_ERRORS = Counter(
    "selfinstruct_model_errors",
    "Prompts that failed after their retries, by the kind of failure.",
    ["model", "kind"],
    registry=REGISTRY,
)
MODEL_RETRIES = Counter(
    "selfinstruct_model_retries",
    "Extra attempts a model's server needed (429, 5xx, timeouts, bad bodies).",
    ["model"],
    registry=REGISTRY,
)
MODEL_LATENCY = Histogram(
    "selfinstruct_model_request_duration_seconds",
    "Time to answer one prompt, retries included.",
    ["model"],
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MODEL_TOKENS = Counter(
    "selfinstruct_model_tokens",
    "Tokens of answered prompts, by kind (prompt or completion).",
    ["model", "kind"],
    registry=REGISTRY,
)
MODEL_COST = Counter(
    "selfinstruct_model_cost",
    "What answered prompts cost, in the price table's currency (USD by default).",
    ["model"],
    registry=REGISTRY,
)
_prices: list[PriceTable] = [DEFAULT_PRICES]
FINETUNE_JOBS_SHOWN = 20  # the latest jobs get gauges; older ones would only add series


def use_prices(table: PriceTable) -> None:
    """The price table (settings over genai-prices) the cost counter uses in this process."""
    _prices[0] = table


def _observe(backend: generator_base.Backend, result: object) -> None:
    model = backend.model_id
    if isinstance(result, GeneratorError):
        MODEL_REQUESTS.labels(model, backend.backend_id, "error").inc()
        MODEL_ERRORS.labels(model, _kind(result)).inc()
        MODEL_RETRIES.labels(model).inc(max(0, result.attempts - 1))
        return
    if not isinstance(result, generator_base.Generation):
        return
    MODEL_REQUESTS.labels(model, backend.backend_id, "ok").inc()
    MODEL_RETRIES.labels(model).inc(result.retries)
    MODEL_LATENCY.labels(model).observe(result.latency_s)
    MODEL_TOKENS.labels(model, "prompt").inc(result.prompt_tokens)
    MODEL_TOKENS.labels(model, "completion").inc(result.completion_tokens)
    MODEL_COST.labels(model).inc(
        _prices[0].cost(model, result.prompt_tokens, result.completion_tokens)
    )


def _kind(error: GeneratorError) -> str:
    """`RetryBudgetExhausted` -> `retry_budget_exhausted`: a stable label per error class."""
    name = type(error).__name__
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


generator_base.CALL_OBSERVERS.append(_observe)


class _ReplicaCollector:
    """Each replica this process has sent to: attempts served and failed, load and limit."""

    def collect(self) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "selfinstruct_replica_attempts",
            "Attempts sent to a replica, by outcome (served or failed).",
            labels=["base_url", "outcome"],
        )
        in_flight = GaugeMetricFamily(
            "selfinstruct_replica_in_flight", "Requests in flight now.", labels=["base_url"]
        )
        limit = GaugeMetricFamily(
            "selfinstruct_replica_concurrency_limit",
            "The replica's current concurrency limit (lowered on 429s).",
            labels=["base_url"],
        )
        for replica in shared_replicas():
            snap = replica.snapshot()
            url = str(snap["base_url"])
            attempts.add_metric([url, "served"], float(snap["served"]))  # type: ignore[arg-type]
            attempts.add_metric([url, "failed"], float(snap["failed"]))  # type: ignore[arg-type]
            in_flight.add_metric([url], float(snap["in_flight"]))  # type: ignore[arg-type]
            limit.add_metric([url], float(snap["concurrency_limit"]))  # type: ignore[arg-type]
        yield attempts
        yield in_flight
        yield limit


REGISTRY.register(_ReplicaCollector())  # type: ignore[arg-type]


class _PoolCollector:
    """Reads counts at scrape time so every API process reports the same truth."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        tasks = GaugeMetricFamily(
            "selfinstruct_tasks",
            "Tasks by dataset, origin and status.",
            labels=["dataset", "origin", "status"],
        )
        runs = GaugeMetricFamily("selfinstruct_runs", "Runs by status.", labels=["status"])
        candidates = GaugeMetricFamily(
            "selfinstruct_candidates",
            "Candidates runs stored, by dataset, verdict and rejection reason.",
            labels=["dataset", "verdict", "reason"],
        )
        jobs = {
            name: GaugeMetricFamily(f"selfinstruct_finetune_{name}", doc, labels=["job", "status"])
            for name, doc in (
                ("step", "The latest fine-tune jobs' optimizer step."),
                ("train_loss", "The latest fine-tune jobs' training loss."),
                ("tokens_per_second", "The latest fine-tune jobs' trained tokens per second."),
            )
        }
        with self.engine.connect() as conn:
            task_rows = conn.execute(
                sa.select(col(Dataset.name), col(Task.origin), col(Task.status), sa.func.count())
                .join(Dataset, col(Dataset.id) == col(Task.dataset_id))
                .group_by(col(Dataset.name), col(Task.origin), col(Task.status))
            )
            for name, origin, status, n in task_rows:
                tasks.add_metric([name, origin, status], n)
            for status, n in conn.execute(
                sa.select(col(Run.status), sa.func.count()).group_by(col(Run.status))
            ):
                runs.add_metric([status], n)
            by_dataset: dict[str, dict[tuple[str, str], int]] = {}
            for name, accepted, reasons in conn.execute(
                sa.select(col(Dataset.name), col(Run.accepted), col(Run.rejected_by_reason)).join(
                    Dataset, col(Dataset.id) == col(Run.dataset_id)
                )
            ):
                counts = by_dataset.setdefault(name, {})
                counts[("accepted", "")] = counts.get(("accepted", ""), 0) + accepted
                for reason, n in (reasons or {}).items():
                    counts[("rejected", reason)] = counts.get(("rejected", reason), 0) + n
            for name, counts in by_dataset.items():
                for (verdict, reason), n in counts.items():
                    candidates.add_metric([name, verdict, reason], n)
            latest = conn.execute(
                sa.select(
                    col(FineTuningJobRow.id),
                    col(FineTuningJobRow.status),
                    col(FineTuningJobRow.progress),
                )
                .order_by(col(FineTuningJobRow.created_at).desc())
                .limit(FINETUNE_JOBS_SHOWN)
            )
            for job_id, status, progress in latest:
                progress = progress or {}
                for name, key in (
                    ("step", "step"),
                    ("train_loss", "train_loss"),
                    ("tokens_per_second", "tokens_per_s"),
                ):
                    if isinstance(progress.get(key), int | float):
                        jobs[name].add_metric([job_id, status], float(progress[key]))
        yield tasks
        yield runs
        yield candidates
        yield from jobs.values()


def render_metrics(engine: Engine) -> tuple[bytes, str]:
    pool = CollectorRegistry(auto_describe=False)
    pool.register(_PoolCollector(engine))  # type: ignore[arg-type]
    return generate_latest(REGISTRY) + generate_latest(pool), CONTENT_TYPE_LATEST


def route_template(scope: Scope) -> str:
    """The matched route's template with the prefixes of the routers that include it.

    Included routers report their routes' paths without outer prefixes, so the prefix is
    recovered as the part of the concrete path before the route's own pattern matches.
    """
    route = scope.get("route")
    regex = getattr(route, "path_regex", None)
    if route is None or regex is None:
        return "unmatched"
    path: str = scope.get("path", "")
    for cut in (i for i, ch in enumerate(path) if ch == "/"):
        if regex.match(path[cut:]):
            return path[:cut] + route.path
    return str(route.path)


class MetricsMiddleware:
    """Counts by route template, not raw path, so label cardinality stays bounded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = route_template(scope)
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(method, template, str(status_holder["status"])).inc()
            HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - start)
