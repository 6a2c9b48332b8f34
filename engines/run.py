"""Start an engine's server in a container on 127.0.0.1:<free port>, wait until it serves, always remove it.

On the container toolkit (containers/): the server is a labelled `Server` with testcontainers' HTTP
wait strategies (health, then a model list), its --help a `run_once` container.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from docker.errors import ImageNotFound

from containers.run import ContainerFailed, run_once
from containers.server import Server, http_ready
from engines.adapters import Adapter
from engines.flags import parse_help
from model import settings

ROLE = "engine"


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


def accepted_flags(client, adapter: Adapter, image: str) -> frozenset[str]:
    """Every option the engine in `image` accepts, from its own --help (cached per image id)."""
    assert adapter.spec.serve is not None
    try:
        image_id = client.images.get(image).id.split(":")[-1][:16]
    except ImageNotFound:
        raise EngineFailed(f"{image}: no such image") from None
    cache = settings.work() / "engine-help" / f"{adapter.name}-{image_id}.txt"
    if not cache.is_file():
        try:
            ran = run_once(client, image, adapter.spec.serve.help, role=ROLE, timeout_s=120,
                           labels={"org.deploylab.purpose": "help"})
        except ContainerFailed as exc:
            raise EngineFailed(str(exc)) from None
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(ran.log)
    return parse_help(cache.read_text(errors="replace"))


def _lists_models(body: str) -> bool:
    try:
        return bool(json.loads(body).get("data"))
    except (ValueError, AttributeError):
        return False


@contextmanager
def serve(client, adapter: Adapter, image: str, model_dir: Path, served_name: str, context: int,
          extra_args: list[str] | tuple[str, ...] = (), log_path: Path | None = None) -> Iterator[Served]:
    """The engine serving `model_dir` (mounted read-only at /model) under `served_name`."""
    from containers.server import ServerFailed
    s = adapter.spec.serve
    assert s is not None, f"{adapter.name} has no [serve] table"
    srv = Server(image, adapter.command(served_name, context, extra_args), port=s.port, role=ROLE,
                 ready=http_ready(s.port, s.health, (s.ready, _lists_models)), ro={"/model": model_dir},
                 env=dict(s.env), log_path=log_path, timeout_s=s.startup_timeout_s, name=adapter.name,
                 labels={"org.deploylab.engine": adapter.name}, **({"shm_size": s.shm_size} if s.shm_size else {}))
    try:
        with srv:
            yield Served(adapter.name, srv.url, served_name, image, srv.id, srv.startup_s)
    except ServerFailed as exc:
        raise EngineFailed(str(exc)) from None
