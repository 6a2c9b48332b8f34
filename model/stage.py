"""The stage contract: every stage is `run(ctx, cell) -> StageOutcome`, with one typed context and
one helper that times a stage and builds its outcome (so no stage writes start/duration by hand)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from model.results import ResultsStore, StageOutcome
from model.spec import Cell, EngineSource


def _quiet_event(cell: str, stage: str, msg: str) -> None:
    return None


def _quiet_progress(cell: str, stage: str, phase: str, done: int, total: int) -> None:
    return None


@dataclass
class Context:
    """What a stage may use: the store, the work folder, the user's overrides, and callbacks that
    tell the user where the run is. The Docker client is made on first use (unit tests need none)."""

    store: ResultsStore
    work: Path  # sources, per-cell build trees, caches
    force: bool = False
    vllm: str | None = None  # --vllm VERSION|PATH overrides the cell's engine source
    confirm_gates: bool = False  # build even where preflight predicts a gate
    on_event: Callable[[str, str, str], None] = _quiet_event
    on_progress: Callable[[str, str, str, int, int], None] = _quiet_progress
    client_factory: Callable[[], Any] | None = None
    _client: Any = field(default=None, repr=False)

    @property
    def client(self) -> Any:
        if self._client is None:
            if self.client_factory is None:
                raise RuntimeError("this Context has no client_factory (the orchestrator's Context sets one)")
            self._client = self.client_factory()
        return self._client

    def engine_source(self, cell: Cell) -> EngineSource:
        return EngineSource.parse(self.vllm) if self.vllm else cell.engine

    def cell_dir(self, cell: Cell) -> Path:
        return self.work / "cells" / cell.id

    @property
    def cache(self) -> Path:
        return self.work / "cache"


class Stage(Protocol):
    def __call__(self, ctx: Context, cell: Cell) -> StageOutcome: ...


class Timed:
    """Times one stage from its creation; `.done(status, ...)` builds the outcome with the time."""

    def __init__(self, cell: Cell | str, stage: str) -> None:
        self.cell = cell if isinstance(cell, str) else cell.id
        self.stage = stage
        self.started = time.time()
        self._t0 = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def done(self, status: str, **kw: Any) -> StageOutcome:
        return StageOutcome(cell=self.cell, stage=self.stage, status=status, started=self.started,
                            seconds=self.elapsed, **kw)
