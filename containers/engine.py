"""Find a Docker engine, or install and start one (Debian's docker.io) where none answers.

Honours DOCKER_HOST. Only installs when running as root on a Debian-family host; otherwise it
says exactly what is missing. Nothing here parses build logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import docker
from docker.errors import DockerException

from model.errors import UsageError

DOCKERD_LOG = Path("/var/log/deploylab-dockerd.log")


def client(timeout: int = 600) -> docker.DockerClient:
    """A client for the engine in DOCKER_HOST (or the default socket); UsageError if none answers."""
    try:
        c = docker.from_env(timeout=timeout)
        c.ping()
        return c
    except DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise UsageError(f"no Docker engine answers at {where} ({exc.__class__.__name__}); run: invoke setup") from None


def answers() -> bool:
    try:
        docker.from_env(timeout=5).ping()
        return True
    except DockerException:
        return False


def engine_started(pidfile: Path = Path("/var/run/docker.pid")) -> float | None:
    """When the local dockerd started (its pid file is written at start-up); None for another engine
    (DOCKER_HOST) or none. A different value later means the engine restarted in between."""
    if os.environ.get("DOCKER_HOST"):
        return None
    try:
        return pidfile.stat().st_mtime
    except OSError:
        return None


def engine_gone(exc: BaseException) -> bool:
    """Whether `exc` is the engine going away under a call (a cut or refused connection), not an answer."""
    from requests.exceptions import ConnectionError as Refused
    from urllib3.exceptions import ProtocolError
    return isinstance(exc, (Refused, ProtocolError))


def wait_for_engine(timeout_s: float) -> bool:
    """Wait until the engine answers a new connection (after a restart); False if not within timeout_s.
    A new one: a dying dockerd closes its listener first but keeps serving the connections it has."""
    deadline = time.monotonic() + timeout_s
    while not answers():
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)
    return True


def _debian_family() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    return "debian" in text.lower()


def _apt_install(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_host_tools(tools: dict[str, str]) -> list[str]:
    """Install missing host commands {command: debian package}; returns what was installed."""
    missing = {cmd: pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None}
    if not missing:
        return []
    if os.geteuid() != 0 or not _debian_family():
        raise UsageError(f"missing host tools {', '.join(missing)}: install the Debian packages "
                         f"{' '.join(sorted(set(missing.values())))} (needs root on a Debian-family host)")
    _apt_install(sorted(set(missing.values())))
    return sorted(set(missing.values()))


def ensure_engine(wait_s: float = 60.0) -> str:
    """Make sure an engine answers; install docker.io and start dockerd if needed. Returns what it did."""
    if answers():
        return "engine already answering"
    if os.environ.get("DOCKER_HOST"):
        raise UsageError(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer; start that engine or unset DOCKER_HOST")
    did = []
    if shutil.which("dockerd") is None:
        if os.geteuid() != 0 or not _debian_family():
            raise UsageError("no Docker engine: install Debian's docker.io (as root: apt-get install docker.io) "
                             "or point DOCKER_HOST at a running engine")
        _apt_install(["docker.io"])
        did.append("installed docker.io")
    if os.geteuid() != 0:
        raise UsageError("dockerd is installed but not running, and starting it needs root: sudo dockerd &")
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    log = open(DOCKERD_LOG, "ab")
    # Detached from our process group so it outlives this invoke run (tests and CI reuse it).
    subprocess.Popen(["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    did.append(f"started dockerd (log: {DOCKERD_LOG})")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if answers():
            return "; ".join(did)
        time.sleep(0.5)
    raise UsageError(f"dockerd did not answer within {wait_s:.0f}s; see {DOCKERD_LOG}")
