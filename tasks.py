"""vllm-deploylab: a thin invoke shell. One short function per task; the work lives in the packages.

Pipeline: matrix (what) → images (build it) → smoke (does it serve well) → notes (what happened).
Errors a user can cause are UsageError, printed here as one line with exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from invoke import Exit, task

from matrix.errors import UsageError

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def one_line_errors(fn):
    """Turn UsageError into one line on stderr and exit 2, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            raise Exit(f"error: {exc}", code=2) from None
        except KeyboardInterrupt:
            raise Exit("interrupted: results written so far are kept; rerun to resume", code=130) from None
    return wrapper


def _matrix(spec, sets):
    from matrix import spec as specmod
    return specmod.load(spec, sets or ())


# --- matrix / spine -------------------------------------------------------------------------
