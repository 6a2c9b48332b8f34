"""Long-running server containers: testcontainers' DockerContainer, its wait strategies for readiness,
loopback-only published ports, our labels, and removal guaranteed on the way out.

Readiness is testcontainers' HttpWaitStrategy (one per path, in order), run in short slices while the
container is checked between them: a server that exits fails at once with its log tail, where the
stock strategy would wait out its whole timeout on a dead container. Several servers can start
together and be waited for one by one (Server.start, then Server.wait).
"""

from __future__ import annotations

import logging

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

# Ryuk (the reaper container) needs an image from a registry; cleanup is ours (containers.labels).
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer  # noqa: E402
from testcontainers.core.exceptions import ContainerStartException  # noqa: E402
from testcontainers.core.wait_strategies import CompositeWaitStrategy, HttpWaitStrategy  # noqa: E402
from testcontainers.core.waiting_utils import WaitStrategy  # noqa: E402

from containers.labels import labels as make_labels, remove_container  # noqa: E402
from containers.run import ContainerFailed, Mounts, tail, volumes  # noqa: E402


# WhileRunning polls in 2 s slices, and testcontainers logs every slice that is not ready yet as an
# ERROR ("Strategy 1/2 failed"); the verdict is ours to give (ServerFailed, with the log tail).
logging.getLogger("testcontainers.core.wait_strategies").setLevel(logging.CRITICAL)


class LoopbackContainer(DockerContainer):
    """Ports are published on the engine host's 127.0.0.1 only, and that is where we dial them.
    (testcontainers guesses its connection mode; in a sandbox it took for a container it dialled the
    bridge gateway, where nothing of ours listens.)"""

    def get_container_host_ip(self) -> str:
        return "127.0.0.1"

    def get_exposed_port(self, port: int) -> int:
        mapped = self.get_docker_client().client.api.port(self.get_container_id(), port)
        if not mapped:
            raise ConnectionError(f"port {port} of {self.image} is not published (yet)")
        return int(mapped[0]["HostPort"])


class ServerFailed(ContainerFailed):
    """The server could not start, exited, or never became ready; the message ends with its log tail."""


def http_ready(port: int, *paths: str | tuple[str, Callable[[str], bool]], poll_s: float = 0.5) -> WaitStrategy:
    """Ready when each path answers 200 in turn (and its body satisfies the predicate, if one is given)."""
    steps = []
    for p in paths or ("/",):
        path, pred = (p, None) if isinstance(p, str) else p
        s = HttpWaitStrategy(port, path).for_status_code(200).with_poll_interval(poll_s)
        if pred is not None:
            s = s.for_response_predicate(_safe(pred))
        steps.append(s)
    return steps[0] if len(steps) == 1 else CompositeWaitStrategy(*steps).with_poll_interval(poll_s)


def _safe(pred: Callable[[str], bool]) -> Callable[[str], bool]:
    # A half-up server can answer garbage; that is "not ready yet", not an error.
    def check(body: str) -> bool:
        try:
            return bool(pred(body))
        except ValueError:
            return False
    return check


