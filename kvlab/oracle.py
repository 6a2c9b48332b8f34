"""The correctness oracle: every layout, through a backend, against the float64 reference, per case.

A backend is `run(layout_name, meta, q, store, params) -> (out [B,Hq,D], lse [B,Hq])`: PYTHON runs
the layouts' own float64 code; kvlab.ext provides the C++ and CUDA extension with the same
signature, so the same cases, tolerances and poisoned pools check both.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kvlab.layouts import LAYOUTS
from kvlab.reference import reference_decode
from kvlab.scenario import Built, Case, build

TOLERANCES = tomllib.loads(Path(__file__).with_name("tolerances.toml").read_text())

Backend = Callable  # (layout_name, meta, q, store, params) -> (out, lse)


def python_backend(name, meta, q, store, params):
    return LAYOUTS[name].attend(meta, q.astype(np.float64), store, params)


@dataclass(frozen=True)
class Result:
    case: str
    layout: str
    ok: bool
    err_stored: float   # vs reference on the cached (dequantized) values: the layout's own error
    err_source: float   # vs reference on unquantized values: adds the dtype's rounding
    seconds: float
    meta_bytes_per_seq: float
    detail: str = ""


def max_err(a, b) -> float:
    """Max |a-b|; NaN or a -inf/finite mismatch counts as infinitely wrong."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    d = np.where(same_inf, 0.0, np.abs(a - b))
    return float(np.inf) if np.isnan(d).any() else float(d.max(initial=0.0))


def references(built: Built):
    p = built.case.params()
    q = built.q.astype(np.float64)
    stored = [reference_decode(q[b], built.k_stored[b], built.v_stored[b], p) for b in range(len(q))]
    source = [reference_decode(q[b], built.k_src[b], built.v_src[b], p) for b in range(len(q))]
    return stored, source


def check(built: Built, backend: Backend, backend_name: str, layouts=None) -> list[Result]:
    layouts = layouts or LAYOUTS
    case, p = built.case, built.case.params()
    stored, source = references(built)
    ref_o = np.stack([o for o, _ in stored])
    ref_l = np.stack([l for _, l in stored])
    src_o = np.stack([o for o, _ in source])
    tol = TOLERANCES["stored"][backend_name]
    tol_src = max(tol, TOLERANCES["source"][case.dtype])
    out = []
    for name, mod in layouts.items():
        meta = mod.build(built.state)
        t0 = time.perf_counter()
        try:
            o, l = backend(getattr(mod, "KIND", name), meta, built.q, built.store, p)
            detail = ""
        except (IndexError, ValueError) as exc:  # a layout that addresses outside the pool fails
            o, l, detail = np.full_like(ref_o, np.nan), np.full_like(ref_l, np.nan), str(exc)
        dt = time.perf_counter() - t0
        e1 = max(max_err(o, ref_o), max_err(l, ref_l))
        e2 = max_err(o, src_o)
        out.append(Result(case.name, name, e1 <= tol and e2 <= tol_src, e1, e2, dt,
                          meta.nbytes() / len(built.q), detail))
    return out


def run(cases: list[Case], backend: Backend = python_backend, backend_name: str = "python", layouts=None):
    results = []
    for case in cases:
        results.extend(check(build(case), backend, backend_name, layouts))
    return results


def table(results: list[Result], named: set[str]) -> str:
    """Named cases one per row (layout: ok/FAIL and max error), randomized ones summarized."""
    layouts = list(dict.fromkeys(r.layout for r in results))
    by = {(r.case, r.layout): r for r in results}
    cases = list(dict.fromkeys(r.case for r in results))
    w = max([len(c) for c in cases if c in named] + [10])
    lines = [f"{'case':<{w}}  " + "  ".join(f"{n:>20}" for n in layouts)]
    for c in (c for c in cases if c in named):
        cells = []
        for n in layouts:
            r = by[(c, n)]
            cells.append(f"{'ok' if r.ok else 'FAIL':>4} {r.err_stored:8.1e}/{r.err_source:7.1e}")
        lines.append(f"{c:<{w}}  " + "  ".join(f"{x:>20}" for x in cells))
    rand = [c for c in cases if c not in named]
    if rand:
        cells = []
        for n in layouts:
            rs = [by[(c, n)] for c in rand]
            cells.append(f"{sum(r.ok for r in rs)}/{len(rs)} max {max(r.err_stored for r in rs):.1e}")
        lines.append(f"{f'random x{len(rand)}':<{w}}  " + "  ".join(f"{x:>20}" for x in cells))
    lines.append("(cell: pass, max error vs reference on stored values / on unquantized values)")
    return "\n".join(lines)


def ranking(results: list[Result], measured: dict | None = None, summary: dict | None = None, sizes=None) -> str:
    """The layouts ranked by kvlab.ranking's criterion, with this run's oracle passes beside them."""
    from kvlab import ranking as rk
    return rk.ranking(measured, rk.passes(results), summary, sizes)
