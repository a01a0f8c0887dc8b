"""Operating the service: health, readiness, metrics, the write token, unmigrated databases."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.db import NotMigratedError
from app.main import create_app
from tests.factories import seed

TOKEN = "s3cr3t-test-token-value"


@pytest.mark.both_databases
def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_metrics_count_requests_by_route_and_pool_by_status(client: TestClient) -> None:
    client.get("/v1/datasets/default")
    client.get("/v1/datasets/nope")
    text = client.get("/metrics").text
    assert 'route="/v1/datasets/{name}",status="404"' in text
    assert 'route="/v1/datasets/{name}",status="200"' in text
    assert 'selfinstruct_tasks{dataset="default",origin="seed",status="accepted"}' in text


def test_token_guards_every_state_change(settings_factory) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings_factory(api_token=TOKEN))) as client:
        auth = {"authorization": f"Bearer {TOKEN}"}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            refused = client.post("/v1/datasets", json={"name": "guarded"}, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert (
                client.post(
                    "/v1/datasets/default/seeds", json=[seed()], headers=headers
                ).status_code
                == 401
            )
            assert client.delete("/v1/datasets/default", headers=headers).status_code == 401
        assert client.get("/v1/datasets/guarded").status_code == 404
        before = client.get("/v1/datasets/default").json()["seeds"]
        assert before == client.get("/v1/datasets/default").json()["seeds"]
        # reads stay open; writes with the token work
        assert client.get("/v1/datasets").status_code == 200
        assert (
            client.post("/v1/datasets", json={"name": "guarded"}, headers=auth).status_code == 201
        )
        assert client.delete("/v1/datasets/guarded", headers=auth).status_code == 204


def test_placeholder_token_is_refused_at_start() -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="placeholder"):
        Settings(api_token="changethis")


@pytest.mark.both_databases
def test_unmigrated_database_refuses_to_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.settings import Settings

    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/fresh.db")
    with (
        pytest.raises(NotMigratedError, match="selfinstruct migrate"),
        TestClient(create_app(settings)),
    ):
        pass
    engine = sa.create_engine(settings.db_url)
    with engine.connect() as conn:
        assert "dataset" not in sa.inspect(conn).get_table_names()


def test_openapi_documents_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in [
        "/v1/datasets",
        "/v1/datasets/{name}",
        "/v1/datasets/{name}/seeds",
        "/v1/datasets/{name}/tasks",
        "/v1/tasks/{task_id}",
        "/v1/datasets/{name}/export",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in paths
        for operation in paths[path].values():
            assert operation.get("summary"), path
    seeds_body = paths["/v1/datasets/{name}/seeds"]["post"]["requestBody"]["content"]
    assert set(seeds_body) == {"application/json", "application/x-ndjson", "multipart/form-data"}
    assert client.get("/docs").status_code == 200


def test_every_schema_reference_resolves(client: TestClient) -> None:
    """A generated client follows every `$ref`; bodies read by hand name theirs too."""
    spec = client.get("/openapi.json").json()
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    schemas = spec["components"]["schemas"]
    prefix = "#/components/schemas/"
    assert all(r.startswith(prefix) for r in refs), refs
    assert sorted({r for r in refs if r.removeprefix(prefix) not in schemas}) == []
    assert {"SeedTask", "DocumentsCreate", "DocumentText"} <= set(schemas)


def test_every_state_changing_route_needs_the_token(settings_factory) -> None:  # type: ignore[no-untyped-def]
    """Walks the OpenAPI document, so a new route is covered the day it is added."""
    with TestClient(create_app(settings_factory(api_token=TOKEN))) as client:
        paths = client.get("/openapi.json").json()["paths"]
        checked = 0
        for template, operations in paths.items():
            path = template.replace("{name}", "default").replace("{run_id}", "1")
            path = path.replace("{task_id}", "1").replace("{job_id}", "ftjob-x")
            path = path.replace("{file_id}", "file-x")
            for method in operations:
                if method.upper() not in {"POST", "PUT", "PATCH", "DELETE"}:
                    continue
                for headers in ({}, {"authorization": "Bearer wrong"}):
                    response = client.request(method.upper(), path, json={}, headers=headers)
                    assert response.status_code == 401, (method, template, headers)
                checked += 1
        assert checked >= 10
        assert client.get("/v1/datasets").json()["count"] == 1


def test_a_wrong_method_is_told_every_method_of_the_path(client: TestClient) -> None:
    for method, path, allowed in [
        ("PUT", "/v1/datasets", "GET, POST"),
        ("PUT", "/v1/tasks/3", "GET, PATCH"),
        ("POST", "/v1/datasets/default", "GET, PATCH, DELETE"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 405 and response.headers["allow"] == allowed, path
        assert response.json()["code"] == "method_not_allowed"
