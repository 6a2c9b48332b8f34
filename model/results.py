"""The one results store: one folder per run, one JSON file per (cell, stage), an event log.

Every stage of every cell ends in exactly one StageOutcome, written atomically the moment the
stage ends, so an interrupted run keeps everything it finished and a rerun resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.stages import NAMES as STAGES  # pipeline order; a stage not listed is still stored, after these

STATUSES = ("pass", "fail", "gated", "base-unavailable", "engine-unavailable", "skipped")
# Outcomes that say nothing of the cell (the Docker engine restarted under the stage, or the tool itself
# crashed): a rerun redoes them even while their identity holds.
REDO_CATEGORIES = ("engine-lost", "internal-error")


@dataclass(frozen=True)
class StageOutcome:
    cell: str
    stage: str
    status: str
    category: str = ""
    evidence: tuple[str, ...] = ()
    remediation: str = ""
    started: float = 0.0
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # What the outcome was made from (the cell's config, the engine, the outcomes it read): a rerun
    # reuses it only while these are unchanged. See matrix.pipeline.identity.
    identity: dict[str, Any] = field(default_factory=dict)
    # Where and when it was made: run, host, date (filled by ResultsStore.write).
    provenance: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["evidence"] = list(self.evidence)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageOutcome:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["evidence"] = tuple(kwargs.get("evidence", ()))
        return cls(**kwargs)


def fingerprint(outcome: StageOutcome | None) -> str | None:
    """Names one stored outcome: a redone stage gets a new one, so what read the old one is stale."""
    return None if outcome is None else f"{outcome.status}@{outcome.started:.3f}"


def provenance(run: str, started: float) -> dict[str, str]:
    host = platform.node() or "unknown"
    return {"run": run, "host": host, "machine": f"{os.cpu_count()} cores, {platform.machine()}",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started or time.time()))}


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ResultsStore:
    """A run folder: <root>/<run>/cells/<cell>/<stage>.json plus events.jsonl."""

    def __init__(self, root: Path | str, run: str = "latest") -> None:
        self.root = Path(root)
        self.run = run
        self.path = self.root / run

    def outcome_path(self, cell: str, stage: str) -> Path:
        return self.path / "cells" / cell / f"{stage}.json"

    def artifact_dir(self, cell: str, stage: str) -> Path:
        d = self.path / "cells" / cell / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def event(self, kind: str, **data: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"t": round(time.time(), 3), "event": kind, **data}, sort_keys=True)
        with open(self.path / "events.jsonl", "a") as fh:
            fh.write(line + "\n")

    def apart(self, label: str) -> ResultsStore:
        """A sibling run for results that must never count as this run's cells' own (--image, --url)."""
        return ResultsStore(self.root, f"{self.run}+{label}")

    def write(self, outcome: StageOutcome) -> StageOutcome:
        if not outcome.provenance:
            outcome = dataclasses.replace(outcome, provenance=provenance(self.run, outcome.started))
        _atomic_write(
            self.outcome_path(outcome.cell, outcome.stage),
            json.dumps(outcome.to_json(), indent=2, sort_keys=True) + "\n",
        )
        self.event("stage-end", cell=outcome.cell, stage=outcome.stage, status=outcome.status,
                   category=outcome.category, seconds=round(outcome.seconds, 2))
        return outcome

    def get(self, cell: str, stage: str) -> StageOutcome | None:
        p = self.outcome_path(cell, stage)
        if not p.exists():
            return None
        return StageOutcome.from_json(json.loads(p.read_text()))

    def outcomes(self, cell: str | None = None) -> Iterator[StageOutcome]:
        base = self.path / "cells"
        if not base.exists():
            return
        cells = [base / cell] if cell else sorted(p for p in base.iterdir() if p.is_dir())
        for cdir in cells:
            found = {p.stem: p for p in cdir.glob("*.json")}
            order = [s for s in STAGES if s in found] + sorted(set(found) - set(STAGES))
            for stage in order:
                yield StageOutcome.from_json(json.loads(found[stage].read_text()))

    def cells(self) -> list[str]:
        base = self.path / "cells"
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.exists() else []
