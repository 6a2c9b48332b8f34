"""The schema of kvlab's two user-edited files, checked on the host through model.toml (one line:
file, key, what was expected, did-you-mean) before anything reads them.

scenario.py and oracle.py read them with tomllib themselves because they also run inside a container
(kvlab/resources/oracle_run.py mounts kvlab/ alone: no pydantic, no model package there); the oracle
stage and `invoke oracle` call check() first, so a typo never reaches that plain reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from model.toml import NonNegativeInt, PositiveInt, Strict, load

HERE = Path(__file__).parent
CASES = HERE / "cases.toml"
TOLERANCES = HERE / "tolerances.toml"

Dtype = Literal["f32", "bf16", "fp8"]
Tolerance = Annotated[float, Field(gt=0, description="a positive number (max absolute error)")]


class CaseFields(Strict):
    """Every key a case may set; [defaults] sets them all, a [[case]] overrides some."""

    q_heads: PositiveInt | None = None
    kv_heads: PositiveInt | None = None
    head_dim: PositiveInt | None = None
    block_size: PositiveInt | None = None
    dtype: Dtype | None = None
    fp8_scale: Literal["tensor", "head"] | None = None
    alibi: bool | None = None
    window: NonNegativeInt | None = None
    lens: list[PositiveInt] | None = Field(None, min_length=1)
    shared_prefix: NonNegativeInt | None = None
    decode_steps: NonNegativeInt | None = None
    fork: list[NonNegativeInt] | None = Field(None, description="[] or [parent index, tokens appended]")
    churn: NonNegativeInt | None = None
    warm_prefix: bool | None = None
    salted: bool | None = None


class Defaults(CaseFields):
    # The defaults must set every key: a case that sets none of them is still complete.
    q_heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt
    block_size: PositiveInt
    dtype: Dtype
    fp8_scale: Literal["tensor", "head"]
    alibi: bool
    window: NonNegativeInt
    lens: list[PositiveInt] = Field(min_length=1)
    shared_prefix: NonNegativeInt
    decode_steps: NonNegativeInt
    fork: list[NonNegativeInt]
    churn: NonNegativeInt
    warm_prefix: bool
    salted: bool


class NamedCase(CaseFields):
    name: str = Field(min_length=1, description="a non-empty string")


class CasesFile(Strict):
    defaults: Defaults
    case: list[NamedCase] = Field(min_length=1)


class StoredTolerances(Strict):
    python: Tolerance
    ext: Tolerance
    cuda: Tolerance


class SourceTolerances(Strict):
    f32: Tolerance
    bf16: Tolerance
    fp8: Tolerance


class TolerancesFile(Strict):
    stored: StoredTolerances  # per backend, against the reference on the values the cache holds
    source: SourceTolerances  # per dtype, against the reference on the unquantized values


def check(cases: Path = CASES, tolerances: Path = TOLERANCES) -> tuple[CasesFile, TolerancesFile]:
    """Both files validated, or model.errors.UsageError naming the first fault in one line."""
    return load(CasesFile, cases), load(TolerancesFile, tolerances)
