"""A dataset card tells its reader how a judge rated the data, and which judge did."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable

from fastapi.testclient import TestClient

from app.settings import Settings
from tests.api.test_tasks_export import _add_generated
from tests.quality.conftest import JUDGE, JudgingStub, seed

SEEDS = [
    seed("c0", "Name the capital city of France.", "City of Paris."),
    seed("c1", "Name the capital city of Japan.", "City of Tokyo."),
    seed("c2", "Name the capital city of Kenya.", "City of Nairobi."),
    seed("n0", "Name the largest ocean on Earth.", "I am not sure."),
    seed("n1", "Name the longest river in Africa.", "No idea at all."),
]


def _card_body(api: TestClient, dataset: str) -> str:
    bundle = api.get(f"/v1/datasets/{dataset}/bundle")
    assert bundle.status_code == 200, bundle.text
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as archive:
        text = archive.read(f"{dataset}/README.md").decode("utf-8")
    return text.split("\n---\n", 1)[1]


def test_the_card_states_the_judges_rating_distribution_and_model(
    api: TestClient, judging_stub: JudgingStub, settings_factory: Callable[..., Settings]
) -> None:
    """A judgement job rates the five seeds (an output naming a city A, the others C); one
    generated task is never judged. The card's judge section says exactly that."""
    assert api.post("/v1/datasets", json={"name": "capitals"}).status_code == 201
    assert api.post("/v1/datasets/capitals/seeds", json=SEEDS).status_code == 200
    _add_generated(
        settings_factory(),
        "capitals",
        [
            {
                "instruction": "Name the smallest country in Europe by area.",
                "instances": [{"input": "", "output": "Vatican City."}],
                "status": "accepted",
            }
        ],
    )
    assert "No judge has rated these tasks." in _card_body(api, "capitals")

    judging_stub.prefers = "City"
    job = api.post(
        "/v1/datasets/capitals/judgements", json={"model": JUDGE, "origin": "seed"}
    ).json()
    deadline = time.monotonic() + 60
    while (done := api.get(f"/v1/judgements/{job['id']}").json())["status"] not in {
        "succeeded",
        "failed",
        "cancelled",
    }:
        assert time.monotonic() < deadline, done
        time.sleep(0.1)
    assert done["status"] == "succeeded", done

    body = _card_body(api, "capitals")
    section = body.split("## Judge ratings", 1)[1]
    assert "No judge has rated" not in section
    assert f"`{JUDGE}` (5 tasks)" in section and "of the 5 tasks rated A-D" in section
    assert "| A | valid and satisfying | 3 | 60.0% |" in section
    assert "| B | acceptable with minor imperfections | 0 | 0.0% |" in section
    assert "| C | responds with significant errors | 2 | 40.0% |" in section
    assert "| D | irrelevant or invalid | 0 | 0.0% |" in section
    assert "| unjudged | the judge's answer held no rating | 0 | - |" in section
    assert "| not judged | never sent to a judge | 1 | - |" in section
