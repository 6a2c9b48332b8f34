"""Hypothesis strategies shared by the fuzz tests of the files a user edits."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st


def toml_documents(keys: Sequence[str], words: Sequence[str] = (), int_hi: int = 100, max_leaves: int = 20,
                   top: int = 4) -> st.SearchStrategy[dict]:
    """Any nesting of TOML values under the schema's own keys (plus strangers), so most examples get
    past the first table and reach the deeper checks; `words` are values the schema gives meaning to."""
    names = st.sampled_from([*keys, "x"])
    scalars = st.one_of(st.booleans(), st.integers(-2, int_hi), st.floats(), st.text(max_size=6),
                        *([st.sampled_from(list(words))] if words else []))
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(names, inner, max_size=5)),
                          max_leaves=max_leaves)
    return st.dictionaries(names, values, max_size=top)
