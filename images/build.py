"""Source builds of the engine (and the kvlab extension) inside a cell's toolchain container.

Like cibuildwheel, the compile runs in a container we start and exec into, with host volumes
for the source, ccache, pip's cache and the output wheels, so caches survive and a warm rebuild
is cheap. Each phase has its own timestamped log. A failed phase is classified; a blocker with a
known fix (fixes.toml) gets that fix and the phase is retried, and every blocker is recorded in
the order met with the fix that worked.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import docker
from requests.exceptions import RequestException
from urllib3.exceptions import ProtocolError

from containers.engine import engine_started, wait_for_engine
from containers.labels import remove_container
from containers.run import SCRIPTS, start_detached
from containers.volumes import release, small_fs
from images import logs
from images.fixes import fix_env, fixes, offline_inputs
from images.sources import copy_tree
from model.details import (AttemptRecord, BlockerRecord, BuildArtifacts, BuildDetails, KvlabRecord,
                           OfflineInputRecord, TorchRecord)
from model.results import StageOutcome
from model.stage import Timed
from model.spec import Cell

HERE = Path(__file__).parent
RESOURCES = HERE / "resources"  # container-side scripts and files, mounted read-only at SCRIPTS
MAX_ATTEMPTS = 4

OnLine = Callable[[str, str], None]  # (phase, line)


@dataclass(frozen=True)
class Workspace:
    """Host folders of one cell's build, mounted into the container."""

    root: Path  # .work/cells/<id>
    cache: Path  # .work/cache (shared by every cell: pip wheels, ccache objects)

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def deps(self) -> Path:
        return self.root / "deps"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def kvlab(self) -> Path:
        return self.root / "kvlab-src"

    def mounts(self) -> dict[str, Path]:
        """{container path: host folder}, all read-write; made on first use."""
        for p in (self.src, self.deps, self.wheels, self.cache / "pip", self.cache / "ccache"):
            p.mkdir(parents=True, exist_ok=True)
        rw = {"/src": self.src, "/deps": self.deps, "/out": self.wheels, "/cache/pip": self.cache / "pip",
              "/cache/ccache": self.cache / "ccache"}
        if self.kvlab.exists():
            rw["/kvlab"] = self.kvlab
        return rw


@dataclass
class Sampler:
    """Peak memory and disk high-water of one build, sampled every few seconds.

    Memory is the container's usage less its inactive page cache (what `docker stats` shows; cgroup
    v1's max_usage counts cache too). Disk is the cell's workspace plus the container's writable
    layer, so other work on the same disk does not count; the workspace alone is also kept (what
    knobs.workspace_gb must hold: the container's layer is on Docker's own disk).
    """

    container: Any
    workspace: Path
    every: float = 10.0
    peak_mem: float = 0.0
    disk_high: float = 0.0
    workspace_high: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _disk(self) -> float:
        out = subprocess.run(["du", "-sb", str(self.workspace)], capture_output=True, text=True)
        used = float(out.stdout.split()[0]) if out.stdout else 0.0  # du exits 1 on a file gone mid-walk
        self.workspace_high = max(self.workspace_high, used)
        try:
            [info] = self.container.client.api.containers(all=True, size=True, filters={"id": self.container.id})
            used += info.get("SizeRw") or 0
        except (docker.errors.DockerException, RequestException, ValueError):
            pass
        return used

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                mem = self.container.stats(stream=False).get("memory_stats", {})
                stats = mem.get("stats", {})
                cache = stats.get("total_inactive_file", stats.get("inactive_file", 0))
                self.peak_mem = max(self.peak_mem, (mem.get("usage") or 0) - cache)
            except (docker.errors.DockerException, RequestException):  # the engine may be restarting
                pass
            if n % 6 == 0:  # du walks the build tree: once a minute is enough for a high-water mark
                self.disk_high = max(self.disk_high, self._disk())
            n += 1
            self._stop.wait(self.every)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=30)
        self.disk_high = max(self.disk_high, self._disk())
        return {"peak_mem_gib": round(self.peak_mem / 2**30, 2), "disk_high_water_gb": round(self.disk_high / 1e9, 2),
                "workspace_high_water_gb": round(self.workspace_high / 1e9, 3),
                "measured": "container memory less inactive cache; workspace + container layer disk; "
                            "workspace alone (du, once a minute and at the end)"}


