"""Load a matrix spec in layers (built-in → spec file → --set) and expand it into frozen Cells.

Modelled on cibuildwheel's options: every layer is validated against one schema, unknown keys are
rejected with "did you mean", and the resolved result is a frozen record per cell whose id is
stable across runs (it depends only on distro, target and engine).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import fnmatch
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field

from model import settings
from model.errors import UsageError, did_you_mean
from model.toml import PositiveInt, PositiveNumber, Strict, read_toml, validate
from model.stages import NAMES as STAGE_NAMES

BUILTIN = Path(__file__).with_name("defaults.toml")
DEFAULT_SPEC = settings.default_spec()
DEFAULT_ENGINE = "0.33.0"


# --- schema: one layer (built-in, a spec file or --set); every table is partial, merged later ------

Target = Literal["cpu", "cuda"]
Family = Literal["debian", "fedora"]
CudaSource = Literal["auto", "nvidia-image", "nvidia-repo", "distro"]
Stage = Literal[STAGE_NAMES]  # type: ignore[valid-type]
TARGETS, FAMILIES, CUDA_SOURCES = get_args(Target), get_args(Family), get_args(CudaSource)
LIMIT_KNOBS = ("build_mem_gib", "workspace_gb")  # "none" (the default) = no limit


class KnobsLayer(Strict):
    max_jobs: PositiveInt | Literal["auto"] | None = Field(None, description='a positive integer or "auto"')
    gib_per_job: PositiveNumber | None = None
    numactl: bool | None = None
    tcmalloc: bool | None = None
    disk_gb: PositiveNumber | None = None
    cuda: CudaSource | None = None
    cuda_version: str | None = None
    extra_packages: list[str] | None = None
    stages: list[Stage] | None = None
    build_mem_gib: PositiveNumber | Literal["none"] | None = Field(None, description='a positive number (GiB) or "none"')
    workspace_gb: PositiveNumber | Literal["none"] | None = Field(None, description='a positive number (GB) or "none"')


class Override(KnobsLayer):
    select: str = Field(description="a glob string over cell ids")


class DistroLayer(Strict):
    family: Family | None = None
    suite: str | None = None
    image: str | None = None
    components: list[str] | None = None
    python: str | None = None
    apt_check_valid_until: bool | None = None


class Selector(Strict):
    distro: str | None = None
    target: str | None = None
    engine: str | None = None


class MatrixLayer(Strict):
    distros: list[str] | None = None
    targets: list[Target] | None = None
    engines: list[str] | None = None
    include: list[Selector] | None = None
    exclude: list[Selector] | None = None
    # Serving engines of the adapter matrix run after the cells (names as engines/ spells them).
    serving_engines: list[str] | None = None


class Layer(Strict):
    matrix: MatrixLayer | None = None
    knobs: KnobsLayer | None = None
    distros: dict[str, DistroLayer] | None = None
    overrides: list[Override] | None = Field(None, description="an array of tables ([[overrides]])")


def validate_layer(doc: Any, source: str) -> None:
    """Check one layer (a parsed spec file or the --set layer); raise UsageError on the first fault."""
    validate(Layer, doc, source)


# --- layers --------------------------------------------------------------------------------

def parse_sets(sets: Iterable[str]) -> dict[str, Any]:
    """--set a.b=VALUE pairs into a nested layer; VALUE is read as TOML, else taken as a string."""
    layer: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. knobs.max_jobs=2")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        parts = key.split(".")
        if parts[0] in KnobsLayer.model_fields:  # bare knob names are a shorthand for knobs.NAME
            parts = ["knobs", *parts]
        node = layer
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {item!r}: {p} is not a table")
        node[parts[-1]] = value
    return layer


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; lists and scalars replace; overrides append."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key == "overrides":
            out[key] = [*out.get(key, []), *copy.deepcopy(value)]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --- records -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Distro:
    name: str
    family: str
    suite: str
    image: str
    components: tuple[str, ...]
    python: str
    apt_check_valid_until: bool = True


@dataclass(frozen=True)
class Knobs:
    max_jobs: int
    max_jobs_requested: str
    gib_per_job: float
    numactl: bool
    tcmalloc: bool
    disk_gb: float
    cuda: str
    cuda_version: str
    extra_packages: tuple[str, ...]
    stages: tuple[str, ...]
    # Limits the build runs under (None: the host's own); only the stages that name them in
    # model.stages read them, so they stay out of Cell.digest.
    build_mem_gib: float | None = None
    workspace_gb: float | None = None

    def limits(self, names: Iterable[str]) -> dict[str, float]:
        """The limits among `names` that are set."""
        return {n: v for n in names if (v := getattr(self, n)) is not None}


@dataclass(frozen=True)
class EngineSource:
    """A vLLM version from PyPI's sdist, or a local source tree."""

    kind: str  # "pypi" | "path"
    ref: str

    @classmethod
    def parse(cls, text: str) -> EngineSource:
        if "/" in text or text.startswith("."):
            return cls("path", text)
        return cls("pypi", text)

    @property
    def label(self) -> str:
        return f"vllm-{self.ref}" if self.kind == "pypi" else f"vllm-{Path(self.ref).name}"


