"""Export the matrix for CI: a GitHub Actions matrix and a buildx bake file (both plain JSON)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from images.render import Rendered
from model.spec import Cell


def github_matrix(cells: Iterable[Cell]) -> dict[str, Any]:
    """`{"include": [...]}`, one entry per cell, for `strategy.matrix: ${{ fromJSON(...) }}`."""
    return {"include": [c.ci_entry() for c in cells]}


def bake_file(rendered: Iterable[Rendered], dockerfiles_dir: str) -> dict[str, Any]:
    """A docker buildx bake file (JSON form): one target per cell, grouped as "default"."""
    targets: dict[str, Any] = {}
    for r in rendered:
        name = r.cell.replace(".", "_")
        targets[name] = {
            "context": f"{dockerfiles_dir}/{r.cell}",
            "dockerfile": "Dockerfile",
            "tags": [f"deploylab/toolchain:{r.cell}"],
            "labels": {"org.deploylab.cell": r.cell, "org.deploylab.cuda-source": r.cuda_source},
        }
    return {"group": {"default": {"targets": sorted(targets)}}, "target": targets}