@dataclass
class Attempt:
    phase: str
    exit_code: int
    seconds: float
    log: str

    def summary(self) -> AttemptRecord:
        return AttemptRecord(phase=self.phase, exit=self.exit_code, seconds=round(self.seconds, 1))


class BuildInterrupted(KeyboardInterrupt):
    """The build container stopped under a running phase (removed or killed from outside): the run
    was interrupted, which is not the build's verdict, so no outcome is written for it."""


class EngineLost(RuntimeError):
    """The Docker engine stopped answering or restarted under a running phase (a restart kills every
    container it runs). Not the build's verdict either: the build ends `engine-lost`, which a rerun
    redoes (model.results.REDO_CATEGORIES), and the run goes on once the engine answers again."""

    def __init__(self, message: str, phase: str, seconds: float) -> None:
        super().__init__(message)
        self.phase, self.seconds = phase, seconds


# What a Docker API call raises when the engine goes away under it (urllib3's own when a stream is cut).
ENGINE_GONE = (RequestException, ProtocolError, docker.errors.DockerException)


class BuildContainer:
    """A long-lived container of the toolchain image; phases are exec'd into it. Always removed."""

    def __init__(self, client: docker.DockerClient, image: str, ws: Workspace, env: dict[str, str],
                 log_dir: Path, on_line: OnLine | None = None, mem_gib: float | None = None) -> None:
        self.client, self.image, self.ws, self.env = client, image, ws, env
        self.log_dir = log_dir
        self.on_line = on_line
        self.mem_gib = mem_gib
        self.container = None
        self._engine = engine_started()

    def __enter__(self) -> BuildContainer:
        # Long-lived (phases are exec'd into it, sharing its caches), so not a run_once; the toolkit
        # labels it so cleanup_leftovers finds it after a crash.
        limit = {}
        if self.mem_gib is not None:
            # Over the limit the kernel's OOM killer must act, not swap. memswap = mem forbids swap only
            # where cgroup v1 accounts it (without swapaccount Docker drops it, and on a host with swap the
            # compile pages for many minutes instead of dying), hence swappiness 0 there too
            limit = {"mem_limit": int(self.mem_gib * 2**30), "memswap_limit": int(self.mem_gib * 2**30)}
            if self.client.info().get("CgroupVersion") == "1":
                limit["mem_swappiness"] = 0
        self.container = start_detached(self.client, self.image, ["sleep", "infinity"], role="build", env=self.env,
                                        ro={SCRIPTS: RESOURCES}, rw=self.ws.mounts(), shm_size="1g", **limit)
        return self

    def __exit__(self, *exc: object) -> None:
        remove_container(self.container)

    def _alive(self, killed: bool) -> bool:
        """Is the container still running? After a SIGKILLed exec, give Docker a few seconds to
        report a removal or kill that is under way (its state lags the processes' deaths)."""
        deadline = time.monotonic() + (5.0 if killed else 0.0)
        while True:
            try:
                self.container.reload()
                if self.container.status != "running":
                    return False
            except docker.errors.NotFound:
                return False
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.2)

    def _stopped(self, name: str, ran_s: float, exc: BaseException | None = None) -> BaseException:
        """Why the container stopped under phase `name`. The engine went away (a connection cut, not
        an answer) or restarted: EngineLost, once it answers again so the container can be removed.
        Else someone removed or killed the container: BuildInterrupted."""
        cut = exc is not None and not isinstance(exc, docker.errors.APIError)  # APIError: the engine answered
        what = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}" if exc else "the container stopped"
        t0 = time.monotonic()
        back = wait_for_engine(90.0)
        restarted = engine_started() != self._engine
        if not cut and not restarted and (not back or not self._alive(killed=False)):
            return BuildInterrupted(f"the build container stopped while phase {name} ran ({what})")
        how = "restarted" if restarted else "stopped answering"
        after = f"it answered again after {time.monotonic() - t0:.0f} s" if back else "it still does not answer"
        return EngineLost(f"the Docker engine {how} while phase {name} ran ({what}); {after}", name, ran_s)

    def run(self, phase: str, script: str | Path, env: dict[str, str] | None = None, attempt: int = 1,
            args: list[str] | tuple[str, ...] = ()) -> Attempt:
        """Exec a resources/ script (a Path, with args) or a command line (a str) in bash, streaming
        stamped lines to <log_dir>/<phase>[.N].log."""
        api = self.client.api
        name = phase if attempt == 1 else f"{phase}.{attempt}"
        path = self.log_dir / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(script, Path):
            cmd = ["bash", "-o", "pipefail", f"{SCRIPTS}/{script.relative_to(RESOURCES)}", *args]
            shown = shlex.join(cmd[3:])
        else:
            cmd, shown = ["bash", "-o", "pipefail", "-c", script], script.strip()
        t0 = time.monotonic()
        buf: list[str] = []
        pending = ""
        with open(path, "w") as fh:
            fh.write(f"# phase {phase} (attempt {attempt}) in {self.image}\n# $ {shown}\n")
            try:
                exec_id = api.exec_create(self.container.id, cmd, environment={**self.env, **(env or {})},
                                          workdir="/src")["Id"]
                for chunk in api.exec_start(exec_id, stream=True):
                    pending += chunk.decode(errors="replace")
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        fh.write(logs.stamp(time.monotonic() - t0, line) + "\n")
                        buf.append(line)
                        if self.on_line:
                            self.on_line(phase, line)
                    fh.flush()
                if pending:
                    fh.write(logs.stamp(time.monotonic() - t0, pending) + "\n")
                    buf.append(pending)
                code = api.exec_inspect(exec_id)["ExitCode"]
                alive = self._alive(killed=code in (None, -1, 137))
            except ENGINE_GONE as exc:
                fh.write(f"# the engine went away after {time.monotonic() - t0:.1f}s: {exc.__class__.__name__}\n")
                raise self._stopped(name, time.monotonic() - t0, exc) from None
            if not alive:
                raise self._stopped(name, time.monotonic() - t0)
            fh.write(f"# exit {code} after {time.monotonic() - t0:.1f}s\n")
        return Attempt(name, code if code is not None else -1, time.monotonic() - t0, "\n".join(buf))