@dataclass(frozen=True)
class Cell:
    id: str
    distro: Distro
    target: str
    engine: EngineSource
    knobs: Knobs

    @property
    def family(self) -> str:
        return self.distro.family

    @property
    def target_device(self) -> str:
        return self.target  # VLLM_TARGET_DEVICE: "cpu" or "cuda"

    @property
    def base_tag(self) -> str:
        return f"deploylab/base:{self.distro.name}"

    @property
    def toolchain_tag(self) -> str:
        return f"deploylab/toolchain:{self.id}"

    @property
    def runtime_tag(self) -> str:
        return f"deploylab/runtime:{self.id}"

    @property
    def digest(self) -> str:
        """What shapes this cell's results (distro, target, engine, knobs; not which stages run, nor
        the limits that shape only some stages: model.stages names them per stage)."""
        data = dataclasses.asdict(self)
        for name in ("stages", *LIMIT_KNOBS):
            data["knobs"].pop(name)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def ci_entry(self) -> dict[str, Any]:
        return {
            "cell": self.id,
            "distro": self.distro.name,
            "family": self.family,
            "target": self.target,
            "engine": self.engine.ref,
            "max_jobs": self.knobs.max_jobs,
        }


@dataclass(frozen=True)
class Machine:
    cores: int
    mem_gib: float

    @classmethod
    def here(cls) -> Machine:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        try:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        except (ValueError, OSError):
            mem = 4.0
        return cls(cores=cores, mem_gib=mem)


