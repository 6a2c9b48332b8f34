"""The Docker side of a preflight probe: images.toolchain.probe reads the tools' versions in a cell's
image; this adds which hosts the tree's fetch and torch gates need a container of it can reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from containers.run import SCRIPTS, run_once, script_mount
from images.gates import Gate, hosts_of
from images.toolchain import probe

REACH = Path(__file__).with_name("resources") / "reach.sh"


def probe_reachability(client: Any, image: str, hosts: list[str]) -> dict[str, bool]:
    """Which hosts a container of `image` can open a TCP connection to on 443 (DNS first)."""
    if not hosts:
        return {}
    ran = run_once(client, image, ["bash", f"{SCRIPTS}/{REACH.name}", *hosts], role="probe", ro=script_mount(REACH),
                   network="bridge", timeout_s=60 + 15 * len(hosts), mem_limit="128m").check("the reachability probe")
    out = {}
    for line in ran.stdout.splitlines():
        host, sep, ok = line.partition("=")
        if sep:
            out[host] = ok.strip() == "1"
    return out


def probe_cell(client: Any, image: str, gates: list[Gate]) -> dict[str, Any]:
    """images.toolchain.probe of the cell's image, plus `reachable` for the hosts the gates need."""
    found = probe(client, image)
    found["reachable"] = probe_reachability(client, image, hosts_of(gates))
    return found