class WhileRunning(WaitStrategy):
    """`inner` retried in slices of `slice_s` until the timeout, failing at once if the container stops."""

    def __init__(self, inner: WaitStrategy, slice_s: float = 2.0) -> None:
        super().__init__()
        self._inner = inner
        self._slice = slice_s

    def wait_until_ready(self, container) -> None:
        deadline = time.monotonic() + self._startup_timeout
        last = "no answer yet"
        while True:
            wrapped = container.get_wrapped_container()
            wrapped.reload()
            if wrapped.status not in ("created", "running"):
                raise ServerFailed(f"container {wrapped.status} before ready; log tail:\n{_log_tail(wrapped)}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"not ready after {self._startup_timeout:.0f}s ({last})")
            try:
                self._inner.with_startup_timeout(min(self._slice, max(left, 0.1))).wait_until_ready(container)
                return
            except (TimeoutError, ConnectionError) as exc:  # ConnectionError: no port published (yet)
                last = str(exc).split(". ")[0][:200]


def _log_tail(wrapped, n: int = 30) -> str:
    try:
        return tail(wrapped.logs(tail=n).decode(errors="replace"), n)
    except Exception as exc:  # the container may be gone already
        return f"(no log: {exc})"


class Server:
    """One server container. `with Server(...) as s:` starts it, waits for it and removes it after;
    or start(), wait(timeout_s) and stop() by hand (an ExitStack holding stop)."""

    def __init__(self, image: str, command: Sequence[str] | None, *, port: int, role: str,
                 ready: WaitStrategy | None = None, ro: Mounts | None = None, rw: Mounts | None = None,
                 env: Mapping[str, str] | None = None, network=None, aliases: Sequence[str] = (),
                 labels: Mapping[str, str] | None = None, log_path: Path | None = None,
                 timeout_s: float = 300.0, name: str = "server", **create_kw) -> None:
        self.image, self.port, self.name, self.log_path, self.timeout_s = image, port, name, log_path, timeout_s
        self.ready = ready if ready is not None else http_ready(port)
        c = LoopbackContainer(image).with_envs(**dict(env or {}))
        if command is not None:
            c.with_command(list(command))
        for host, m in volumes(ro, rw).items():
            c.with_volume_mapping(host, m["bind"], m["mode"])
        if network is not None:
            c.with_network(network)
            if aliases:
                c.with_network_aliases(*aliases)
        c.with_kwargs(labels=make_labels(role, dict(labels or {})), **create_kw)
        c.ports[f"{port}/tcp"] = ("127.0.0.1",)  # loopback only, a free port chosen by Docker
        self.container = c
        self.url = ""
        self.startup_s = 0.0
        self._t0 = 0.0

    @property
    def id(self) -> str:
        return self.container.get_wrapped_container().id

    def start(self) -> Server:
        from docker.errors import DockerException
        self._t0 = time.monotonic()
        try:
            self.container.start()
        except DockerException as exc:
            raise ServerFailed(f"cannot start {self.image}: {getattr(exc, 'explanation', None) or exc}") from None
        return self

    def wait(self, timeout_s: float | None = None) -> Server:
        """Block until ready; ServerFailed (with the log tail) if it exits first or the time runs out."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        wrapped = self.container.get_wrapped_container()
        try:
            WhileRunning(self.ready).with_startup_timeout(timeout_s).wait_until_ready(self.container)
        except ServerFailed as exc:
            raise ServerFailed(f"{self.name} ({self.image}): {exc}") from None
        except TimeoutError as exc:
            raise ServerFailed(f"{self.name} ({self.image}) {exc}; log tail:\n{_log_tail(wrapped)}") from None
        self.url = f"http://127.0.0.1:{self.container.get_exposed_port(self.port)}"
        self.startup_s = time.monotonic() - self._t0
        return self

    def limit_cpus(self, cpus: float, period_us: int = 100_000) -> None:
        """A CFS quota of `cpus` CPUs per `period_us` from now on (e.g. once ready, so start-up is not
        throttled). A shorter period spreads the same quota into shorter throttled stretches."""
        self.container.get_wrapped_container().update(cpu_period=period_us, cpu_quota=round(cpus * period_us))

    def logs(self, stdout: bool = True, stderr: bool = True) -> str:
        return self.container.get_wrapped_container().logs(stdout=stdout, stderr=stderr).decode(errors="replace")

    def stop(self) -> None:
        """Save the log (if log_path) and remove the container; safe to call twice or before start."""
        try:
            wrapped = self.container.get_wrapped_container()
        except ContainerStartException:  # never started: nothing to remove
            return
        if self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self.log_path.write_bytes(wrapped.logs())
            except Exception:  # the container may be gone; its log is then not the point
                pass
        remove_container(wrapped)  # gone already: a no-op, so stop() may run twice
        self.container.get_docker_client().client.close()

    def __enter__(self) -> Server:
        try:
            return self.start().wait()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def serve(image: str, command: Sequence[str] | None, **kw) -> Iterator[Server]:
    """`with serve(image, cmd, port=..., role=..., ready=...) as s:` — Server as a context manager."""
    with Server(image, command, **kw) as s:
        yield s
