"""The capacity bench's count of streams open at once, from records' send and end times."""

from __future__ import annotations

from types import SimpleNamespace as R

from smoke.bench.capacity import peak_open


def test_peak_open_counts_overlapping_streams_only():
    recs = [R(sent_s=0.0, end_s=10.0), R(sent_s=1.0, end_s=2.0), R(sent_s=1.5, end_s=12.0), R(sent_s=11.0, end_s=13.0)]
    assert peak_open(recs) == 3
    # A stream that ends exactly when another starts was not open at the same time.
    assert peak_open([R(sent_s=0.0, end_s=1.0), R(sent_s=1.0, end_s=2.0)]) == 1
    assert peak_open([]) == 0
