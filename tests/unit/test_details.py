"""Typed stage details (model/details.py) read every record that earlier real runs left in notes/deploy/*.json
(the matrix runs behind the committed notes), lose nothing of them, and write them back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.details import (BY_STAGE, BuildArtifacts, BuildDetails, ConformDetails, OracleDetails, PreflightDetails,
                           SmokeDetails, ToolchainDetails)
from model.errors import UsageError
from model.results import StageOutcome

NOTES = sorted(f for f in (Path(__file__).resolve().parents[2] / "notes" / "deploy").glob("*.json")
               if f.name != "adapters.json")  # the distro notes: debian-*, fedora-44
RECORDS = [(f"{f.name}:{cell}:{stage}", o) for f in NOTES
           for cell, stages in json.loads(f.read_text())["cells"].items()
           for stage, o in stages.items() if stage in BY_STAGE]


def test_the_notes_hold_records_of_every_typed_stage():
    assert len(NOTES) == 4 and len(RECORDS) == 65
    assert {o["stage"] for _, o in RECORDS} >= {"render", "base", "toolchain", "preflight", "build", "rebuild",
                                                  "runtime", "smoke", "oracle"}


@pytest.mark.parametrize("name, raw", RECORDS, ids=[n for n, _ in RECORDS])
def test_every_committed_record_parses_and_round_trips(name, raw):
    o = StageOutcome.from_json(raw)
    rec = BY_STAGE[o.stage].from_outcome(o)
    assert set(o.details) <= set(type(rec).model_fields), "a key the record does not know"
    if o.details:  # a stage that did not run has none
        assert rec.to_json() == o.details
    if o.stage in ("build", "rebuild") and o.artifacts:
        assert BuildArtifacts.from_outcome(o).to_json() == o.artifacts


def _outcome(stage: str, cell: str):
    for f in NOTES:
        data = json.loads(f.read_text())["cells"]
        if cell in data:
            return StageOutcome.from_json(data[cell][stage])
    raise KeyError(cell)


def test_typed_reads_of_real_records():
    b = BuildDetails.from_outcome(_outcome("build", "debian-trixie-cpu"))
    assert b.torch_version == "2.14.0+cu130" and b.torch.cuda == "13.0"
    assert b.offline_inputs["onednn"].got.startswith("onednn-3.")
    assert [x.category for x in b.blockers] == ["torch-cuda-config"] and b.blockers[0].fixed
    assert b.measured and b.disk_high_water_gb == 8.52, "the 2026-12-06 trixie build has the per-build measure"
    assert BuildDetails.from_outcome(_outcome("rebuild", "debian-trixie-cpu")).measured
    gated = BuildDetails.from_outcome(_outcome("build", "debian-bookworm-cpu"))
    assert gated.runtime_debs is None and gated.kvlab.status == "pass"
    p = PreflightDetails.from_outcome(_outcome("preflight", "debian-bookworm-cpu"))
    assert p.first_dead_end == "compiler:gxx@cmake/cpu_extension.cmake:136"
    assert sum(p.counts.values()) == len(p.gates) and all(g.status != "skip" for g in p.reached)
    assert ToolchainDetails.from_outcome(_outcome("toolchain", "debian-bookworm-cpu")).probe["gxx"].startswith("12.2")
    skipped = BuildDetails.from_outcome(_outcome("build", "debian-bookworm-cuda"))
    assert (skipped.torch, skipped.blockers, skipped.max_jobs) == (None, [], None)


def test_typed_reads_of_real_smoke_and_oracle_records():
    sm = SmokeDetails.from_outcome(_outcome("smoke", "debian-trixie-cpu"))
    assert sm.failures == [] and sm.duration_s > 0 and sm.runtime_warnings is not None and sm.mix is None
    orc = OracleDetails.from_outcome(_outcome("oracle", "debian-bookworm-cpu"))
    assert orc.failed == 0 and orc.checks > orc.named > 0 and orc.image.startswith("deploylab/")


def test_the_adapter_matrix_smoke_figures_are_smoke_records():
    # adapters.json rows carry the serving engines' smoke details (smoke/conform_run.py writes them).
    rows = json.loads((NOTES[0].parent / "adapters.json").read_text())
    smoke = [r["smoke"] for r in rows if "smoke" in r]
    assert len(smoke) >= 2
    for raw in smoke:
        details = {k: v for k, v in raw.items() if k != "status"}
        rec = SmokeDetails.from_outcome(StageOutcome(cell="c", stage="smoke", status=raw["status"], details=details))
        assert rec.to_json() == details and rec.requests > 0 and rec.failures is None


def test_a_malformed_record_is_one_line():
    o = StageOutcome(cell="c", stage="build", status="pass", details={"attempts": [{"phase": "wheel", "exit": "x"}]})
    with pytest.raises(UsageError, match=r"^c/build: details\.attempts\[0\]\.exit: .*got 'x'$"):
        BuildDetails.from_outcome(o)


def test_the_adapter_runs_raw_records_are_typed_records(tmp_path):
    """notes/deploy/raw-adapters-s7.tar.xz: the store the committed adapter matrix was read from. Each
    conform and smoke outcome in it reads as its record, knows every key, and writes back the same
    (a null the old writer stored is left out)."""
    import tarfile
    with tarfile.open(NOTES[0].parent / "raw-adapters-s7.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    outcomes = [StageOutcome.from_json(json.loads(f.read_text())) for f in sorted(tmp_path.rglob("cells/*/*.json"))]
    typed = [o for o in outcomes if o.stage in ("conform", "smoke")]
    assert len(typed) == 8 and {o.stage for o in typed} == {"conform", "smoke"}
    for o in typed:
        rec = BY_STAGE[o.stage].from_outcome(o)
        assert set(o.details) <= set(type(rec).model_fields), o.cell
        assert rec.to_json() == {k: v for k, v in o.details.items() if v is not None}, o.cell
    served = ConformDetails.from_outcome(next(o for o in typed if o.cell == "engine-vllm-cpu" and o.stage == "conform"))
    assert served.version == "0.32.0" and len(served.checks) == 23 and served.checks[0].check == "models"
