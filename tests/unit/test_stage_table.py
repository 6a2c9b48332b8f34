"""model.stages, the one stage table: what derives from it (order, needs in both directions, the
validation of stage names) agrees with itself and with the readers that used to repeat the list."""

from __future__ import annotations

import pytest

from model import stages
from model.errors import UsageError


def test_needs_point_backwards_in_table_order():
    for s in stages.TABLE:
        for need in (*s.needs, *s.reads, *s.ran_is_enough):
            assert stages.NAMES.index(need) < stages.NAMES.index(s.name), (s.name, need)


def test_upstream_and_dependents_are_each_others_inverse():
    for a in stages.NAMES:
        for b in stages.NAMES:
            assert (a in stages.upstream(b)) == (b in stages.dependents(a)), (a, b)
    assert stages.upstream("build") == ("render", "base", "toolchain", "preflight")
    assert stages.upstream("render") == ()


def test_an_unknown_stage_is_one_line_with_did_you_mean():
    with pytest.raises(UsageError, match=r"^--stages: unknown stage 'prefligt' \(did you mean 'preflight'\?\) "
                                         r"\(known: render, base, "):
        stages.check_names(["render", "prefligt"], "--stages")


def test_the_default_knobs_stages_and_every_reader_take_the_table(default_matrix):
    from matrix import notes
    from model import results
    assert all(c.knobs.stages == stages.NAMES for c in default_matrix.cells if c.target == "cpu")
    assert notes.ORDER == results.STAGES == stages.NAMES


def test_a_typo_in_knobs_stages_is_refused_with_did_you_mean():
    from model import spec
    with pytest.raises(UsageError, match=r"^--set: knobs\.stages: item 1: expected one of render, .*"
                                         r"got 'prefligt' \(did you mean 'preflight'\?\)$"):
        spec.load(sets=['knobs.stages=["render", "prefligt"]'])
