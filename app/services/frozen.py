"""The stored form of a dataset version's content: one canonical JSON line per task, in task id
order, compressed a chunk of lines at a time.

Canonical means sorted keys, no whitespace, UTF-8 (orjson with OPT_SORT_KEYS), each line ending
in a newline: the same tasks in the same state always give the same bytes, so a version's
content hash (the SHA-256 of all its lines, in order) says whether two versions hold the same
data. zstd (through pyarrow, already a dependency) shrinks them about as well as zlib's best
level in a third of its CPU time and decompresses several times faster (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

# Tasks per chunk: a chunk of typical tasks is a few hundred KB of JSON before compression,
# large enough for zstd to find the repeated keys, small enough that reading streams.
TASKS_PER_CHUNK = 1000
_CODEC = pa.Codec("zstd", compression_level=3)

# Every key of a frozen record; the state of the task the version holds.
RECORD_KEYS = (
    "task_id",
    "seed_id",
    "name",
    "instruction",
    "instances",
    "is_classification",
    "origin",
    "status",
    "language",
    "rating",
    "run_id",
    "strategy",
    "split",
    "holdout_key",
    "contaminated",
)


def canonical_line(record: dict[str, Any]) -> bytes:
    """One record as the version stores and hashes it."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"


def compress(raw: bytes) -> bytes:
    return bytes(_CODEC.compress(raw, asbytes=True))


def decode_chunk(data: bytes, raw_bytes: int) -> list[dict[str, Any]]:
    """A stored chunk's records, in order."""
    raw = _CODEC.decompress(data, decompressed_size=raw_bytes, asbytes=True)
    return [orjson.loads(line) for line in bytes(raw).split(b"\n") if line]
