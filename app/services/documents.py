"""Documents: material a user already has, split into passages that runs write instructions for
(strategy `backtranslate`, after Li et al. 2023's instruction back-translation).

Splitting keeps a passage whole where it can: paragraphs are joined up to the size asked for, a
Markdown heading starts a new passage, and only a paragraph longer than the size is cut, at
sentence ends (English and Chinese marks) and, for a sentence longer still, at a space or at
the size itself. Sizes are in characters, so Chinese text, written without spaces, splits the
same way as English.

An upload is checked whole before anything is stored: one empty, binary or oversized document,
or one bad JSONL line, refuses all of it with the file (and line) named.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
from sqlmodel import Session, col, delete, select

from app.errors import InvalidInput, NotFound, PayloadTooLarge
from app.models import Dataset, Document, Passage
from app.schemas.common import ErrorItem
from app.schemas.datasets import JSON_WHITESPACE, DocumentDetail, DocumentPublic, PassagePublic
from filters.language import detect_language

DEFAULT_PASSAGE_CHARS = 1500
MIN_PASSAGE_CHARS = 200
MAX_PASSAGE_CHARS = 20_000
SHORTEST_PASSAGE = 16  # characters; a stray heading or page number alone is no answer
FORMATS = ("text", "markdown", "jsonl")
_EXTENSIONS = {".md": "markdown", ".markdown": "markdown", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_JSONL_FIELDS = ("text", "passage", "content")

# A sentence ends at . ! ? ; followed by whitespace ("3.14" and "e.g." go on), or at a Chinese
# full stop, question or exclamation mark or semicolon, which need none.
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])\s*")
_HEADING = re.compile(r"^#{1,6}\s")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)


@dataclass
class ParsedDocument:
    name: str
    format: str
    raw: bytes
    passages: list[str]


# --- splitting ---------------------------------------------------------------------------------


def split_passages(text: str, *, max_chars: int, markdown: bool = False) -> list[str]:
    """Passages of at most `max_chars` characters, in order (see the module docstring)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if markdown:
        text = _FRONT_MATTER.sub("", text)
    passages: list[str] = []
    current: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal size
        joined = "\n\n".join(current).strip()
        if len(joined) >= SHORTEST_PASSAGE:
            passages.append(joined)
        current.clear()
        size = 0

    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if not block:
            continue
        if markdown and _HEADING.match(block) and current:
            flush()
        for piece in _fit(block, max_chars):
            if current and size + 2 + len(piece) > max_chars:
                flush()
            current.append(piece)
            size += len(piece) + (2 if len(current) > 1 else 0)
    flush()
    return passages


def _fit(block: str, max_chars: int) -> list[str]:
    """A block as pieces of at most `max_chars`: whole, or runs of whole sentences sliced out
    of the original text (nothing re-joined), or a sentence cut at a space or at the size."""
    if len(block) <= max_chars:
        return [block]
    cuts = [m.end() for m in _SENTENCE_END.finditer(block) if 0 < m.end() < len(block)]
    pieces: list[str] = []
    start = end = 0  # the piece being built: block[start:end]
    for sentence_end in [*cuts, len(block)]:
        if sentence_end - start <= max_chars:
            end = sentence_end
            continue
        if end > start:
            pieces.append(block[start:end].strip())
            start = end
        if sentence_end - start <= max_chars:
            end = sentence_end
        else:  # this sentence alone is longer than the size
            pieces += _cut(block[start:sentence_end].strip(), max_chars)
            start = end = sentence_end
    if end > start:
        pieces.append(block[start:end].strip())
    return [p for p in pieces if p]


