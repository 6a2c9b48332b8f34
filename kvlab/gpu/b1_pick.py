"""The batch-1 default rule of issue 18, applied to one call's records: a b1f candidate replaces the default
where b1f is the default (batch 1, from 16k) only if it read faster than the default at every such context in
EVERY repetition of the sweep and passed the oracle in the same call. The default is timed twice, as v0 and forced
as its variant (45: the same kernel in another place of the sweep's order, which moved a reading by 0.1-0.4 us), and
a candidate must beat both. Prints the winner (least summed time) or 0, and why.
    python3 kvlab/gpu/b1_pick.py SWEEP_TXT ORACLE_LOG [--cands 57,61,62] [--base 0,45] [--contexts 16384,32768]"""
import argparse
import re
from collections import defaultdict


def sweep_times(text: str) -> dict:
    """{(repetition, context, candidate): µs} from kvlab.gpu.sweep's output (b1_run.sh's sweep.txt)."""
    out, rep, ctx = {}, 0, None
    for line in text.splitlines():
        if m := re.match(r"# repetition (\d+)", line):
            rep = int(m[1])
        elif m := re.match(r"L=(\d+) B=1:", line):
            ctx = int(m[1])
        elif (m := re.match(r"\s+(v\d+/s\d+):\s+([\d.]+) us", line)) and ctx:
            out[(rep, ctx, m[1])] = float(m[2])
    return out


def oracle_passed(text: str) -> set:
    """Variants whose oracle line shows every case and every wide case passing."""
    ok = set()
    for m in re.finditer(r"oracle cuda \(variant (\d+)\): (\d+)/(\d+) .*wide bf16 cases (\d+)/(\d+)", text):
        if m[2] == m[3] and m[4] == m[5]:
            ok.add(int(m[1]))
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    ap.add_argument("oracle")
    ap.add_argument("--cands", default="57,61,62")
    ap.add_argument("--base", default="0,45", help="the default, timed as these variants")
    ap.add_argument("--contexts", default="16384,32768")
    a = ap.parse_args()
    t = sweep_times(open(a.sweep).read())
    passed = oracle_passed(open(a.oracle).read())
    ctxs = [int(c) for c in a.contexts.split(",")]
    reps = sorted({r for r, _, _ in t})
    base = [int(b) for b in a.base.split(",")]
    total, why = defaultdict(float), []
    winners = []
    for v in (int(c) for c in a.cands.split(",")):
        pairs = [(min(t[(r, c, f"v{b}/s0")] for b in base) if all((r, c, f"v{b}/s0") in t for b in base)
                  else None, t.get((r, c, f"v{v}/s0"))) for r in reps for c in ctxs]
        complete = bool(reps) and all(d is not None and x is not None for d, x in pairs)
        wins = complete and all(x < d for d, x in pairs)
        total[v] = sum(x for _, x in pairs if x is not None)
        n = sum(x < d for d, x in pairs if d and x)
        why.append(f"v{v}: oracle {'pass' if v in passed else 'NOT passed'}, {'faster' if wins else 'not faster'} than "
                   f"the default (v{'/v'.join(map(str, base))}) in {n} of {len(pairs)} (repetition, context) pairs "
                   f"(default, v{v}) us: {pairs}")
        if wins and v in passed:
            winners.append(v)
    best = min(winners, key=lambda v: total[v]) if winners else 0
    print("\n".join(why))
    print(f"pick: {best}")


if __name__ == "__main__":
    main()
