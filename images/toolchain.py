"""Toolchain images: build a cell's rendered Dockerfile on the engine and probe what it really has.

The probe runs one short shell script (resources/toolchain_probe.sh) in the image and reads its
`key=value` lines; the record it returns is what preflight evaluates gates against and what notes
report as versions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import docker

from containers.build import build_image
from containers.run import SCRIPTS, run_once, script_mount
from images.render import Rendered

# Runs in the image; one key=value a line, a missing tool an empty value.
PROBE = Path(__file__).with_name("resources") / "toolchain_probe.sh"

NUMERIC = {"disk_free_gb": float, "mem_gib": float, "cores": int}


def parse_probe(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        conv = NUMERIC.get(key)
        try:
            out[key] = conv(value) if conv and value else value
        except ValueError:
            out[key] = value
    return out


def probe(client: docker.DockerClient, image: str) -> dict[str, Any]:
    """Run the probe in a throwaway container of `image`; returns the versions it found."""
    ran = run_once(client, image, ["bash", f"{SCRIPTS}/{PROBE.name}"], role="probe", ro=script_mount(PROBE),
                   timeout_s=120).check("the toolchain probe")
    return parse_probe(ran.stdout)


def build_toolchain(client: docker.DockerClient, rendered: Rendered, tag: str, log_path: Path,
                    nocache: bool = False) -> tuple[float, dict[str, Any]]:
    """Build the toolchain image and probe it. Raises ImageBuildFailed with the log on failure."""
    t0 = time.monotonic()
    build_image(client, rendered.dockerfile, tag, log_path, nocache=nocache)
    seconds = time.monotonic() - t0
    return seconds, probe(client, tag)
