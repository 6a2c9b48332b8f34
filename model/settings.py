"""Where things live: the one place that knows the project root and the work, results and model paths.

Each path can be moved with an environment variable (CI and tests point them at temporary folders).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value) if value else default


def work() -> Path:
    """Sources, per-cell build trees, caches, probed engine help texts (DEPLOYLAB_WORK)."""
    return _env_path("DEPLOYLAB_WORK", ROOT / ".work")


def results() -> Path:
    """The results store's root: one folder per run (DEPLOYLAB_RESULTS)."""
    return _env_path("DEPLOYLAB_RESULTS", ROOT / "results")


def models() -> Path:
    """Test models made by the project (DEPLOYLAB_MODELS)."""
    return _env_path("DEPLOYLAB_MODELS", work() / "models")


def default_spec() -> Path:
    """The default matrix spec: data a user edits, beside the orchestrator."""
    return ROOT / "matrix" / "default.toml"
