"""Fixtures for the filters tests: real English sentences and the reference scorer."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from testbed.corpus import real_sentences


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """3,000 distinct sentences from the docstrings of the installed standard library."""
    found = real_sentences(3000)
    assert len(found) == 3000, "the standard library should ship thousands of prose sentences"
    return found


@pytest.fixture(scope="session")
def scorer() -> rouge_scorer.RougeScorer:
    """The paper's scorer: ROUGE-L, default tokenizer, no stemming."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