# --- what to run -------------------------------------------------------------------------------

# Debian source candidates, nearest to the version the engine asks first (pick_source.py): a suite's
# own version can be missing from the mirror (measured: sid's onednn 3.12.1 and bookworm's 2.6.3 404).
SOURCE_SUITES = ("sid", "trixie", "bookworm")


def deps_command(cell: Cell, inputs: dict[str, dict[str, str]]) -> tuple[Path, list[str]] | None:
    """The deps phase's script and arguments: fetch each offline input (None when there is none)."""
    if not inputs:
        return None
    if cell.family != "debian":
        return RESOURCES / "deps-fedora.sh", [x for name, spec in inputs.items() for x in (name, spec["fedora"])]
    from images.bases import MIRROR
    return RESOURCES / "deps-debian.sh", [MIRROR, " ".join(SOURCE_SUITES), *(
        x for name, spec in inputs.items() for x in (name, spec["debian"], spec.get("asked", "")))]


@dataclass(frozen=True)
class BuildRequest:
    cell: Cell
    tree: Path  # the engine's unpacked source (shared; copied per cell)
    ws: Workspace
    image: str
    kvlab_src: Path | None = None
    clean: bool = True  # remove the CMake build dir first (a warm rebuild still hits ccache)



class Verdict(NamedTuple):
    status: str
    category: str
    evidence: tuple[str, ...]
    remediation: str


PASSED = Verdict("pass", "success", (), "")
ENGINE_LOST_REMEDY = ("the Docker engine went away under the build (a dockerd restart kills every container it "
                      "runs): rerun to build again (a rerun redoes an engine-lost outcome; ccache keeps what compiled)")


