"""Documents a user posts for backtranslate runs: split into passages in any language, listed,
shown and deleted like tasks, and refused whole when any part is bad."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.documents import split_passages
from app.settings import Settings
from tests.conftest import _wipe

PARAGRAPH = (
    "Rivers carry water from high ground to the sea. Along the way they cut valleys, carry "
    "sand and stones, and build plains where they slow down. People have settled beside them "
    "for drinking water, farming and trade."
)
CHINESE = (
    "长江是中国最长的河流，全长约六千三百公里。它发源于青藏高原，向东流经十一个省区，最后注入东海。"
    "长江流域气候温和，雨量充沛，是中国重要的农业区。沿江分布着许多大城市，如重庆、武汉和南京。"
    "长江的水运十分繁忙，被称为黄金水道。"
)


def test_paragraphs_are_joined_up_to_the_size_and_never_past_it() -> None:
    text = "\n\n".join([PARAGRAPH] * 5)
    passages = split_passages(text, max_chars=500)
    assert all(len(p) <= 500 for p in passages)
    assert passages[0] == f"{PARAGRAPH}\n\n{PARAGRAPH}"  # two paragraphs fit, a third does not
    assert "".join(passages).replace("\n", "") == text.replace("\n", "")


def test_a_long_paragraph_is_cut_at_sentence_ends_in_english_and_chinese() -> None:
    english = split_passages(PARAGRAPH, max_chars=120)
    assert all(len(p) <= 120 for p in english)
    assert all(p.endswith(".") for p in english)
    assert " ".join(english) == PARAGRAPH
    chinese = split_passages(CHINESE, max_chars=60)
    assert len(chinese) > 1 and all(len(p) <= 60 for p in chinese)
    assert all(p.endswith("。") for p in chinese)
    assert "".join(chinese) == CHINESE  # nothing added between Chinese sentences
    unbroken = split_passages("x" * 250, max_chars=100)
    assert [len(p) for p in unbroken] == [100, 100, 50]


def test_markdown_headings_start_passages_and_front_matter_is_dropped() -> None:
    text = (
        "---\ntitle: Rivers\n---\n# Source\n\nRivers start in hills.\n\n"
        "# Mouth\n\nThey end in the sea."
    )
    passages = split_passages(text, max_chars=1000, markdown=True)
    assert passages == ["# Source\n\nRivers start in hills.", "# Mouth\n\nThey end in the sea."]


@pytest.fixture
def api(settings_factory: Callable[..., Settings]) -> TestClient:
    settings = settings_factory(document_max_bytes=4000)
    _wipe(settings.db_url)
    with TestClient(create_app(settings)) as client:
        yield client  # type: ignore[misc]
    _wipe(settings.db_url)


def _count(api: TestClient) -> int:
    return api.get("/v1/datasets/default/documents").json()["count"]  # type: ignore[no-any-return]


def test_documents_are_listed_shown_and_deleted(api: TestClient) -> None:
    files = [
        ("file", ("rivers.md", f"# Rivers\n\n{PARAGRAPH}".encode(), "text/markdown")),
        ("file", ("长江.txt", CHINESE.encode(), "text/plain")),
    ]
    posted = api.post("/v1/datasets/default/documents", files=files)
    assert posted.status_code == 201, posted.text
    rivers, yangtze = posted.json()["data"]
    assert rivers["format"] == "markdown" and yangtze["format"] == "text"
    assert _count(api) == 2
    shown = api.get(f"/v1/datasets/default/documents/{yangtze['id']}").json()
    assert [p["language"] for p in shown["passage_list"]] == ["zh"] * yangtze["passages"]
    assert "".join(p["text"] for p in shown["passage_list"]) == CHINESE
    assert api.delete(f"/v1/datasets/default/documents/{rivers['id']}").status_code == 204
    assert api.get(f"/v1/datasets/default/documents/{rivers['id']}").status_code == 404
    assert [d["name"] for d in api.get("/v1/datasets/default/documents").json()["data"]] == [
        "长江.txt"
    ]


def test_bad_documents_are_refused_whole_naming_the_file_or_line(api: TestClient) -> None:
    good = ("file", ("good.txt", PARAGRAPH.encode(), "text/plain"))
    cases = [
        (("file", ("empty.txt", b" \n\n  ", "text/plain")), 422, "empty.txt", "empty"),
        (("file", ("photo.png", b"\x89PNG\x00\x00", "image/png")), 422, "photo.png", "binary"),
        (("file", ("latin1.txt", "café".encode("latin-1"), "text/plain")), 422, "latin1", "UTF-8"),
        (("file", ("big.txt", b"word " * 1000, "text/plain")), 413, "big.txt", "4000"),
        (
            ("file", ("rows.jsonl", b'{"text": "fine row here"}\n{"txt": "no"}\n', "text/plain")),
            422,
            "rows.jsonl:2",
            "line 2",
        ),
        (
            ("file", ("bad.jsonl", b'{"text": "ok row"}\nnot json\n', "text/plain")),
            422,
            "bad.jsonl:2",
            "line 2",
        ),
    ]
    for bad, status, name, words in cases:
        response = api.post("/v1/datasets/default/documents", files=[good, bad])
        assert response.status_code == status, (bad[1][0], response.text)
        body = response.json()
        assert words in body["detail"], body
        assert name in (body["errors"][0]["field"] if name else ""), body
        assert _count(api) == 0, f"{bad[1][0]}: the good file must not be stored either"


def test_json_documents_and_unknown_ids(api: TestClient) -> None:
    response = api.post(
        "/v1/datasets/default/documents",
        json={"documents": [{"name": "notes", "text": PARAGRAPH, "format": "text"}]},
        params={"passage_chars": 200},
    )
    assert response.status_code == 201 and response.json()["data"][0]["passages"] == 2
    for text in ("\u0000", " \n\u3000 "):  # the schema's rule: some text and no NUL
        empty = api.post(
            "/v1/datasets/default/documents", json={"documents": [{"name": "x", "text": text}]}
        )
        assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "documents.0.text"
    short = api.post(  # a short document is one short passage
        "/v1/datasets/default/documents", json={"documents": [{"name": "one.md", "text": "Hi"}]}
    )
    assert short.status_code == 201 and short.json()["data"][0]["passages"] == 1
    assert short.json()["data"][0]["format"] == "markdown"
    assert api.post("/v1/datasets/default/documents", json={"documents": []}).status_code == 422
    too_small = api.post(
        "/v1/datasets/default/documents",
        json={"documents": [{"name": "y", "text": PARAGRAPH}]},
        params={"passage_chars": 10},
    )
    assert too_small.status_code == 422
    assert api.get("/v1/datasets/default/documents/999").status_code == 404
    assert api.delete("/v1/datasets/default/documents/999").status_code == 404
    assert api.get("/v1/datasets/nope/documents").status_code == 404
    assert _count(api) == 2


def test_splitting_keeps_the_text_as_written() -> None:
    """Pieces are slices of the original: numbers, abbreviations and code lines survive."""
    text = "Python 3.14 is out, see www.example.com, e.g. the notes. " * 3 + "Stop here."
    passages = split_passages(text, max_chars=80)
    assert all(p in text for p in passages) and all(len(p) <= 80 for p in passages)
    assert "3.14" in passages[0] and "www.example.com" in passages[0]
    code = "let x0 = 0;\nlet x1 = 1;\n" * 20
    assert all(p in code for p in split_passages(code, max_chars=100))


def test_a_jsonl_line_may_hold_a_line_separator(api: TestClient) -> None:
    row = '{"text": "First part\u2028second part of one passage."}\n'.encode()
    posted = api.post("/v1/datasets/default/documents", files=[("file", ("rows.jsonl", row))])
    assert posted.status_code == 201, posted.text
    assert posted.json()["data"][0]["passages"] == 1