def resolve_jobs(requested: int | str, gib_per_job: float, machine: Machine) -> int:
    if requested != "auto":
        return int(requested)
    return max(1, min(machine.cores, int(machine.mem_gib // gib_per_job)))


@dataclass(frozen=True)
class Matrix:
    source: str
    cells: tuple[Cell, ...]
    serving_engines: tuple[str, ...] = ()

    def get(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise UsageError(f"{self.source}: no cell {cell_id!r}{did_you_mean(cell_id, [c.id for c in self.cells])}")

    def select(self, patterns: Iterable[str] | None) -> tuple[Cell, ...]:
        pats = [p for p in (patterns or []) if p]
        if not pats:
            return self.cells
        chosen = []
        for pat in pats:
            hits = [c for c in self.cells if fnmatch.fnmatchcase(c.id, pat)]
            if not hits:
                raise UsageError(
                    f"{self.source}: no cell matches {pat!r}{did_you_mean(pat, [c.id for c in self.cells])}")
            chosen.extend(c for c in hits if c not in chosen)
        return tuple(chosen)


def cell_id(distro: str, target: str, engine: str) -> str:
    suffix = "" if engine == DEFAULT_ENGINE else f"-{EngineSource.parse(engine).label}"
    return f"{distro}-{target}{suffix}"


def _matches(sel: dict[str, str], distro: str, target: str, engine: str) -> bool:
    have = {"distro": distro, "target": target, "engine": engine}
    return all(fnmatch.fnmatchcase(have[k], v) for k, v in sel.items())


def expand(doc: dict[str, Any], source: str, machine: Machine) -> Matrix:
    m = doc.get("matrix", {})
    distros = doc.get("distros", {})
    combos: list[tuple[str, str, str]] = []
    for d in m.get("distros", []):
        for t in m.get("targets", []):
            for e in m.get("engines", []):
                if not any(_matches(x, d, t, e) for x in m.get("exclude", [])):
                    combos.append((d, t, e))
    for i, inc in enumerate(m.get("include", [])):
        if "distro" not in inc or "target" not in inc:
            raise UsageError(f"{source}: matrix.include[{i}]: needs both distro and target")
        combo = (inc["distro"], inc["target"], inc.get("engine", DEFAULT_ENGINE))
        if combo[1] not in TARGETS:
            raise UsageError(f"{source}: matrix.include[{i}].target: expected one of {', '.join(TARGETS)}")
        if combo not in combos:
            combos.append(combo)

    cells = []
    for d, t, e in combos:
        if d not in distros:
            raise UsageError(f"{source}: matrix.distros: unknown distro {d!r}{did_you_mean(d, distros)}"
                             " (define it under [distros.NAME])")
        table = distros[d]
        missing = [k for k in ("family", "suite", "image", "python") if k not in table]
        if missing:
            raise UsageError(f"{source}: distros.{d}: missing {', '.join(missing)}")
        cid = cell_id(d, t, e)
        knobs = dict(doc.get("knobs", {}))
        for ov in doc.get("overrides", []):
            if fnmatch.fnmatchcase(cid, ov["select"]):
                knobs.update({k: v for k, v in ov.items() if k != "select"})
        distro = Distro(name=d, family=table["family"], suite=table["suite"], image=table["image"],
                        components=tuple(table.get("components", ())), python=table["python"],
                        apt_check_valid_until=table.get("apt_check_valid_until", True))
        cells.append(Cell(
            id=cid, distro=distro, target=t, engine=EngineSource.parse(e),
            knobs=Knobs(
                max_jobs=resolve_jobs(knobs["max_jobs"], knobs["gib_per_job"], machine),
                max_jobs_requested=str(knobs["max_jobs"]),
                gib_per_job=float(knobs["gib_per_job"]),
                numactl=knobs["numactl"], tcmalloc=knobs["tcmalloc"], disk_gb=float(knobs["disk_gb"]),
                cuda=knobs["cuda"], cuda_version=knobs["cuda_version"],
                extra_packages=tuple(knobs["extra_packages"]),
                stages=tuple(knobs.get("stages", STAGE_NAMES)),
                **{k: None if knobs.get(k, "none") == "none" else float(knobs[k]) for k in LIMIT_KNOBS},
            ),
        ))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise UsageError(f"{source}: two cells share an id: {sorted({i for i in ids if ids.count(i) > 1})}")
    return Matrix(source=source, cells=tuple(cells), serving_engines=tuple(m.get("serving_engines", ())))


def load(spec: Path | str | None = None, sets: Iterable[str] = (), machine: Machine | None = None) -> Matrix:
    """Resolve built-in defaults → spec file → --set overrides into a Matrix of frozen Cells."""
    path = Path(spec) if spec else DEFAULT_SPEC
    doc = read_toml(BUILTIN)
    validate_layer(doc, str(BUILTIN))
    user = read_toml(path)
    validate_layer(user, str(path))
    doc = merge(doc, user)
    cli = parse_sets(sets)
    validate_layer(cli, "--set")
    doc = merge(doc, cli)
    return expand(doc, str(path), machine or Machine.here())
