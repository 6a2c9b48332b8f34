"""Toolchain images: build a cell's rendered Dockerfile on the engine and probe what it really has.

The probe runs one short shell script in the image and reads `key=value` lines; the record it
returns is what preflight evaluates gates against and what notes report as versions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import docker

from containers.build import build_image
from images.render import Rendered

# Each line prints key=value; a missing tool prints an empty value, never fails the probe.
PROBE_SCRIPT = r"""
v() { "$@" 2>/dev/null | head -n1; }
echo "gcc=$(v gcc -dumpfullversion)"
echo "gxx=$(v g++ -dumpfullversion)"
echo "python=$(v python3 -c 'import platform; print(platform.python_version())')"
echo "glibc=$(v getconf GNU_LIBC_VERSION | awk '{print $2}')"
echo "cmake=$(v cmake --version | awk '{print $3}')"
echo "ninja=$(v ninja --version)"
echo "nvcc=$(v sh -c "nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'")"
echo "ccache=$(v ccache --version | awk '{print $3}')"
echo "numa_header=$(test -f /usr/include/numa.h && echo yes || echo no)"
echo "tcmalloc=$(ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 2>/dev/null | head -n1)"
echo "disk_free_gb=$(df -k --output=avail /work 2>/dev/null | tail -n1 | awk '{printf "%.1f", $1/1048576}')"
echo "mem_gib=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)"
echo "cores=$(nproc)"
echo "os=$(. /etc/os-release && echo "$PRETTY_NAME")"
"""

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
    raw = client.containers.run(image, ["bash", "-c", PROBE_SCRIPT], remove=True, stdout=True, stderr=False)
    return parse_probe(raw.decode(errors="replace"))


def build_toolchain(client: docker.DockerClient, rendered: Rendered, tag: str, log_path: Path,
                    nocache: bool = False) -> tuple[float, dict[str, Any]]:
    """Build the toolchain image and probe it. Raises ImageBuildFailed with the log on failure."""
    t0 = time.monotonic()
    build_image(client, rendered.dockerfile, tag, log_path, nocache=nocache)
    seconds = time.monotonic() - t0
    return seconds, probe(client, tag)
