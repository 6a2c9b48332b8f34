"""The one stage table: names, order and needs. Everything else (results order, the orchestrator's
needs, notes order, the validation of `knobs.stages`) derives from it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from model.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class StageSpec:
    name: str
    needs: tuple[str, ...] = ()
    # needs met once that stage ran, whatever its verdict (not skipped)
    ran_is_enough: tuple[str, ...] = ()
    # runs only when asked for by name (--stages rebuild, invoke build --rebuild)
    on_request: bool = False
    # outcomes it reads besides its needs (their change makes it stale too)
    reads: tuple[str, ...] = ()
    # limit knobs (model.spec.LIMIT_KNOBS) that shape its outcome: a change makes it stale
    knobs: tuple[str, ...] = ()
    what: str = ""
    # A first guess of its length on a 2-core machine (from the committed notes) where no earlier
    # record of the same cell exists; the estimate prefers that record.
    typical_s: float = 1.0


TABLE: tuple[StageSpec, ...] = (
    StageSpec("render", typical_s=1, what="the cell's build Dockerfile, linted"),
    StageSpec("base", ("render",), typical_s=180, what="the distro's base image: pull, else debootstrap + import"),
    StageSpec("toolchain", ("base",), typical_s=300, what="the build container image and its probe"),
    # Preflight reads the rendered Dockerfile when no toolchain image exists (Fedora here).
    StageSpec("preflight", ("render",), reads=("toolchain",), knobs=("workspace_gb",), typical_s=5, what="the engine's build gates against the toolchain"),
    StageSpec("build", ("toolchain", "preflight"), knobs=("build_mem_gib", "workspace_gb"), typical_s=2820, what="vLLM + kvx from source in the container"),
    StageSpec("rebuild", ("build",), on_request=True, knobs=("build_mem_gib", "workspace_gb"), typical_s=200, what="the same build warm (ccache)"),
    StageSpec("runtime", ("build",), typical_s=180, what="the runtime image from the built wheels"),
    StageSpec("smoke", ("runtime",), typical_s=100, what="the six-class mixed workload on the runtime image"),
    # The kvx extension is built even where vLLM is gated, so the oracle checks it there too.
    StageSpec("oracle", ("build",), ran_is_enough=("build",), reads=("runtime",), typical_s=25, what="the KV-layout oracle on the built extension"),
)
BY_NAME = {s.name: s for s in TABLE}
NAMES = tuple(s.name for s in TABLE)
PIPELINE = tuple(s.name for s in TABLE if not s.on_request)


def check_names(names: Iterable[str], where: str) -> None:
    """UsageError naming `where` for the first name that is not a stage."""
    for name in names:
        if name not in BY_NAME:
            raise UsageError(f"{where}: unknown stage {name!r}{did_you_mean(name, NAMES)} "
                             f"(known: {', '.join(NAMES)})")


def dependents(name: str) -> tuple[str, ...]:
    """Every stage that needs `name`, directly or through another stage, in table order."""
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for s in TABLE:
            if s.name not in found and (name in s.needs or found & set(s.needs)):
                found.add(s.name)
                changed = True
    return tuple(n for n in NAMES if n in found)


def upstream(name: str) -> tuple[str, ...]:
    """Every stage `name` needs, directly or through another stage, in table order."""
    found: set[str] = set()
    todo = list(BY_NAME[name].needs)
    while todo:
        s = todo.pop()
        if s not in found:
            found.add(s)
            todo.extend(BY_NAME[s].needs)
    return tuple(n for n in NAMES if n in found)
