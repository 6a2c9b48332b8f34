"""Five ways for an attention kernel to find a sequence's K/V, each derived from the manager's state.

Each layout module exposes `build(state) -> Meta` (int32 arrays a kernel reads; `nbytes()` counts
them) and `attend(meta, q, store, params) -> (out, lse)`, a float64 computation that reaches K/V
only through that metadata. LAYOUTS maps the names used by the oracle and the extension.
"""

from kvlab.layouts import contiguous, hybrid, paged, spans, virtual
from kvlab.layouts.base import State, snapshot

LAYOUTS = {"paged": paged, "contiguous": contiguous, "hybrid": hybrid, "spans": spans, "virtual": virtual}

__all__ = ["LAYOUTS", "State", "snapshot"]
