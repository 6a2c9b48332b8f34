"""The host-side hints kvlab hands kvx: max_prefix_len tells the GPU hybrid call whether any group
shares a prefix (0 routes it to one spans pass over the suffixes)."""
from kvlab import ext
from kvlab.layouts import LAYOUTS, State


def hybrid_hints(tables, lens):
    return ext._hints(LAYOUTS["hybrid"].build(State(4, tables, lens)))


def test_nothing_shared_gives_zero_prefix():
    hints = hybrid_hints(((0, 1, 2), (3, 4, 5)), (12, 10))
    assert hints == {"max_seq_len": 12, "max_group": 1, "max_prefix_len": 0}


def test_a_shared_prefix_is_its_whole_blocks():
    # two sequences share their first two (full) blocks; the third block differs
    hints = hybrid_hints(((0, 1, 2), (0, 1, 3), (4, 5)), (11, 12, 6))
    assert hints["max_group"] == 2 and hints["max_prefix_len"] == 8
