"""Run-once containers: run a command in an image, wait with a timeout, return exit code and log,
and always remove the container (also on a timeout, an exception or Ctrl-C). start_detached: a
labelled long-lived container that commands are exec'd into (the source build's).

Container-side scripts are files in their package's resources/ folder, mounted alone (one file,
read-only, under SCRIPTS), never the repository: `script_mount(path)` names where one lands.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from containers.labels import labels as make_labels, remove_container

SCRIPTS = "/deploylab"          # where mounted scripts land in a container
Mounts = Mapping[str, Path | str]  # container path -> host path


class ContainerFailed(RuntimeError):
    """A container could not be created or started, or exited non-zero where that was required."""


def volumes(ro: Mounts | None = None, rw: Mounts | None = None) -> dict[str, dict[str, str]]:
    """Docker's volumes argument from {container path: host path} maps, read-only and read-write."""
    out: dict[str, dict[str, str]] = {}
    for mode, m in (("ro", ro or {}), ("rw", rw or {})):
        for inside, host in m.items():
            out[str(Path(host).resolve())] = {"bind": inside, "mode": mode}
    return out


def script_mount(path: Path) -> dict[str, Path]:
    """{SCRIPTS/<name>: path}: one resource file, mounted alone."""
    if not path.is_file():
        raise FileNotFoundError(f"container script {path} is missing")
    return {f"{SCRIPTS}/{path.name}": path}


def tail(text: str, n: int = 15) -> str:
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-n:])


@dataclass(frozen=True)
class Ran:
    image: str
    command: tuple[str, ...]
    exit_code: int | None   # None: still running at the timeout, then killed
    stdout: str
    stderr: str
    log: str                # stdout and stderr as the engine interleaved them
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None

    def check(self, what: str | None = None) -> Ran:
        """Self when it exited 0; else ContainerFailed naming what ran, how it ended and the log tail."""
        if self.ok:
            return self
        how = "was killed at its timeout" if self.timed_out else f"exited {self.exit_code}"
        raise ContainerFailed(f"{what or self.command[0]} in {self.image} {how}; log tail:\n{tail(self.log)}")


def start_detached(client, image: str, command: Sequence[str], *, role: str, ro: Mounts | None = None,
                   rw: Mounts | None = None, env: Mapping[str, str] | None = None,
                   labels: Mapping[str, str] | None = None, **create_kw):
    """A long-lived container, started and returned (commands are then exec'd into it), labelled like
    every other so cleanup_leftovers finds it after a crash. The caller owns it: a context manager
    that ends in labels.remove_container. Docker's own errors propagate (the caller classifies them)."""
    return client.containers.run(image, list(command), detach=True, environment=dict(env or {}),
                                 labels=make_labels(role, dict(labels or {})), volumes=volumes(ro, rw), **create_kw)


def run_once(client, image: str, command: Sequence[str], *, role: str, ro: Mounts | None = None,
             rw: Mounts | None = None, env: Mapping[str, str] | None = None, network: str = "none",
             timeout_s: float = 600.0, working_dir: str | None = None, labels: Mapping[str, str] | None = None,
             log_path: Path | None = None, **create_kw) -> Ran:
    """Run `command` in a fresh container of `image`; the container is removed whatever happens.

    network: "none" (default), "bridge", "host" or a network's name. create_kw go to Docker's create
    (mem_limit, extra_hosts, user, ...). A timeout is not an error: exit_code is None then.
    Raises ContainerFailed when the container cannot be created or started.
    """
    from docker.errors import APIError, ImageNotFound
    from requests.exceptions import ConnectionError as RequestsConnectionError, ReadTimeout
    try:
        c = client.containers.create(image, list(command), detach=True, network_mode=network,
                                     environment=dict(env or {}), labels=make_labels(role, dict(labels or {})),
                                     volumes=volumes(ro, rw), working_dir=working_dir, **create_kw)
    except (ImageNotFound, APIError) as exc:
        raise ContainerFailed(f"{image}: cannot create a container: {getattr(exc, 'explanation', None) or exc}") from None
    t0 = time.monotonic()
    try:
        try:
            c.start()
        except APIError as exc:
            raise ContainerFailed(f"{image}: cannot start {command[0]!r}: {exc.explanation or exc}") from None
        try:
            code: int | None = int(c.wait(timeout=timeout_s)["StatusCode"])
        except (ReadTimeout, RequestsConnectionError):
            code = None
            try:
                c.kill()
            except APIError:
                pass
        seconds = time.monotonic() - t0
        text = {k: c.logs(stdout=k != "stderr", stderr=k != "stdout").decode(errors="replace")
                for k in ("stdout", "stderr", "log")}
    finally:
        remove_container(c)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(text["log"])
    return Ran(image, tuple(command), code, text["stdout"], text["stderr"], text["log"], seconds)
