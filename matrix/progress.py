"""Tell the user where a run is: the plan at start (what runs, what is kept, roughly how long) and
the running stage's progress (ninja's [n/N], elapsed, an estimate from the last record of the same
cell and stage, else the stage table's typical time)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from model.results import ResultsStore, StageOutcome
from model.spec import Cell
from model.stage import Context
from model.stages import BY_NAME, NAMES


def _fmt(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def last_seconds(root: Path, cell: str, stage: str) -> float | None:
    """The newest passing record of this cell and stage in any run under the results root."""
    best: StageOutcome | None = None
    for path in root.glob(f"*/cells/{cell}/{stage}.json"):
        o = ResultsStore(root, path.parts[-4]).get(cell, stage)
        if o is not None and o.status == "pass" and o.seconds > 0 and (best is None or o.started > best.started):
            best = o
    return best.seconds if best else None


def estimate(store: ResultsStore, cell: str, stage: str) -> float:
    found = last_seconds(store.root, cell, stage)
    return found if found is not None else BY_NAME[stage].typical_s


def plan(ctx: Context, cells: Iterable[Cell], stages: Iterable[str]) -> list[str]:
    """One line per cell: the stages it will run (with estimates) and those it keeps."""
    from matrix.pipeline import reusable
    chosen = set(stages)
    lines, total = [], 0.0
    for cell in cells:
        run, kept, redone = [], [], set()
        for stage in NAMES:
            if stage not in chosen:
                continue
            spec = BY_NAME[stage]
            have = reusable(ctx, cell, stage)
            if have is not None and not redone & {*spec.needs, *spec.reads}:
                kept.append(f"{stage} ({have.status})")
                continue
            redone.add(stage)  # what reads it will run again too (run_stage's identity check)
            if stage in cell.knobs.stages:
                secs = estimate(ctx.store, cell.id, stage)
                total += secs
                run.append(f"{stage} ~{_fmt(secs)}")
        lines.append(f"{cell.id}: run {', '.join(run) or 'nothing'}" + (f"; keep {', '.join(kept)}" if kept else ""))
    lines.append(f"at most ~{_fmt(total)} if every stage runs (a stage whose needs fail is skipped at once); "
                 f"results: {ctx.store.path}")
    return lines


class LiveProgress:
    """Wires a Context's callbacks to a rich console: events as lines, a bar for the running stage."""

    def __init__(self, ctx: Context, console: Console | None = None) -> None:
        self.ctx = ctx
        self.console = console or Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=self.console,
                            transient=True)
        self.task = None
        self._last_step: tuple[str, int] | None = None
        ctx.on_event = self.on_event
        ctx.on_progress = self.on_progress

    def __enter__(self) -> LiveProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def on_event(self, cell: str, stage: str, msg: str) -> None:
        self.console.print(f"[dim]{cell:<22} {stage:<10}[/dim] {msg}")
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        if msg == "start":
            guess = estimate(self.ctx.store, cell, stage)
            self.task = self.bar.add_task(f"{cell} {stage}", total=None, eta=f"(usually ~{_fmt(guess)})")

    def on_progress(self, cell: str, stage: str, phase: str, done: int, total: int) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=done, total=total, description=f"{cell} {stage}: {phase}")
        if not self.console.is_terminal and total:
            # A log file gets no live bar: one line per tenth of each phase instead.
            step = (phase, done * 10 // total)
            if step != self._last_step:
                self._last_step = step
                elapsed = self.bar.tasks[0].elapsed if self.bar.tasks else 0
                self.console.print(f"[dim]{cell:<22} {stage:<10}[/dim] {phase} [{done}/{total}] "
                                   f"{(elapsed or 0) / 60:.0f} min")
