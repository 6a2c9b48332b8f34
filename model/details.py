"""Typed records of what each stage keeps in `StageOutcome.details` (and the build's
artifacts): the stage writes `details=Record(...).to_json()`, readers use `Record.from_outcome(o)`.

Records read old outcomes too (committed notes/*.json hold records of earlier runs): every field
has a default, a field a stage writes only sometimes is None when absent (and left out of the JSON,
so a record round-trips unchanged), and keys a record does not know are ignored on reading."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from model.results import StageOutcome
from model.toml import validate


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Details(Record):
    STAGES: ClassVar[tuple[str, ...]] = ()  # the stages whose outcomes hold this record

    @classmethod
    def from_outcome(cls, o: StageOutcome) -> Self:
        """The outcome's details as this record; a malformed record is one UsageError line."""
        return validate(cls, o.details, f"{o.cell}/{o.stage}", "details")


# --- render, base, toolchain -------------------------------------------------------------------

class RenderDetails(Details):
    STAGES = ("render",)
    cuda_source: str = ""  # none | distro | nvidia-repo | nvidia-image
    base_image: str = ""
    sha256: str = ""  # of the rendered Dockerfile (short)
    hadolint: str = ""  # ok | failed | why it did not run


class BaseDetails(Details):
    STAGES = ("base",)
    how: str = ""  # cached | debootstrap | pulled ...
    tag: str = ""


Probe = dict[str, str | int | float | bool]  # images.toolchain.probe's key=value record


class ToolchainDetails(Details):
    STAGES = ("toolchain",)
    probe: Probe = {}


# --- preflight -------------------------------------------------------------------------------

class GateRecord(Record):
    id: str
    kind: str
    subject: str
    need: str
    found: str = ""
    status: str  # pass | fail | warn | skip
    fixable: bool = False
    category: str = ""
    source: str = ""  # FILE:LINE of the tree
    message: str = ""
    when: list[str] = []  # the if() conditions under which it is reached, as CMake text
    override: str = ""
    remediation: str = ""
    evidence: str = ""


class PreflightDetails(Details):
    STAGES = ("preflight",)
    source: str = ""  # the engine tree read
    gates: list[GateRecord] = []
    counts: dict[str, int] = {}  # per gate status
    first_dead_end: str = ""  # the id of the first failing gate with no workaround
    warnings: list[str] = []  # evidence of gates the probe cannot decide

    @property
    def reached(self) -> list[GateRecord]:
        return [g for g in self.gates if g.status != "skip"]


# --- build and rebuild -----------------------------------------------------------------------

class AttemptRecord(Record):
    phase: str  # deps | requirements | wheel[.N] | linkage | kvlab
    exit: int
    seconds: float


class BlockerRecord(Record):
    phase: str
    category: str
    evidence: list[str] = []
    fix: str = ""  # what was changed for the next attempt ("" when nothing could be)
    fixed: bool = False  # whether the next attempt got past it
    note: str = ""


class OfflineInputRecord(Record):
    asked: str = ""  # the version the engine's FetchContent asks for
    got: str = ""  # the distro source supplied ("" when none could be had)
    env: str = ""  # the variable that points CMake at it
    error: list[str] | None = None
    unavailable: list[str] | None = None  # candidate versions that could not be fetched


class TorchRecord(Record):
    version: str
    cuda: str = ""


class KvlabRecord(Record):
    status: str
    category: str = ""
    evidence: list[str] = []
    seconds: float = 0.0


class BuildDetails(Details):
    STAGES = ("build", "rebuild")
    max_jobs: int | None = None
    offline_inputs: dict[str, OfflineInputRecord] = {}
    torch: TorchRecord | None = None  # what the build venv's torch reported
    runtime_debs: list[str] | None = None  # Debian packages owning the libraries the build linked
    kvlab: KvlabRecord | None = None
    blockers: list[BlockerRecord] = []  # in the order met
    attempts: list[AttemptRecord] = []
    env: dict[str, str] = {}  # the build env of the last attempt (empty values left out)
    peak_mem_gib: float | None = None
    disk_high_water_gb: float | None = None
    workspace_high_water_gb: float | None = None  # the cell's workspace alone (what knobs.workspace_gb must hold)
    measured: str | None = None  # how the above were measured; None in early records
    limits: dict[str, float] | None = None  # the limit knobs it ran under (build_mem_gib, workspace_gb)

    @property
    def torch_version(self) -> str:
        return self.torch.version if self.torch else ""


