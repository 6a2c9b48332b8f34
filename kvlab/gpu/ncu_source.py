"""Sums an ncu source page (`ncu -i REP --page source --csv --print-source sass`) of one kernel by region:
the prologue, the main loop (first to last HMMA) and the tail after it (the b1f split merge lives there), then
lists the tail's sampled instructions and the most sampled ones overall. kvlab/gpu/ncu_tail.sh runs it.
    python3 kvlab/gpu/ncu_source.py SOURCE.csv"""
import csv
import sys


def num(x: str) -> float:
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


def main(path: str) -> None:
    lines = open(path, newline="").read().splitlines()
    head = next((i for i, s in enumerate(lines) if "Source" in s and "Address" in s), None)
    if head is None:
        print(f"{path}: no source table (first lines: {lines[:3]})")
        return
    rows = list(csv.DictReader(lines[head:]))
    cols = list(rows[0]) if rows else []
    src = next(c for c in cols if "Source" in c)
    addr = next(c for c in cols if "Address" in c)
    counted = [c for c in cols if "Sampling" in c or "stall" in c.lower() or c == "Instructions Executed"]
    allc = next((c for c in counted if "All Samples" in c), counted[0] if counted else None)
    print(f"source table: {len(rows)} SASS instructions; columns summed: {counted}")
    if allc is None:
        return
    mma = [i for i, r in enumerate(rows) if r[src].strip().startswith("HMMA")]
    first, last = (mma[0], mma[-1]) if mma else (0, -1)
    regions = {"prologue": rows[:first], "loop": rows[first:last + 1], "tail": rows[last + 1:]}
    total = sum(num(r[allc]) for r in rows) or 1.0
    for name, rs in regions.items():
        sums = ", ".join(f"{c} {sum(num(r[c]) for r in rs):.0f}" for c in counted)
        print(f"{name}: {len(rs)} instructions, {100 * sum(num(r[allc]) for r in rs) / total:.1f}% of samples; {sums}")
    extra = [c for c in counted if c != allc]

    def show(r: dict) -> str:
        counts = " ".join(f"{num(r[c]):6.0f}" for c in extra)
        return f"  {r[addr]:>8} {num(r[allc]):6.0f}  {counts}  {r[src].strip()}"
    print(f"tail instructions with samples (address, {allc}, {', '.join(extra)}, SASS):")
    for r in regions["tail"]:
        if num(r[allc]) > 0:
            print(show(r))
    print("most sampled instructions overall:")
    for r in sorted(rows, key=lambda r: -num(r[allc]))[:25]:
        print(show(r))


if __name__ == "__main__":
    main(sys.argv[1])
