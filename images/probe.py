"""The Docker side of a preflight probe: images.toolchain.probe reads the tools' versions in a cell's
image; this adds which hosts the tree's fetch and torch gates need a container of it can reach."""

from __future__ import annotations

from typing import Any

from images.gates import Gate, hosts_of
from images.toolchain import probe

REACH_SCRIPT = 'for h in "$@"; do if getent hosts "$h" >/dev/null && timeout 5 bash -c "</dev/tcp/$h/443" 2>/dev/null; ' \
               'then echo "$h=1"; else echo "$h=0"; fi; done'


def probe_reachability(client: Any, image: str, hosts: list[str]) -> dict[str, bool]:
    """Which hosts a container of `image` can open a TCP connection to on 443 (DNS first)."""
    if not hosts:
        return {}
    raw = client.containers.run(image, ["bash", "-c", REACH_SCRIPT, "reach", *hosts], remove=True,
                                stdout=True, stderr=False, mem_limit="128m")
    out = {}
    for line in raw.decode(errors="replace").splitlines():
        host, sep, ok = line.partition("=")
        if sep:
            out[host] = ok.strip() == "1"
    return out


def probe_cell(client: Any, image: str, gates: list[Gate]) -> dict[str, Any]:
    """images.toolchain.probe of the cell's image, plus `reachable` for the hosts the gates need."""
    found = probe(client, image)
    found["reachable"] = probe_reachability(client, image, hosts_of(gates))
    return found
