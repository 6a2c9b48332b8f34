"""Metadata sizes come from real manager state: spans collapse an unfragmented sequence to one
entry; a fragmenting workload erodes that, and the table reports by how much."""

from __future__ import annotations

from kvlab import metadata


def test_spans_are_at_least_10x_smaller_than_a_per_token_table_at_8k():
    rows = {(r.context, r.allocation): r for r in metadata.table(contexts=(8192,))}
    fresh, frag = rows[(8192, "fresh")], rows[(8192, "fragmented")]
    assert fresh.num_spans == 1
    assert fresh.per_token / fresh.spans >= 10
    # the fragmenting workload really fragments: many spans, and a measured (smaller) ratio
    assert frag.num_spans > 10 and fresh.token_over_spans > frag.token_over_spans > 1
    assert fresh.contiguous <= fresh.spans < fresh.per_block < fresh.per_token
    text = metadata.render(list(rows.values()))
    assert "fragmented" in text and "8192" in text
