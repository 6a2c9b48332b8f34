"""Labels on every container and network the project starts, and the cleanup that reads them.

testcontainers' Ryuk reaper is off here (TESTCONTAINERS_RYUK_DISABLED=true: it needs an image from a
registry), so removal is ours: context managers remove what they started, and `cleanup_leftovers`
removes what a crashed run left, found by its labels. Each object names its run, its role and its
owner (host:pid), so leftovers of a dead process can be told from those of a live one.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

RUN = "org.deploylab.run"
ROLE = "org.deploylab.role"
OWNER = "org.deploylab.owner"

_RUN_ID = os.environ.get("DEPLOYLAB_RUN_ID") or f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def run_id() -> str:
    """This process's run id: DEPLOYLAB_RUN_ID when set (a resumed run names itself), else one per process."""
    return _RUN_ID


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def labels(role: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The labels of one container or network: run, role, owner, plus the caller's own."""
    return {RUN: run_id(), ROLE: role, OWNER: owner(), **(extra or {})}


def owner_alive(value: str) -> bool:
    """Whether the owner label names a live process; another host's owners count as alive (not ours to judge)."""
    host, _, pid = value.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_container(container, attempts: int = 10) -> None:
    """Force-remove and make sure it is gone: under load dockerd can leave a killed container behind
    ('removal in progress'), and the network it sits on then refuses to go."""
    from docker.errors import APIError, NotFound
    from requests.exceptions import ConnectionError as EngineDown  # dockerd restarting: try again
    if container is None:
        return
    for _ in range(attempts):
        try:
            container.remove(force=True, v=True)
        except NotFound:
            return
        except (APIError, EngineDown):
            pass
        try:
            container.reload()
        except NotFound:
            return
        except EngineDown:
            pass
        time.sleep(1.0)


def cleanup_leftovers(client, label: str, orphans_only: bool = False) -> list[str]:
    """Remove every container, then network, carrying `label` ("key=value" or "key"); with
    orphans_only, only those whose owner process is gone. Returns the names removed."""
    from docker.errors import APIError, NotFound
    removed = []
    for c in client.containers.list(all=True, filters={"label": label}):
        if orphans_only and owner_alive(c.labels.get(OWNER, "")):
            continue
        remove_container(c)
        removed.append(c.name)
    for n in client.networks.list(filters={"label": label}):
        if orphans_only and owner_alive(n.attrs.get("Labels", {}).get(OWNER, "")):
            continue
        try:
            n.remove()
            removed.append(n.name)
        except NotFound:
            pass
        except APIError as exc:  # still in use by a container that is not ours: say so, keep going
            print(f"warning: network {n.name} not removed: {exc.explanation or exc}")
    return removed


def remove_own(client) -> list[str]:
    """Remove every container and network this process started, found by its owner label: the last
    step of an interrupted task, after its context managers ran, for what they could not reach (one
    being created as the signal landed, a removal that a second signal cut short)."""
    return cleanup_leftovers(client, f"{OWNER}={owner()}")
