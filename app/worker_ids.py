"""Worker ids, `host:pid:random`: unique per worker, and a supervisor finds its child's jobs by
the `host:pid:` prefix. No database here, so a remote fine-tune worker can name itself too."""

from __future__ import annotations

import os
import socket
import uuid


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def worker_prefix(pid: int) -> str:
    """The ids of the worker process `pid` on this machine start with this."""
    return f"{socket.gethostname()}:{pid}:"
