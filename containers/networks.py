"""A labelled user-defined bridge network (testcontainers' Network) for containers that talk to each
other by name: a benchmark's engine replicas behind a router."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from containers.labels import ROLE, cleanup_leftovers, labels as make_labels, remove_container


@contextmanager
def labelled_network(role: str, labels: dict[str, str]) -> Iterator[object]:
    """A network labelled like the containers of `role`. A dead owner's containers and networks of
    that role go first (they would hold cores and names). On the way out, whatever of this role is
    still attached is removed, then the network; one that still will not go is reported, not raised
    (the caller's measurements are already stored by then)."""
    from docker.errors import APIError, NotFound
    from testcontainers.core.network import Network

    from containers.engine import client as docker_client
    cleanup_leftovers(docker_client(), f"{ROLE}={role}", orphans_only=True)
    net = Network(docker_network_kw={"labels": make_labels(role, labels)}).create()
    try:
        yield net
    finally:
        dc = docker_client()
        for _ in range(10):
            try:
                n = dc.networks.get(net.id)
                for c in n.attrs.get("Containers", {}) or {}:
                    try:
                        cont = dc.containers.get(c)
                    except NotFound:
                        continue
                    if cont.labels.get(ROLE) == role:   # never touch a container that is not ours
                        remove_container(cont)
                n.remove()
                break
            except NotFound:
                break
            except APIError:
                time.sleep(1.0)
        else:
            print(f"warning: could not remove {role} network {net.name}; remove it with: docker network rm {net.name}")