@dataclass
class BuildState:
    """What one build gathers as its phases run: every attempt, the blockers met with the fix tried
    for each, what the phases found (offline inputs, torch, linked packages, the kvlab extension) and
    the verdict. `env` is the container's exec env itself: a fix or an offline input changes what
    every later phase gets."""

    cell: Cell
    inputs: dict[str, dict[str, str]]  # images.fixes.offline_inputs of the tree
    env: dict[str, str]
    attempts: list[AttemptRecord] = field(default_factory=list)
    blockers: list[BlockerRecord] = field(default_factory=list)
    offline: dict[str, OfflineInputRecord] = field(default_factory=dict)
    torch: TorchRecord | None = None
    runtime_debs: list[str] | None = None
    kvlab: KvlabRecord | None = None
    verdict: Verdict = PASSED

    def run_phases(self, bc: BuildContainer, ws: Workspace) -> None:
        """deps → requirements → wheel (retried with fixes) → linkage, each only after the one before
        passed; then the kvlab extension, independent of vLLM's outcome (a gated vLLM still gets it)."""
        deps = deps_command(self.cell, self.inputs)
        a = self.run(bc, "deps", *deps) if deps else self.run(bc, "deps", "true")
        self.read_deps(a)
        if not self.failed(a):
            a = self.run(bc, "requirements", RESOURCES / "requirements.sh", [self.cell.target])
            self.read_torch(a)
            if not self.failed(a):
                self.wheel_with_fixes(bc)
        if self.verdict.status == "pass" and self.cell.family == "debian":
            self.run(bc, "linkage", RESOURCES / "linkage.sh")
            self.read_linkage(ws)
        if ws.kvlab.exists():
            self.read_kvlab(self.run(bc, "kvlab", RESOURCES / "kvlab.sh"))

    def run(self, bc: BuildContainer, phase: str, script: str | Path, args: list[str] | None = None,
            **kw: Any) -> Attempt:
        a = bc.run(phase, script, args=args or (), **kw)
        self.attempts.append(a.summary())
        return a

    def failed(self, a: Attempt) -> bool:
        """Did the phase fail? The phase's verdict (its log's classification) becomes the build's."""
        self.verdict = _verdict(a) if a.exit_code != 0 else PASSED
        return a.exit_code != 0

    def read_deps(self, a: Attempt) -> None:
        """The deps phase's report of each offline input; a supplied one goes into the env."""
        found: dict[str, dict[str, Any]] = {}
        tried: dict[str, list[str]] = {}
        for line in a.log.splitlines():
            if line.startswith("offline-input-candidate-failed "):
                _, name, version = line.split()[:3]
                tried.setdefault(name, []).append(version)
            if line.startswith("offline-input-missing "):
                name = line.split()[1]
                spec = self.inputs[name]
                found[name] = {"asked": spec["asked"], "got": "", "env": spec["env"],
                               "error": list(classify_text(a.log).evidence[:2])}
            if line.startswith("offline-input "):
                _, name, path = line.split(" ", 2)
                spec, path = self.inputs[name], path.strip().rstrip("/")
                found[name] = {"asked": spec["asked"], "got": Path(path).name, "env": spec["env"]}
                self.env[spec["env"]] = path
        for name, versions in tried.items():
            found.setdefault(name, {})["unavailable"] = versions
        self.offline = {name: OfflineInputRecord(**rec) for name, rec in found.items()}

    def read_torch(self, a: Attempt) -> None:
        if m := re.search(r"^torch (\S+) cuda (\S+)", a.log, re.M):
            self.torch = TorchRecord(version=m.group(1), cuda=m.group(2))

    def wheel_with_fixes(self, bc: BuildContainer) -> None:
        """The wheel phase, retried while each new blocker has a fix in fixes.toml not yet applied."""
        for n in range(1, MAX_ATTEMPTS + 1):
            a = self.run(bc, "wheel", RESOURCES / "wheel.sh", env=self.env, attempt=n)  # runs $DEPLOYLAB_PRE first
            if not self.failed(a) or not self.blocked(a.phase):
                return

    def blocked(self, phase: str) -> bool:
        """Record the blocker the verdict names; apply its fix. False when there is none to apply."""
        v = self.verdict
        fixed = fix_env(v.category, self.env)
        fix = fixes().get(v.category)
        note = fix.note if fix and fix.note is not None else v.remediation
        # fixed=True is provisional: the next attempt shows whether it held
        self.blockers.append(BlockerRecord(phase=phase, category=v.category, evidence=list(v.evidence),
                                           fix=fixed[1] if fixed else "", fixed=fixed is not None,
                                           note=note.format(torch=self.torch.version if self.torch else "?")))
        if fixed:
            self.env.clear()
            self.env.update(fixed[0])
        return fixed is not None

    def read_linkage(self, ws: Workspace) -> None:
        debs = ws.wheels / "runtime-debs.txt"
        self.runtime_debs = debs.read_text().split() if debs.exists() else []

    def read_kvlab(self, k: Attempt) -> None:
        kv = classify_text(k.log) if k.exit_code else None
        self.kvlab = KvlabRecord(status="pass" if k.exit_code == 0 else "fail",
                                 category=kv.category if kv else "success",
                                 evidence=list(kv.evidence) if kv else [], seconds=round(k.seconds, 1))

    def details(self, sampled: dict[str, Any]) -> BuildDetails:
        return BuildDetails(max_jobs=self.cell.knobs.max_jobs, offline_inputs=self.offline, torch=self.torch,
                            runtime_debs=self.runtime_debs, kvlab=self.kvlab, blockers=self.blockers,
                            attempts=self.attempts, env={k: v for k, v in self.env.items() if v}, **sampled)


