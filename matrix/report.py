"""The end-of-run summary: cell × stage outcomes and times, as a rich table."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table

from matrix.pipeline import PIPELINE
from model.results import ResultsStore

STYLE = {"pass": "green", "fail": "red", "gated": "yellow", "base-unavailable": "magenta",
         "engine-unavailable": "magenta", "skipped": "dim"}


def summary_table(store: ResultsStore, cells: Iterable[str]) -> Table:
    table = Table(title=f"results: {store.path}")
    table.add_column("cell")
    for stage in PIPELINE:
        table.add_column(stage)
    for cell in cells:
        row = [cell]
        for stage in PIPELINE:
            o = store.get(cell, stage)
            if o is None:
                row.append("")
                continue
            label = o.status if o.status == "pass" or not o.category else f"{o.status}\n{o.category}"
            secs = f" {o.seconds:.0f}s" if o.seconds >= 1 else ""
            row.append(f"[{STYLE.get(o.status, '')}]{label}[/]{secs}")
        table.add_row(*row)
    return table
