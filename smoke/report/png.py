"""PNG charts (matplotlib, no display): TTFT and ITL distributions per class as box plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on build machines
import matplotlib.pyplot as plt  # noqa: E402

from smoke.records import RequestRecord  # noqa: E402


def _box(path: Path, title: str, ylabel: str, data: dict[str, list[float]]) -> Path:
    names = [k for k, v in data.items() if v]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    if names:
        ax.boxplot([data[k] for k in names], showfliers=True, whis=(5, 95))
        ax.set_xticks(range(1, len(names) + 1), [f"{k}\n(n={len(data[k])})" for k in names], fontsize=8)
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no successful request", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write(out_dir: Path, records: Sequence[RequestRecord], classes: Sequence[str]) -> dict[str, Path]:
    ok = [r for r in records if r.ok]
    ttft = {c: [r.ttft_s * 1000 for r in ok if r.cls == c and r.ttft_s is not None] for c in classes}
    itl = {c: [g * 1000 for r in ok if r.cls == c for g in r.itl_s] for c in classes}
    return {"ttft_png": _box(out_dir / "ttft.png", "TTFT per class (box 25–75 %, whiskers 5–95 %)", "ms (log)", ttft),
            "itl_png": _box(out_dir / "itl.png", "Inter-token latency per class (box 25–75 %, whiskers 5–95 %)",
                            "ms (log)", itl)}