def run_build(client: docker.DockerClient, req: BuildRequest, log_dir: Path, on_line: OnLine | None = None,
              probe: dict[str, Any] | None = None, stage: str = "build") -> StageOutcome:
    """One source build; stage="rebuild" is the same build again from a clean CMake dir (ccache warm)."""
    cell, ws = req.cell, req.ws
    t = Timed(cell, stage)
    release(ws.src / "build")  # a small filesystem a killed run left mounted there
    copy_tree(req.tree, ws.src)
    if req.clean:
        shutil.rmtree(ws.src / "build", ignore_errors=True)
    if req.kvlab_src and (req.kvlab_src / "pyproject.toml").is_file():
        shutil.rmtree(ws.kvlab, ignore_errors=True)
        shutil.copytree(req.kvlab_src, ws.kvlab)
    st = BuildState(cell, offline_inputs(ws.src), {
        "VLLM_TARGET_DEVICE": cell.target_device, "MAX_JOBS": str(cell.knobs.max_jobs), "CCACHE_DIR": "/cache/ccache",
        "PIP_CACHE_DIR": "/cache/pip", "CMAKE_ARGS": "", "DEPLOYLAB_PRE": ""})
    sampled: dict[str, Any] = {}
    limits = cell.knobs.limits(("build_mem_gib", "workspace_gb"))
    with ExitStack() as stack:
        if "workspace_gb" in limits:  # the build dir (where the compile writes) on a disk of that size
            stack.enter_context(small_fs(ws.src / "build", limits["workspace_gb"]))
        bc = stack.enter_context(BuildContainer(client, req.image, ws, st.env, log_dir, on_line,
                                                mem_gib=limits.get("build_mem_gib")))
        sampler = Sampler(bc.container, ws.root)
        try:
            st.run_phases(bc, ws)
        except EngineLost as exc:
            st.attempts.append(AttemptRecord(phase=exc.phase, exit=-1, seconds=round(exc.seconds, 1)))
            st.verdict = Verdict("fail", "engine-lost", (str(exc),), ENGINE_LOST_REMEDY)
        finally:
            sampled = sampler.stop()
    details = st.details({**sampled, "limits": limits or None})
    wheels = sorted(p.name for p in ws.wheels.glob("*.whl"))
    versions = {k: str(v) for k, v in (probe or {}).items() if k in ("gcc", "python", "cmake", "glibc", "nvcc", "os")}
    if details.torch:
        versions["torch"] = details.torch.version
    for name, info in details.offline_inputs.items():
        versions[name] = info.got
    v = st.verdict
    return t.done(v.status, category=v.category, evidence=tuple(v.evidence), remediation=v.remediation,
                  versions=versions, artifacts=BuildArtifacts(logs=str(log_dir), wheels=str(ws.wheels),
                                                              files={w: str(ws.wheels / w) for w in wheels}).to_json(),
                  details=details.to_json())


def classify_text(text: str):
    from images.classify import classify_text as classify  # parsing lives apart from Docker code
    return classify(text)


def _verdict(a: Attempt) -> Verdict:
    c = classify_text(a.log)
    fix = fixes().get(c.category)
    return Verdict("gated" if fix and fix.dead_end else "fail", c.category, tuple(c.evidence), c.remediation)
