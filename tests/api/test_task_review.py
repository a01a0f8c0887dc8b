"""A reviewer accepts, rejects and edits tasks; export follows, and nothing is forgotten."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_tasks_export import _add_generated
from tests.factories import seed


def _generated(client: TestClient, settings: Settings) -> dict[str, int]:
    client.post("/v1/datasets", json={"name": "review"})
    _add_generated(
        settings,
        "review",
        [
            {
                "instruction": "Summarise the paragraph in one sentence.",
                "instances": [{"input": "Rain fell all day.", "output": "It rained."}],
                "is_classification": False,
                "status": "accepted",
            },
            {
                "instruction": "Write a haiku about the sea.",
                "instances": [{"input": "", "output": "Waves fold into foam"}],
                "is_classification": False,
                "status": "rejected",
                "rejection_reason": "too_similar",
            },
        ],
    )
    tasks = client.get("/v1/datasets/review/tasks").json()["data"]
    return {t["instruction"].split()[0]: t["id"] for t in tasks}


def _export(client: TestClient) -> list[dict]:  # type: ignore[type-arg]
    body = client.get("/v1/datasets/review/export").text
    return [json.loads(line) for line in body.splitlines() if line]


@pytest.mark.both_databases
def test_accept_and_reject_change_the_export_and_keep_the_history(
    client: TestClient, settings: Settings
) -> None:
    ids = _generated(client, settings)
    accepted = client.patch(f"/v1/tasks/{ids['Write']}", json={"status": "accepted"})
    assert accepted.status_code == 200, accepted.text
    body = accepted.json()
    assert (body["status"], body["rejection_reason"]) == ("accepted", None)
    (entry,) = body["lineage"]["reviews"]
    assert (entry["previous_status"], entry["previous_reason"]) == ("rejected", "too_similar")

    rejected = client.patch(
        f"/v1/tasks/{ids['Summarise']}", json={"status": "rejected", "note": "off topic"}
    ).json()
    assert (rejected["status"], rejected["rejection_reason"]) == ("rejected", "reviewer_rejected")
    assert rejected["rejection_detail"] == "off topic"
    assert [t["instruction"] for t in _export(client)] == ["Write a haiku about the sea."]


def test_an_edit_is_a_new_task_and_the_original_is_kept(
    client: TestClient, settings: Settings
) -> None:
    ids = _generated(client, settings)
    edit = {
        "instruction": "用一句话概括这段话。",
        "instances": [{"input": "雨下了一整天。", "output": "整天下雨。"}],
        "note": "translated",
    }
    response = client.post(f"/v1/tasks/{ids['Summarise']}/edits", json=edit)
    assert response.status_code == 201, response.text
    edited = response.json()
    assert (edited["origin"], edited["status"]) == ("edited", "accepted")
    assert edited["edited_from_id"] == ids["Summarise"]
    assert edited["is_classification"] is False  # left out: the original's value
    original = client.get(f"/v1/tasks/{ids['Summarise']}").json()
    assert original["instruction"] == "Summarise the paragraph in one sentence."
    assert (original["status"], original["rejection_reason"]) == ("rejected", "replaced_by_edit")
    exported = _export(client)
    assert [t["instruction"] for t in exported] == ["用一句话概括这段话。"]
    assert exported[0]["instances"] == [{"input": "雨下了一整天。", "output": "整天下雨。"}]
    listed = client.get("/v1/datasets/review/tasks", params={"origin": "edited"}).json()["data"]
    assert [t["id"] for t in listed] == [edited["id"]]


def test_bad_reviews_and_edits_are_refused_and_change_nothing(
    client: TestClient, settings: Settings
) -> None:
    ids = _generated(client, settings)
    before = client.get("/v1/datasets/review/tasks").json()["data"]
    cases = [
        ("patch", f"/v1/tasks/{ids['Write']}", {"status": "maybe"}, 422, "status"),
        ("patch", f"/v1/tasks/{ids['Write']}", {"status": "accepted", "x": 1}, 422, "x"),
        ("post", f"/v1/tasks/{ids['Write']}/edits", {"instruction": "   "}, 422, "instruction"),
        ("post", f"/v1/tasks/{ids['Write']}/edits", {"instances": []}, 422, "instances"),
        (
            "post",
            f"/v1/tasks/{ids['Write']}/edits",
            {"instances": [{"input": "a", "output": " "}]},
            422,
            "output",
        ),
        ("patch", "/v1/tasks/999999", {"status": "accepted"}, 404, None),
        ("post", "/v1/tasks/999999/edits", {"instruction": "Do it."}, 404, None),
    ]
    for method, url, body, code, field in cases:
        response = getattr(client, method)(url, json=body)
        assert response.status_code == code, (url, body, response.text)
        if field:
            assert any(field in e["field"] for e in response.json()["errors"]), response.text
    assert client.get("/v1/datasets/review/tasks").json()["data"] == before


@pytest.mark.both_databases
def test_one_live_copy_per_task_even_with_concurrent_editors(
    client: TestClient, settings: Settings
) -> None:
    ids = _generated(client, settings)
    url = f"/v1/tasks/{ids['Summarise']}/edits"
    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(
            pool.map(
                lambda n: client.post(url, json={"instruction": f"Summarise it, take {n}."}),
                range(4),
            )
        )
    assert sorted(r.status_code for r in codes) == [201, 409, 409, 409], [r.text for r in codes]
    (edited,) = [r.json() for r in codes if r.status_code == 201]
    again = client.post(url, json={"instruction": "Once more."})
    assert again.status_code == 409 and str(edited["id"]) in again.json()["detail"]
    summaries = [t for t in _export(client) if t["instruction"].startswith("Summarise")]
    assert [t["instruction"] for t in summaries] == [edited["instruction"]]

    # the original comes back only once its edit is rejected
    original = f"/v1/tasks/{ids['Summarise']}"
    assert client.patch(original, json={"status": "accepted"}).status_code == 409
    client.patch(f"/v1/tasks/{edited['id']}", json={"status": "rejected"})
    assert client.patch(original, json={"status": "accepted"}).json()["status"] == "accepted"


def test_seeds_are_changed_by_posting_them_again_not_by_edits(client: TestClient) -> None:
    client.post("/v1/datasets", json={"name": "review"})
    client.post("/v1/datasets/review/seeds", json=[seed(id="s1")])
    (task,) = client.get("/v1/datasets/review/tasks").json()["data"]
    refused = client.post(f"/v1/tasks/{task['id']}/edits", json={"instruction": "Other."})
    assert refused.status_code == 409 and "/seeds" in refused.json()["detail"]
    assert client.get("/v1/datasets/review/tasks").json()["data"] == [task]
