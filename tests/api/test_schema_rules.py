"""What the seed import and run creation refuse, the OpenAPI document states: a rule on one
field as JSON Schema (so a generated client never builds the request), a rule between fields in
words that the refusal repeats. The fuzz test checks this for random requests; these are the
cases that made it fail once."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.testclient import TestClient

SEED = {"id": "s1", "instruction": "Name a color.", "instances": [], "is_classification": False}


def _reasons(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    return [str(e["reason"]).removeprefix("Value error, ") for e in response.json()["errors"]]


def _stated(client: TestClient, reason: str) -> bool:
    """The reason, less a closing parenthesis of particulars, is in the OpenAPI document."""
    rule = re.sub(r" \(.*\)$", "", reason)
    return rule in json.dumps(client.get("/openapi.json").json())


def _seed_schema(client: TestClient) -> dict[str, Any]:
    schema: dict[str, Any] = client.get("/openapi.json").json()["components"]["schemas"]
    return schema["SeedTask"]


def test_blank_or_nul_seed_text_is_refused_as_the_schema_says(client: TestClient) -> None:
    fields = _seed_schema(client)["properties"]
    blank = re.compile(fields["instruction"]["pattern"])
    for instruction in [" \t\u3000", "\x1c", "Name\x00 a color."]:
        assert blank.search(instruction) is None  # the schema calls it invalid...
        refused = client.post(
            "/v1/datasets/default/seeds", json=[{**SEED, "instruction": instruction}]
        )
        assert refused.status_code == 422  # ...and so does the server
        assert refused.json()["errors"][0]["field"] == "instruction"
    assert blank.search("第一步") is not None
    for bad_id in [" ", "x" * 201, True]:
        refused = client.post("/v1/datasets/default/seeds", json=[{**SEED, "id": bad_id}])
        assert refused.json()["errors"][0]["field"] == "id", refused.text
    ok = client.post("/v1/datasets/default/seeds", json=[{**SEED, "id": 7}, {**SEED, "id": "  8 "}])
    assert ok.status_code == 200 and ok.json()["created"] == 2, ok.text


def test_an_import_repeating_an_id_is_refused_with_a_rule_the_document_states(
    client: TestClient,
) -> None:
    refused = client.post("/v1/datasets/default/seeds", json=[SEED, {**SEED, "name": "again"}])
    (reason,) = _reasons(refused)
    assert refused.json()["errors"][0]["line"] == 2 and "line 1" in reason
    assert _stated(client, reason)
    empty = client.post("/v1/datasets/default/seeds", json=[])
    assert empty.status_code == 422
    body = client.get("/openapi.json").json()["paths"]["/v1/datasets/{name}/seeds"]["post"]
    assert body["requestBody"]["content"]["application/json"]["schema"]["minItems"] == 1


def test_template_runs_are_refused_only_for_rules_the_document_states(
    client: TestClient,
) -> None:
    def run(**fields: Any) -> Any:
        return client.post("/v1/datasets/default/runs", json={"target": 1, **fields})

    (missing,) = _reasons(run(strategy="template"))
    assert _stated(client, missing)
    no_values = run(strategy="template", template={"templates": ["Describe {topic} in {tone}."]})
    (reason,) = _reasons(no_values)
    assert reason.endswith("(missing: 'tone', 'topic')") and _stated(client, reason)

    pattern = re.compile(
        client.get("/openapi.json").json()["components"]["schemas"]["TemplateSpec"]["properties"][
            "templates"
        ]["items"]["pattern"]
    )
    for malformed in ["Describe {topic", "Describe {0}", "Describe {topic.upper}", "{}"]:
        assert pattern.search(malformed) is None
        refused = run(strategy="template", template={"templates": [malformed]})
        assert refused.status_code == 422 and "templates[0]" in refused.text
    fine = "Describe {topic} in {{braces}}."
    assert pattern.search(fine) is not None
    made = run(strategy="template", template={"templates": [fine], "values": {"topic": ["tea"]}})
    assert made.status_code == 201, made.text
