"""Prometheus metrics: request counters in process, pool sizes read from the database per scrape."""

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
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from sqlalchemy.engine import Engine
from sqlmodel import col
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.models import Dataset, Run, Task

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
        yield tasks
        yield runs


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
