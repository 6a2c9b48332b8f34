"""A profile's pools as real containers: vLLM replicas on one user-defined Docker network.

Each replica is the smoke stage's engine (same image, same tiny model, same serve command from
smoke.server) with a cpuset, a network alias (`<pool>-<i>`, what the router's upstreams name) and
the knobs the profile states, already translated into flags this engine accepts. Replicas start
together and are waited for one by one (containers.server: /health then /v1/models); each port is
published on 127.0.0.1 only, for the sweep's /metrics scrapes. Everything is removed on the way
out, whatever happened, and every container carries org.deploylab.role=sweep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from containers.labels import ROLE as LABEL, remove_container
from containers.networks import labelled_network
from containers.run import run_once, script_mount
from smoke.profiles import Placement
from smoke.router.nginx import replica_host
from smoke.server import engine_server
from smoke.sweep.knobs import EngineCaps, parse_help

__all__ = ["probe_engine", "start_replicas", "sweep_network", "remove_container", "Replica", "LABEL", "ROLE"]

ROLE = "sweep"
VERSION_SCRIPT = Path(__file__).parents[1] / "resources" / "engine_version.py"


def probe_engine(client, image: str, cache_dir: Path) -> EngineCaps:
    """Ask the engine image what it is and what its server CLI accepts (cached per image id)."""
    image_id = client.images.get(image).id.split(":")[-1][:16]
    cache = cache_dir / f"engine-caps-{image_id}.json"
    if cache.is_file():
        d = json.loads(cache.read_text())
        return EngineCaps(d["engine"], d["version"], frozenset(d["flags"]))
    ver = run_once(client, image, ["python", f"/deploylab/{VERSION_SCRIPT.name}"], role=ROLE,
                   ro=script_mount(VERSION_SCRIPT), timeout_s=300).check("the engine version probe").stdout.split()
    help_text = run_once(client, image, ["python", "-m", "vllm.entrypoints.openai.api_server", "--help=all"],
                         role=ROLE, timeout_s=300).check("the engine's --help=all").stdout
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
    """Start every replica at once, then wait for each; remove all of them on the way out."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        started = []
        t0 = time.monotonic()
        for pl in placements:
            host = replica_host(pl.pool, pl.index)
            srv = engine_server(image, model_dir, args[pl.pool], role=ROLE, cpus=pl.cpuset, network=network,
                                aliases=(host,), labels={**labels, LABEL: ROLE}, log_path=log_dir / f"{host}.log",
                                name=f"{host} (cpuset {pl.cpuset})")
            stack.callback(srv.stop)
            started.append((pl, host, srv.start()))
        replicas = []
        for pl, host, srv in started:
            srv.wait(max(10.0, timeout_s - (time.monotonic() - t0)))
            replicas.append(Replica(pl.pool, pl.index, host, srv.url, pl.cpuset, args[pl.pool], srv.id,
                                    time.monotonic() - t0))
        yield replicas


def sweep_network(labels: dict[str, str]):
    """A user-defined bridge network for one profile (containers.networks: labelled, a crashed sweep's
    leftovers removed first, ours removed on the way out)."""
    return labelled_network(ROLE, labels)
