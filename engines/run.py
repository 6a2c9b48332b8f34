"""Start an engine's server in a container on 127.0.0.1:<free port>, wait until it serves, always remove it.

Until the container toolkit in containers/ takes this over, this is the one place engines are
started: docker SDK, label org.deploylab.role=engine, removed in a finally whatever happens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from docker.errors import DockerException, ImageNotFound

from engines.adapters import Adapter
from engines.flags import parse_help
from model import settings

LABELS = {"org.deploylab.role": "engine"}


class EngineFailed(RuntimeError):
    """The engine exited or never became ready; the message ends with its log tail."""


@dataclass(frozen=True)
class Served:
    engine: str
    url: str
    model: str
    image: str
    container_id: str
    startup_s: float


def _tail(container, n: int = 30) -> str:
    try:
        return container.logs(tail=n).decode(errors="replace")
    except DockerException as exc:
        return f"(no log: {exc})"


def accepted_flags(client, adapter: Adapter, image: str) -> frozenset[str]:
    """Every option the engine in `image` accepts, from its own --help (cached per image id)."""
    assert adapter.spec.serve is not None
    try:
        image_id = client.images.get(image).id.split(":")[-1][:16]
    except ImageNotFound:
        raise EngineFailed(f"{image}: no such image") from None
    cache = settings.work() / "engine-help" / f"{adapter.name}-{image_id}.txt"
    if not cache.is_file():
        out = client.containers.run(image, adapter.spec.serve.help, remove=True, network_mode="none",
                                    labels={**LABELS, "org.deploylab.purpose": "help"}, stderr=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(out)
    return parse_help(cache.read_text(errors="replace"))


def wait_ready(container, url: str, health: str, ready: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        container.reload()
        if container.status not in ("created", "running"):
            raise EngineFailed(f"engine container {container.status} before ready; log tail:\n{_tail(container)}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200:
                r = httpx.get(url + ready, timeout=5)
                if r.status_code == 200 and r.json().get("data"):
                    return
                last = f"{ready} answered {r.status_code}"
            else:
                last = f"{health} not 200 yet"
        except (httpx.HTTPError, ValueError) as exc:
            last = exc.__class__.__name__
        time.sleep(0.5)
    raise EngineFailed(f"engine not ready after {timeout_s:.0f}s ({last}); log tail:\n{_tail(container)}")


@contextmanager
def serve(client, adapter: Adapter, image: str, model_dir: Path, served_name: str, context: int,
          extra_args: list[str] | tuple[str, ...] = (), log_path: Path | None = None) -> Iterator[Served]:
    """The engine serving `model_dir` (mounted read-only at /model) under `served_name`."""
    s = adapter.spec.serve
    assert s is not None, f"{adapter.name} has no [serve] table"
    t0 = time.monotonic()
    container = None
    try:
        try:
            container = client.containers.run(
                image, adapter.command(served_name, context, extra_args), detach=True, labels=LABELS,
                ports={f"{s.port}/tcp": ("127.0.0.1", None)}, environment=dict(s.env),
                volumes={str(model_dir.resolve()): {"bind": "/model", "mode": "ro"}},
                **({"shm_size": s.shm_size} if s.shm_size else {}))
        except DockerException as exc:
            raise EngineFailed(f"cannot start {image}: {exc}") from None
        port = None
        for _ in range(50):
            container.reload()
            bound = (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{s.port}/tcp")
            if bound:
                port = int(bound[0]["HostPort"])
                break
            if container.status not in ("created", "running"):
                raise EngineFailed(f"engine container {container.status} before its port was published; "
                                   f"log tail:\n{_tail(container)}")
            time.sleep(0.1)
        if port is None:
            raise EngineFailed(f"{image}: Docker published no port for {s.port}/tcp")
        url = f"http://127.0.0.1:{port}"
        wait_ready(container, url, s.health, s.ready, s.startup_timeout_s)
        yield Served(adapter.name, url, served_name, image, container.id, time.monotonic() - t0)
    finally:
        if container is not None:
            if log_path:
                try:
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    log_path.write_bytes(container.logs())
                except (DockerException, OSError):
                    pass
            try:
                container.remove(force=True)
            except DockerException:
                pass