class BuildArtifacts(Record):
    """A build outcome's artifacts: its logs folder, its wheels folder, and each wheel by name."""

    logs: str = ""
    wheels: str = ""
    files: dict[str, str] = {}

    @classmethod
    def from_outcome(cls, o: StageOutcome) -> BuildArtifacts:
        a = dict(o.artifacts)
        return cls(logs=a.pop("logs", ""), wheels=a.pop("wheels", ""), files=a)

    def to_json(self) -> dict[str, Any]:
        return {"logs": self.logs, "wheels": self.wheels, **self.files}


# --- runtime ---------------------------------------------------------------------------------

class RuntimeDetails(Details):
    STAGES = ("runtime",)
    image_size_gb: float | None = None
    wheels: list[str] = []  # the files handed to the image build (wheels and requirements)
    image_id: str | None = None
    user: str | None = None  # the image's USER, as its config says
    preload: list[str] | None = None  # LD_PRELOAD of the image's env, as its config says


# --- smoke and oracle ------------------------------------------------------------------------

class SmokeDetails(Details):
    """The smoke outcome: the matrix stage's (smoke/stage.py) or the adapter matrix's replay on a
    running engine (smoke/conform_run.py); each writes only its own fields."""

    STAGES = ("smoke",)
    failures: list[str] | None = None  # the gate's failed bounds
    duration_s: float | None = None
    runtime_warnings: list[str] | None = None  # from the server's log
    mix: str | None = None
    seed: int | None = None
    requests: int | None = None
    attainment: dict[str, float | None] | None = None  # per class, the share of requests within its SLO
    ttft_ms: dict[str, float | None] | None = None  # percentiles
    tpot_ms: dict[str, float | None] | None = None
    http_5xx: int | None = None
    load_1m: list[float] | None = None  # the host's 1-min load before and after the replay


class OracleDetails(Details):
    """kvlab/resources/oracle_run.py's ORACLE-SUMMARY line, and the image it ran in."""

    STAGES = ("oracle",)
    checks: int = 0  # case x layout checks
    failed: int = 0
    named: int = 0
    random: int = 0
    first_failures: list[str] = []
    kvx: str = ""  # the extension module the oracle imported
    image: str = ""


# --- conform (the adapter matrix) ------------------------------------------------------------

class CheckRecord(Record):
    check: str
    status: str  # pass | fail | unsupported
    required: bool
    evidence: str = ""


class ConformDetails(Details):
    """`invoke conform` against an engine started here (smoke/conform_run.py conform_engine) or a URL
    (conform_url); the adapter matrix (matrix/adapters.py) reads it. An engine that could not be
    obtained or did not start has only the first few fields."""

    STAGES = ("conform",)
    engine: str | None = None
    what: str | None = None
    obtain: str | None = None  # source-build | pypi | distro-package | ...
    target: str | None = None  # the URL, for conform --url
    image: str | None = None
    image_id: str | None = None
    image_bytes: int | None = None
    image_build_s: float | None = None
    model: str | None = None
    extensions: list[str] | None = None
    startup_s: float | None = None
    version: str | None = None
    memory_bytes: int | None = None
    memory_kind: str | None = None  # peak | at-end
    checks: list[CheckRecord] | None = None


BY_STAGE: dict[str, type[Details]] = {s: cls for cls in (RenderDetails, BaseDetails, ToolchainDetails,
                                                         PreflightDetails, BuildDetails, RuntimeDetails,
                                                         SmokeDetails, OracleDetails, ConformDetails)
                                      for s in cls.STAGES}