def _cut(sentence: str, max_chars: int) -> list[str]:
    """A sentence longer than `max_chars`, cut at the last space before the limit if any."""
    parts = []
    while len(sentence) > max_chars:
        space = sentence.rfind(" ", max_chars // 2, max_chars)
        at = space if space > 0 else max_chars
        parts.append(sentence[:at].strip())
        sentence = sentence[at:].strip()
    return [*parts, sentence] if sentence else parts


# --- reading uploads ---------------------------------------------------------------------------


def text_format(name: str) -> str:
    """A document sent as JSON text: Markdown by its name, else plain text (never JSONL)."""
    return "markdown" if document_format(name, None) == "markdown" else "text"


def document_format(name: str, declared: str | None) -> str:
    if declared is not None:
        return declared
    lower = name.lower()
    return next((f for ext, f in _EXTENSIONS.items() if lower.endswith(ext)), "text")


def parse_document(
    name: str, raw: bytes, *, declared: str | None, max_bytes: int, max_chars: int
) -> ParsedDocument:
    """Check and split one document; any problem names it (and the line, for JSONL)."""
    fmt = document_format(name, declared)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(
            f"Document '{name}' has {len(raw)} bytes, more than {max_bytes} "
            "(SELFINSTRUCT_DOCUMENT_MAX_BYTES); split it. Nothing was stored.",
            errors=[ErrorItem(field=name, reason=f"more than {max_bytes} bytes")],
        )
    if b"\x00" in raw:
        raise _refuse(name, "is binary (it holds NUL bytes); send plain text, Markdown or JSONL")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _refuse(
            name, f"is not UTF-8 text (byte {exc.start}); send plain text, Markdown or JSONL"
        ) from exc
    if fmt == "jsonl":
        passages = _jsonl_passages(name, text, max_chars)
    else:
        passages = split_passages(text, max_chars=max_chars, markdown=fmt == "markdown")
        if not passages and _has_text(text):  # a short document is one short passage
            passages = [text.strip() or text]
    if not passages:
        raise _refuse(name, "is empty: it holds no passage of text")
    return ParsedDocument(name=name, format=fmt, raw=raw, passages=passages)


def _jsonl_passages(name: str, text: str, max_chars: int) -> list[str]:
    passages: list[str] = []
    # "\n" only: str.splitlines() also breaks at U+2028 and others, which JSON strings may hold
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj: Any = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise _refuse(name, f"line {number} is not JSON ({exc})", line=number) from exc
        value = next((obj[k] for k in _JSONL_FIELDS if isinstance(obj, dict) and k in obj), None)
        if not isinstance(value, str) or not value.strip():
            raise _refuse(
                name,
                f'line {number} needs a non-empty string field "text" (or "passage", "content")',
                line=number,
            )
        passages += split_passages(value, max_chars=max_chars)
    return passages


def _has_text(text: str) -> bool:
    return bool(re.search(f"[^\u0000{JSON_WHITESPACE}]", text))


def _refuse(name: str, reason: str, *, line: int | None = None) -> InvalidInput:
    where = f"{name}:{line}" if line else name
    return InvalidInput(
        f"Document '{name}' {reason}. Nothing was stored.",
        errors=[ErrorItem(field=where, reason=reason)],
    )


# --- storing and reading -----------------------------------------------------------------------


def add_documents(
    *, session: Session, dataset: Dataset, parsed: list[ParsedDocument]
) -> list[DocumentPublic]:
    """Store every document and its passages in one transaction."""
    assert dataset.id is not None
    documents = []
    for doc in parsed:
        row = Document(
            dataset_id=dataset.id,
            name=doc.name,
            format=doc.format,
            bytes=len(doc.raw),
            sha256=hashlib.sha256(doc.raw).hexdigest(),
            passages=len(doc.passages),
        )
        session.add(row)
        session.flush()
        assert row.id is not None
        session.add_all(
            Passage(
                document_id=row.id,
                dataset_id=dataset.id,
                position=i,
                text=text,
                language=detect_language(text),
            )
            for i, text in enumerate(doc.passages)
        )
        documents.append(row)
    session.commit()
    return [document_public(d, dataset.name) for d in documents]


def list_documents(*, session: Session, dataset: Dataset) -> list[DocumentPublic]:
    rows = session.exec(
        select(Document).where(Document.dataset_id == dataset.id).order_by(col(Document.id))
    ).all()
    return [document_public(d, dataset.name) for d in rows]


def get_document(*, session: Session, dataset: Dataset, document_id: int) -> Document:
    doc = session.get(Document, document_id)
    if doc is None or doc.dataset_id != dataset.id:
        raise NotFound(f"Dataset '{dataset.name}' has no document {document_id}.")
    return doc


def document_detail(*, session: Session, dataset: Dataset, document_id: int) -> DocumentDetail:
    doc = get_document(session=session, dataset=dataset, document_id=document_id)
    passages = session.exec(
        select(Passage).where(Passage.document_id == doc.id).order_by(col(Passage.position))
    ).all()
    return DocumentDetail(
        **document_public(doc, dataset.name).model_dump(),
        passage_list=[
            PassagePublic(id=p.id, position=p.position, text=p.text, language=p.language)  # type: ignore[arg-type]
            for p in passages
        ],
    )


def delete_document(*, session: Session, dataset: Dataset, document_id: int) -> None:
    """Delete a document and its passages; tasks written for them keep their lineage."""
    doc = get_document(session=session, dataset=dataset, document_id=document_id)
    session.exec(delete(Passage).where(col(Passage.document_id) == doc.id))  # type: ignore[call-overload]
    session.delete(doc)
    session.commit()


def document_public(doc: Document, dataset_name: str) -> DocumentPublic:
    return DocumentPublic(
        id=doc.id,  # type: ignore[arg-type]
        dataset=dataset_name,
        name=doc.name,
        format=doc.format,  # type: ignore[arg-type]
        bytes=doc.bytes,
        sha256=doc.sha256,
        passages=doc.passages,
        created_at=doc.created_at,
    )
